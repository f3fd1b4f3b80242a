"""Sampling algorithms as pure functions over (model, x, sigmas, noise, **hyper), and the registry of fixed names."""

from .api import SampleResult, run_sampler, sample, steps_for_budget
from .noise import SeededNoise
from .registry import SAMPLERS, SamplerSpec, get_sampler, register_sampler
from .schedules import SCHEDULES, make_schedule

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "SampleResult",
    "SamplerSpec",
    "SeededNoise",
    "get_sampler",
    "make_schedule",
    "register_sampler",
    "run_sampler",
    "sample",
    "steps_for_budget",
]
