"""`sample`: run a registered sampler on a model for per-sample seeds within an NFE budget, with measured NFE."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from models import CountingDenoiser, Denoiser, load_model
from models.processes import broadcast

from .noise import SeededNoise
from .registry import SamplerSpec, get_sampler
from .schedules import make_schedule

__all__ = [
    "SampleResult",
    "SamplerRun",
    "sample",
    "steps_for_budget",
    "run_sampler",
    "draw_batch",
    "TOLERANCES",
    "synchronize",
]

# rtol = atol grid swept (loosest first) to fit an adaptive sampler into an NFE budget
TOLERANCES = tuple(10 ** (-k / 2) for k in range(2, 13))
INIT_STREAM, SAMPLER_STREAM = 0, 1
MAX_STEPS = 1 << 20  # the longest schedule budget fitting considers


@dataclass(frozen=True)
class SampleResult:
    x: Tensor  # samples in data space [n, *shape], on the sampling device
    nfe: float  # measured network evaluations per sample
    seconds: float  # wall-clock of the sampling loop, warm-up excluded, device synchronised
    steps: int | None  # noise levels of the schedule (None for adaptive samplers)
    declared_nfe: int | None  # the sampler's NFE formula at `steps` (None for adaptive samplers)
    hyper: dict[str, Any] = field(default_factory=dict)  # resolved hyper-parameters, tolerances included
    extras: dict[str, float] = field(default_factory=dict)  # sampler-specific accounting (e.g. DLG's burn-in NFE)


class SamplerRun(NamedTuple):
    x: Tensor  # samples in the order of the requested indices
    nfe: float  # measured network evaluations per requested sample
    seconds: float
    extras: dict[str, float]  # work booked apart by the sampler (models.base.counting_as / tally), per sample


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def steps_for_budget(spec: SamplerSpec, budget: int, hyper: Mapping[str, Any] | None = None) -> int:
    """The largest step count whose declared NFE fits the budget; ValueError if even the minimum does not."""
    hyper = spec.resolve(hyper or {})
    if spec.adaptive:
        raise ValueError(f"sampler {spec.name!r} is adaptive: its budget is met by sweeping tolerances")
    if spec.nfe(spec.min_steps, **hyper) > budget:
        raise ValueError(
            f"NFE budget {budget} is below the minimum of sampler {spec.name!r} "
            f"({spec.nfe(spec.min_steps, **hyper)} NFE at {spec.min_steps} steps)"
        )
    # NFE grows with the step count: double up to the budget, then bisect (milliseconds for any budget)
    low, high = spec.min_steps, spec.min_steps + 1
    while spec.nfe(high, **hyper) <= budget:
        if spec.nfe(high, **hyper) <= spec.nfe(low, **hyper):
            raise ValueError(f"sampler {spec.name!r}: its NFE does not grow with the step count at {dict(hyper)}")
        low, high = high, 2 * high
        if high > MAX_STEPS:
            raise ValueError(
                f"NFE budget {budget} is beyond the longest schedule budgets are fitted to ({MAX_STEPS} steps of "
                f"{spec.name})"
            )
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if spec.nfe(mid, **hyper) <= budget else (low, mid)
    return low


def draw_batch(
    model: Denoiser, spec: SamplerSpec, sigmas: Tensor, indices: list[int], *, seed: int, hyper: Mapping[str, Any]
) -> Tensor:
    """One batch: each sample's initial noise at its first level and its own noise stream, then the sampler.

    `hyper` must be resolved (spec.resolve); `sigmas` is [N+1] or one row per index [len(indices), N+1].
    """
    init = SeededNoise(indices, model.shape, seed=seed, stream=INIT_STREAM, device=sigmas.device)
    noise = SeededNoise(indices, model.shape, seed=seed, stream=SAMPLER_STREAM, device=sigmas.device)
    z = init()
    x = z * broadcast(sigmas[..., 0].expand(len(indices)), z)
    return spec.fn(model, x, sigmas, noise, **hyper)


def run_sampler(
    model: Denoiser,
    spec: SamplerSpec,
    sigmas: Tensor,
    indices: list[int],
    *,
    seed: int = 0,
    batch_size: int | None = None,
    hyper: Mapping[str, Any] | None = None,
) -> SamplerRun:
    """Sample `indices` (each with its own noise streams) in batches; returns (x, NFE per sample, seconds, extras).

    The model is wrapped in a counter: NFE is measured, not computed. One uncounted model evaluation warms up the
    device before the clock starts; the clock stops after the device has finished. Evaluations a sampler books apart
    (e.g. DLG's burn-in) are in `extras`, per requested sample. A chain sampler (spec.chains) runs whole chains, so
    that every sample is the same whatever the batch: a batch holds a multiple of outputs_per_chain rows, and the
    sampler is told which rows are requested (`wanted`): a chain stops after its last requested output and only
    requested outputs are finished, so their NFE is the sampler's per output (DLG: n_skip + the integrator's).
    """
    hyper = spec.resolve(hyper or {})
    device = model.device
    counter = CountingDenoiser(model)
    rows, group = _rows(spec, hyper, indices, sigmas.ndim == 2)
    batch_size = batch_size or len(rows)
    if group > 1:
        batch_size = max(group, batch_size // group * group)
    requested = set(indices)
    sigmas = sigmas.to(device)
    with torch.no_grad():
        probe = torch.zeros(min(2, len(rows)), *model.shape, device=device)
        model(probe, torch.full((probe.shape[0],), float(sigmas.reshape(-1)[0]), dtype=torch.float64, device=device))
        synchronize(device)
        start = time.perf_counter()
        chunks = []
        for lo in range(0, len(rows), batch_size):
            chunk, chunk_hyper = rows[lo : lo + batch_size], hyper
            if spec.chains:
                wanted = torch.tensor([row in requested for row in chunk], device=device)
                if not bool(wanted.any()):
                    continue
                chunk_hyper = {**hyper, "wanted": wanted}
            chunk_sigmas = sigmas if sigmas.ndim == 1 else sigmas[lo : lo + batch_size]
            x = draw_batch(counter, spec, chunk_sigmas, chunk, seed=seed, hyper=chunk_hyper)
            chunks.append((chunk, x))
        position = {row: (c, p) for c, (chunk, _) in enumerate(chunks) for p, row in enumerate(chunk)}
        if rows is indices:
            x = torch.cat([x for _, x in chunks])
        else:
            x = torch.stack([chunks[c][1][p] for c, p in (position[i] for i in indices)])
        synchronize(device)
        seconds = time.perf_counter() - start
    n = len(indices)
    return SamplerRun(x, counter.evals / n, seconds, {k: v / n for k, v in counter.extras.items()})


def _rows(spec: SamplerSpec, hyper: Mapping[str, Any], indices: list[int], sigmas_2d: bool) -> tuple[list[int], int]:
    """The sample indices to run (a chain sampler's requested chains, whole) and the outputs per chain."""
    if not spec.chains:
        return indices, 1
    group = int(hyper["outputs_per_chain"])
    if sigmas_2d:
        raise ValueError(f"{spec.name} runs chains on one schedule shared by all samples, not per-sample schedules")
    if group < 1:
        raise ValueError(f"outputs_per_chain must be >= 1, got {group}")
    if min(indices) < 0:
        raise ValueError(f"a chain sampler's sample indices must be >= 0, got {min(indices)}")
    chains = sorted({i // group for i in indices})
    return [c * group + k for c in chains for k in range(group)], group


def sample(
    model: Denoiser | str,
    sampler: str,
    nfe: int,
    seeds: Iterable[int] = range(64),
    *,
    device: torch.device | str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    schedule: str | Tensor | None = None,
    nfe_mean: Callable[[float, int], float] | None = None,
    **hyper,
) -> SampleResult:
    """Draw one sample per seed index with `sampler` on `model`, using at most `nfe` network evaluations per sample.

    A fixed-step sampler gets the largest step count whose NFE fits; an adaptive one (rk45) the loosest-to-tightest
    tolerance sweep's last fit, unless rtol/atol are given. The budget holds for the measured NFE: a fixed-step run
    that measures over it is redone with one step fewer. Sample i depends only on (seed, i), never on the batch
    (except where a preset reproduces an upstream whose steps use batch statistics: pc and rk45 with score_sde).
    `schedule` is a schedule name (samplers.schedules) or an explicit decreasing tensor ending at 0.
    `nfe_mean(nfe, n)` turns this process's NFE per sample over its n samples into the mean over all processes of a
    sharded run (bench.distributed), so that every rank stops an adaptive sampler's tolerance sweep at the same place.
    """
    spec = get_sampler(sampler)
    if isinstance(model, str):
        model = load_model(model)
    if device is not None:
        model = model.to(device)
    indices = [int(i) for i in seeds]
    if not indices:
        raise ValueError("seeds is empty: nothing to sample")
    if nfe < 1:
        raise ValueError(f"NFE budget must be a positive integer, got {nfe}")
    # a checkpoint may carry its upstream's sampler settings (e.g. NCSNv2's n_steps_each and step size for ald)
    resolved = spec.resolve({**getattr(model, "sampler_defaults", {}).get(spec.name, {}), **hyper})

    def schedule_for(steps: int) -> Tensor:
        if isinstance(schedule, Tensor):
            return schedule
        return make_schedule(schedule or spec.schedule, model, steps)

    def measured(run: SamplerRun) -> float:
        return nfe_mean(run.nfe, len(indices)) if nfe_mean else run.nfe

    if not spec.adaptive:
        # the largest step count whose declared NFE fits; a budget is a promise about measured NFE, so a run that
        # measures over it (a declared formula that undercounts) retries one step fewer
        given = isinstance(schedule, Tensor)
        steps = schedule.shape[-1] - 1 if given else steps_for_budget(spec, nfe, resolved)
        while True:
            declared = spec.nfe(steps, **resolved)
            if declared > nfe:
                raise ValueError(
                    f"the given schedule costs {declared} NFE with {spec.name!r}, over the budget of {nfe}"
                )
            run = run_sampler(
                model, spec, schedule_for(steps), indices, seed=seed, batch_size=batch_size, hyper=resolved
            )
            used = measured(run)
            if used <= nfe:
                return SampleResult(run.x, run.nfe, run.seconds, steps, declared, resolved, run.extras)
            if given or steps <= spec.min_steps:
                raise ValueError(f"{spec.name} took {used:g} NFE per sample at {steps} steps, over the budget of {nfe}")
            steps -= 1

    sigmas = schedule_for(2)
    if "rtol" in hyper or "atol" in hyper:
        run = run_sampler(model, spec, sigmas, indices, seed=seed, batch_size=batch_size, hyper=resolved)
        used = measured(run)
        if used > nfe:
            raise ValueError(
                f"{spec.name} at rtol={resolved['rtol']:g}, atol={resolved['atol']:g} took "
                f"{used:g} NFE per sample, over the budget of {nfe}"
            )
        return SampleResult(run.x, used, run.seconds, None, None, resolved, run.extras)
    best = None
    for tol in TOLERANCES:
        trial = {**resolved, "rtol": tol, "atol": tol}
        run = run_sampler(model, spec, sigmas, indices, seed=seed, batch_size=batch_size, hyper=trial)
        used = measured(run)
        if used > nfe:
            break
        best = SampleResult(run.x, used, run.seconds, None, None, trial, run.extras)
    if best is None:
        raise ValueError(
            f"NFE budget {nfe} is below the minimum of sampler {spec.name!r} "
            f"(rtol=atol={TOLERANCES[0]:g} already takes more)"
        )
    return best
