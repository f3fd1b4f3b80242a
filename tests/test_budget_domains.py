"""Budget fitting that finishes for any budget, and hyper-parameters checked against their domains."""

from __future__ import annotations

import time

import pytest

from bench.cli import main
from samplers import SAMPLERS, get_sampler, sample, steps_for_budget
from samplers.api import MAX_STEPS
from samplers.registry import HYPER_DOMAINS


@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if not s.adaptive])
def test_budget_fitting_is_the_largest_fitting_step_count_and_fast(name):
    spec = get_sampler(name)
    for budget in (12, 50, 333):
        try:
            steps = steps_for_budget(spec, budget)
        except ValueError:  # below the sampler's minimum
            assert spec.declared_nfe(spec.min_steps) > budget
            continue
        assert spec.declared_nfe(steps) <= budget < spec.declared_nfe(steps + 1)
    start = time.perf_counter()
    for budget in (10**9, 2**63 - 1):
        with pytest.raises(ValueError, match="beyond the longest schedule"):
            steps_for_budget(spec, budget)
    assert time.perf_counter() - start < 0.5
    assert spec.declared_nfe(MAX_STEPS // 2) > 0


@pytest.mark.parametrize(
    ("sampler", "hyper", "message"),
    [
        ("ald", {"n_steps_each": 0}, "n_steps_each must be an integer >= 1"),
        ("ald", {"n_steps_each": 2.5}, "n_steps_each must be an integer >= 1"),
        ("ddim", {"eta": -0.1}, "eta must be a number >= 0"),
        ("kar2", {"s_churn": -1.0}, "s_churn must be a number >= 0"),
        ("kar2", {"s_noise": float("nan")}, "s_noise must be a number >= 0"),
        ("kar2", {"s_tmin": -float("inf")}, "s_tmin must be a number >= 0"),
        ("pc", {"snr": 0}, "snr must be a number > 0"),
        ("rk45", {"rtol": "abc"}, "rtol must be a number > 0"),
        ("kar1", {"denoise": 1}, "denoise must be true or false"),
        ("dlg+kar1", {"mode": "best"}, "mode must be one of 'argmax', 'gibbs'"),
        ("dlg+kar1", {"outputs_per_chain": 0}, "outputs_per_chain must be an integer >= 1"),
    ],
)
def test_a_hyper_parameter_outside_its_domain_is_refused(sampler, hyper, message):
    with pytest.raises(ValueError, match=message):
        sample("gmm-2d-ve", sampler, nfe=20, seeds=range(2), **hyper)


def test_every_shared_hyper_parameter_has_a_domain():
    names = {k for spec in SAMPLERS.values() for k in spec.defaults()} - {"classifier", "preset"}
    assert names <= set(HYPER_DOMAINS), sorted(names - set(HYPER_DOMAINS))


def test_the_cli_refuses_an_endless_budget_in_one_line(tmp_path, capsys):
    start = time.perf_counter()
    args = ["sample", "digits-ve", "--sampler", "ald", "--nfe", "20", "--n", "2", "--out", str(tmp_path / "g.png")]
    assert main([*args, "--hyper", "n_steps_each=0"]) == 2
    assert main(["sample", "digits-ve", "--nfe", str(2**63 - 1), "--n", "2", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "n_steps_each" in err[0] and "beyond the longest schedule" in err[1]
    assert time.perf_counter() - start < 30 and not (tmp_path / "g.png").exists()
