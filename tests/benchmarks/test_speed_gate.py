"""The speed gate catches a deliberate 1.5x slowdown of one sampler and passes the others (`pytest -m benchmark`).

The slowdown lives here, in a wrapper around one registry entry that the gate is handed instead of the real one;
the product's code path has no hook for it.
"""

import dataclasses
import functools
import time

import pytest

from bench.speed import DEFAULT_BASELINE, DEFAULT_TOLERANCE, check, load_baseline, run_gate
from samplers import SAMPLERS, SamplerSpec

pytestmark = pytest.mark.benchmark

# the configuration `.ci/run` gates (the committed baseline has entries for it)
NFE, BATCH = 50, 256


def slowed(spec: SamplerSpec, factor: float) -> SamplerSpec:
    """The same sampler, `factor` times slower: after each run it burns (factor - 1) times that run's CPU time."""

    @functools.wraps(spec.fn)
    def fn(model, x, sigmas, noise=None, **hyper):
        start = time.process_time()
        out = spec.fn(model, x, sigmas, noise, **hyper)
        deadline = time.process_time() + (factor - 1) * (time.process_time() - start)
        while time.process_time() < deadline:
            pass
        return out

    return dataclasses.replace(spec, fn=fn)


def test_slowed_wrapper_keeps_the_sampler_and_its_hyper_parameters():
    spec = slowed(SAMPLERS["kar2"], 1.5)
    assert spec.defaults() == SAMPLERS["kar2"].defaults() and spec.name == "kar2"


@pytest.mark.parametrize("victim", ["kar1", "em"])
def test_gate_fails_on_a_1_5x_slowdown_of_one_sampler(victim):
    baseline = load_baseline(DEFAULT_BASELINE)
    bystander = "em" if victim == "kar1" else "kar1"
    rows = run_gate(
        ["gmm-64d"], [victim, bystander], nfe=NFE, batch=BATCH, specs={victim: slowed(SAMPLERS[victim], 1.5)}
    )
    verdicts = {v.row.sampler: v for v in check(rows, baseline, DEFAULT_TOLERANCE)}
    assert verdicts[victim].status == "slower", verdicts[victim]
    assert verdicts[bystander].status == "ok", verdicts[bystander]
    # the measured ratio moved by about the injected factor
    assert 1.3 < verdicts[victim].row.ratio / verdicts[victim].baseline["ratio"] < 1.75
