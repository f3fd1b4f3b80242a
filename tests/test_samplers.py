"""Samplers against the truth: closed-form flows, measured orders, measured NFE, exact mixtures, batch invariance."""

import numpy as np
import pytest
import torch
from scipy import stats

from bench.metrics import exact_metrics
from models import CountingDenoiser, load_model
from samplers import SAMPLERS, SeededNoise, get_sampler, make_schedule, run_sampler, sample, steps_for_budget

BASE = ["ald", "em", "rd", "pc", "pf_euler", "rk45", "ddim", "kar1", "kar2"]
FIXED_STEP = [name for name in SAMPLERS if not SAMPLERS[name].adaptive and name in BASE]


def flow_error(model, sampler: str, steps: int, process_model=None) -> float:
    """Max error of a deterministic sampler's end point (no final denoise) against the exact probability flow."""
    spec = get_sampler(sampler)
    target = process_model or model
    sigmas = make_schedule(spec.schedule, target, steps)
    x_init = SeededNoise(range(32), target.shape, dtype=torch.float64)() * float(sigmas[0])
    x = spec.fn(target, x_init, sigmas, denoise=False)
    exact = model.mixture.flow(x_init, float(sigmas[0]), float(sigmas[-2]))
    return float((x - exact).abs().max())


@pytest.mark.parametrize(("sampler", "order"), [("pf_euler", 1), ("ddim", 1), ("kar1", 2)])
def test_convergence_order_on_a_single_gaussian(gaussian_ve, sampler, order):
    steps = np.array([64, 128, 256, 512])
    errors = np.array([flow_error(gaussian_ve, sampler, int(n)) for n in steps])
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert errors[-1] < 0.05
    assert abs(slope - order) < 0.25, f"{sampler}: measured order {slope:.2f}, errors {errors}"


def test_pf_euler_in_vp_coordinates_converges_to_the_same_flow(gaussian_ve):
    """pf_euler steps a VP model in VP coordinates; its end points still converge to the exact (VE-terms) flow."""
    from models import GMMDenoiser, VPProcess

    vp = GMMDenoiser(gaussian_ve.mixture, VPProcess(), dtype=torch.float64)
    steps = np.array([32, 64, 128, 256])
    errors = np.array([flow_error(gaussian_ve, "pf_euler", int(n), process_model=vp) for n in steps])
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - 1) < 0.25, f"measured order {slope:.2f}, errors {errors}"


@pytest.mark.parametrize("sampler", FIXED_STEP)
def test_measured_nfe_equals_the_declared_formula(sampler):
    model = load_model("gmm-2d-vp")
    spec = SAMPLERS[sampler]
    for steps in (spec.min_steps, 3, 7):
        for denoise in (True, False):
            counter = CountingDenoiser(model)
            x = torch.randn(5, 2) * model.sigma_max
            spec.fn(counter, x, make_schedule(spec.schedule, model, steps), denoise=denoise)
            assert counter.evals / 5 == counter.calls == spec.declared_nfe(steps, denoise=denoise)
    for budget in (10, 33, 100):
        result = sample(model, sampler, nfe=budget, seeds=range(4))
        assert result.nfe == result.declared_nfe <= budget
        assert spec.declared_nfe(result.steps + 1) > budget, "the budget must get the largest step count that fits"


def test_adaptive_sampler_meets_its_budget_by_tolerance():
    model = load_model("gmm-2d-ve")
    loose, tight = (sample(model, "rk45", nfe=b, seeds=range(16)) for b in (40, 200))
    assert loose.nfe <= 40 and tight.nfe <= 200 and tight.nfe > loose.nfe
    assert tight.hyper["rtol"] < loose.hyper["rtol"]


@pytest.mark.parametrize("sampler", FIXED_STEP)
def test_samples_do_not_depend_on_the_batch(sampler):
    model = load_model("gmm-2d-vp")
    whole = sample(model, sampler, nfe=20, seeds=range(10)).x
    split = sample(model, sampler, nfe=20, seeds=range(10), batch_size=3).x
    alone = sample(model, sampler, nfe=20, seeds=[7, 8]).x
    assert torch.allclose(whole, split, atol=1e-6, rtol=0)
    assert torch.allclose(whole[7:9], alone, atol=1e-6, rtol=0)
    other_seed = sample(model, sampler, nfe=20, seeds=range(10), seed=1).x
    assert not torch.allclose(whole, other_seed)


def test_adaptive_samples_depend_on_the_batch_only_within_tolerance():
    """rk45's steps are chosen for the worst sample of a batch: batches agree to the solver tolerance."""
    model = load_model("gmm-2d-vp")
    whole = sample(model, "rk45", nfe=500, seeds=range(10), rtol=1e-5, atol=1e-5).x
    split = sample(model, "rk45", nfe=500, seeds=range(10), batch_size=3, rtol=1e-5, atol=1e-5).x
    assert torch.allclose(whole, split, atol=1e-3, rtol=0)


