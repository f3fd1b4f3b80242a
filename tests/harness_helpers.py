"""Samplers that misbehave on purpose, for the harness tests (registered only inside a test or a test subprocess)."""

from __future__ import annotations

import sys
import time

import torch

from samplers import SamplerSpec
from samplers.karras import kar1


def _levels(steps: int, **_) -> int:
    return steps


def nan_sampler(model, x, sigmas, noise=None, *, denoise: bool = True):
    """One model evaluation per level, then NaN in the first sample: a sampler that blew up."""
    for sigma in sigmas[:-1]:
        x = model(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))
    x = x.clone()
    x[0] = float("nan")
    return x


def error_sampler(model, x, sigmas, noise=None, *, denoise: bool = True):
    raise RuntimeError("this sampler always fails")


def slow_kar1(model, x, sigmas, noise=None, *, denoise: bool = True):
    """kar1, a quarter of a second late: gives a test time to kill a sweep in the middle."""
    time.sleep(0.25)
    return kar1(model, x, sigmas, noise, denoise=denoise)


def _slow_nfe(steps: int, denoise: bool = True, **_) -> int:
    return 2 * steps - 1


# module-level functions only: worker processes (`--jobs`) receive the samplers by reference
TEST_SAMPLERS = {
    "test_nan": SamplerSpec("test_nan", nan_sampler, "test", False, _levels, "test", "returns NaN", min_steps=1),
    "test_error": SamplerSpec("test_error", error_sampler, "test", False, _levels, "test", "raises", min_steps=1),
    "test_slow": SamplerSpec("test_slow", slow_kar1, "test", False, _slow_nfe, "test", "slow kar1"),
}


def main() -> int:
    """`python tests/harness_helpers.py ARGS`: the scorebench CLI with the test samplers registered."""
    from bench.cli import main as cli
    from samplers import SAMPLERS

    SAMPLERS.update(TEST_SAMPLERS)
    return cli(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
