"""Noise schedules: n decreasing noise levels followed by 0, as float64 tensors [n + 1]."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from models.wrappers import nearest_level

__all__ = [
    "karras",
    "geometric",
    "uniform_t",
    "time_quadratic",
    "native",
    "SCHEDULES",
    "make_schedule",
    "on_levels",
    "WARPS",
    "restart",
]


def _with_zero(levels: Tensor) -> Tensor:
    return torch.cat([levels, levels.new_zeros(1)])


def karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_rho = 1.0 / rho
    return _with_zero((sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho)


def geometric(sigma_min: float, sigma_max: float, n: int) -> Tensor:
    """VE / SMLD levels, geometric from sigma_max down to sigma_min (score_sde's VE time grid)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return _with_zero(sigma_max * (sigma_min / sigma_max) ** ramp)


def uniform_t(sde, n: int) -> Tensor:
    """Levels at uniformly spaced native times t from t_max down to t_min (score_sde's VP time grid)."""
    return _with_zero(sde.sigma(torch.linspace(sde.t_max, sde.t_min, n, dtype=torch.float64)))


def time_quadratic(sde, n: int) -> Tensor:
    """Levels at native times quadratic in the step index, t_i = (sqrt(t_max) + i/(n-1) (sqrt(t_min) - sqrt(t_max)))^2:
    denser near t_min (DEIS's default "time-quadratic" grid, Zhang & Chen 2023)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    root_max, root_min = math.sqrt(sde.t_max), math.sqrt(sde.t_min)
    return _with_zero(sde.sigma((root_max + ramp * (root_min - root_max)) ** 2))


def native(model, n: int) -> Tensor:
    """The model's own grid: geometric for VE, uniform in t for VP."""
    if model.process == "ve":
        return geometric(model.sigma_min, model.sigma_max, n)
    return uniform_t(model.sde, n)


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "karras": lambda model, n, rho=7.0: karras(model.sigma_min, model.sigma_max, n, rho),
    "geometric": lambda model, n: geometric(model.sigma_min, model.sigma_max, n),
    "uniform_t": lambda model, n: uniform_t(model.sde, n),
    # uniform in log-SNR: SNR = 1 / sigma^2 in VE terms, so this is the geometric grid on every model, VE or VP
    # (DPM-Solver's and UniPC's "time-uniform logSNR", recommended for low-resolution pixel-space models)
    "logsnr": lambda model, n: geometric(model.sigma_min, model.sigma_max, n),
    "time_quadratic": lambda model, n: time_quadratic(model.sde, n),
    "native": native,
}


def on_levels(schedule: Tensor, levels: Tensor) -> Tensor:
    """The schedule moved onto a discrete model's noise levels [L] (decreasing): each positive level goes to the
    nearest model level in log sigma, nudged so that the n levels stay distinct and decreasing; then 0."""
    wanted, levels = schedule[:-1].to(torch.float64), levels.to(torch.float64).cpu()
    n, count = wanted.numel(), levels.numel()
    if n > count:
        raise ValueError(f"a schedule of {n} noise levels does not fit a model trained on {count} discrete levels")
    nearest = nearest_level(wanted.cpu(), levels).tolist()
    index = []
    for i, j in enumerate(nearest):  # strictly increasing indices, leaving room for the levels still to come
        index.append(min(max(j, index[-1] + 1 if index else 0), count - (n - i)))
    return _with_zero(levels[index]).to(schedule.device)


def make_schedule(name: str, model, n: int, **kwargs) -> Tensor:
    """n noise levels of schedule `name` for `model`, then 0; on a model trained on discrete levels (model.levels),
    the schedule is drawn from those levels (on_levels)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    if n < 1:
        raise ValueError(f"a schedule needs at least 1 noise level, got {n}")
    schedule = SCHEDULES[name](model, n, **kwargs)
    levels = getattr(model, "levels", None)
    return schedule if levels is None else on_levels(schedule, levels)


# Each schedule is evenly spaced in a coordinate phi(sigma): sigma^(1/rho) for karras, log sigma for geometric and
# logsnr, the native time t for uniform_t, sqrt(t) for time_quadratic. `restart` keeps a schedule's spacing in that
# coordinate while moving its start.
Warp = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]  # (phi, phi^-1)
WARPS: dict[str, Callable[..., Warp]] = {
    "karras": lambda model, rho=7.0: (lambda s: s ** (1 / rho), lambda u: u**rho),
    "geometric": lambda model: (torch.log, torch.exp),
    "uniform_t": lambda model: (model.sde.t, model.sde.sigma),
    "logsnr": lambda model: (torch.log, torch.exp),
    "time_quadratic": lambda model: (lambda s: model.sde.t(s).sqrt(), lambda u: model.sde.sigma(u**2)),
    "native": lambda model: WARPS["geometric" if model.process == "ve" else "uniform_t"](model),
}


def restart(template: Tensor, start: Tensor, warp: Warp) -> Tensor:
    """Per-sample schedules [B, N+1] starting at `start` [B] instead of the template's first level.

    Each row keeps the template's relative spacing in the warp coordinate phi between its own start and the template's
    last positive level, then 0: restarting karras(sigma_min, sigma_max, n) at s gives karras(sigma_min, s, n). A start
    at or below the last level is raised just above it, so that every row stays strictly decreasing.
    """
    phi, phi_inv = warp
    levels = template.to(torch.float64)[:-1]
    lo, hi = levels[-1], levels[0]
    start = torch.maximum(start.to(levels), lo * (1 + 1e-6))
    frac = (phi(levels) - phi(lo)) / (phi(hi) - phi(lo)) if len(levels) > 1 else levels.new_ones(1)
    rows = phi_inv(phi(lo) + frac[None] * (phi(start)[:, None] - phi(lo)))
    rows[:, -1] = lo  # exact end point, whatever the warp's rounding
    rows[:, 0] = start
    return torch.cat([rows, rows.new_zeros(len(start), 1)], 1)