def test_ve_and_vp_mixtures_share_probability_flow_end_points():
    """One mixture as VE and as VP: solvers in sigma (kar1) and in VP coordinates (pf_euler, rk45) meet at high NFE."""
    ve, vp = load_model("gmm-2d-ve"), load_model("gmm-2d-vp")
    sigmas = make_schedule("karras", ve, 200)
    x_init = SeededNoise(range(256), (2,))() * float(sigmas[0])
    reference = SAMPLERS["rk45"].fn(ve, x_init, sigmas, rtol=1e-7, atol=1e-7)
    ends = {
        "kar1-ve": (SAMPLERS["kar1"].fn(ve, x_init, sigmas), 1e-3),
        "kar1-vp": (SAMPLERS["kar1"].fn(vp, x_init, sigmas), 1e-3),
        "rk45-vp": (SAMPLERS["rk45"].fn(vp, x_init, sigmas, rtol=1e-6, atol=1e-6), 1e-4),
        "pf_euler-vp": (SAMPLERS["pf_euler"].fn(vp, x_init, make_schedule("geometric", ve, 8000)), 0.02),
    }
    for name, (x, tol) in ends.items():
        assert (x - reference).abs().max() < tol, name


@pytest.mark.parametrize("sampler", BASE)
def test_generous_nfe_recovers_the_exact_mixture(sampler):
    model = load_model("gmm-2d")
    result = sample(model, sampler, nfe=1000 if sampler == "ald" else 300, seeds=range(2000))
    exact_x, _ = model.mixture.sample(2000, torch.Generator().manual_seed(0))
    floor = exact_metrics(model.mixture, exact_x)
    got = exact_metrics(model.mixture, result.x)
    weights = model.mixture.responsibilities(result.x.double()).mean(0)
    assert (weights - model.mixture.weights).abs().max() < 0.04, f"weights {weights}"
    assert got["fd_exact"] < 0.01 and got["fd_exact"] < 25 * max(floor["fd_exact"], 4e-4), got


def test_too_few_annealed_langevin_steps_visibly_miss():
    model = load_model("gmm-2d")
    few = exact_metrics(model.mixture, sample(model, "ald", nfe=51, seeds=range(2000)).x)
    many = exact_metrics(model.mixture, sample(model, "ald", nfe=1000, seeds=range(2000)).x)
    heun = exact_metrics(model.mixture, sample(model, "kar1", nfe=51, seeds=range(2000)).x)
    assert few["fd_exact"] > 100 * many["fd_exact"] and few["fd_exact"] > 100 * heun["fd_exact"]


def test_seeded_noise_is_standard_normal_and_independent():
    noise = SeededNoise(range(512), (64,))
    a, b = noise(), noise()
    assert stats.kstest(a.flatten().numpy(), "norm").pvalue > 1e-3
    assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 0.01
    per_sample = torch.corrcoef(a[:64])  # samples are independent of one another
    assert per_sample.fill_diagonal_(0).abs().max() < 0.5
    assert torch.equal(SeededNoise([5, 9], (64,))(), a[[5, 9]])


def test_bad_input_is_a_value_error():
    model = load_model("gmm-2d")
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        sample(model, "nope", nfe=10)
    with pytest.raises(ValueError, match="unknown model"):
        sample("gmm-3d", "kar1", nfe=10)
    with pytest.raises(ValueError, match="below the minimum"):
        sample(model, "kar1", nfe=2)
    with pytest.raises(ValueError, match="below the minimum"):
        steps_for_budget(SAMPLERS["pc"], 3)
    with pytest.raises(ValueError, match="no hyper-parameter 'churn'"):
        sample(model, "kar2", nfe=10, churn=3)
    with pytest.raises(ValueError, match="shape"):
        SAMPLERS["kar1"].fn(model, torch.zeros(4, 3), make_schedule("karras", model, 5))
    with pytest.raises(ValueError, match="sigmas must be"):
        SAMPLERS["kar1"].fn(model, torch.zeros(4, 2), make_schedule("karras", model, 5).expand(3, -1))
    with pytest.raises(ValueError, match="decreasing"):
        SAMPLERS["ddim"].fn(model, torch.zeros(4, 2), torch.tensor([1.0, 2.0, 0.0]))


def test_run_sampler_reports_measured_nfe_and_time():
    model = load_model("gmm-64d")
    spec = SAMPLERS["kar1"]
    x, nfe, seconds, extras = run_sampler(model, spec, make_schedule("karras", model, 6), list(range(32)))
    assert x.shape == (32, 64) and nfe == spec.declared_nfe(6) and seconds > 0 and extras == {}
