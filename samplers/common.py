"""Small helpers shared by the sampler functions: per-sample schedules, broadcasting, the default noise source."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from models.processes import broadcast

from .noise import SeededNoise

__all__ = ["Noise", "bc", "per_sample", "per_step", "noise_or_default", "n_steps"]

Noise = Callable[[Tensor, Tensor], Tensor]


def per_sample(sigmas: Tensor, x: Tensor, model) -> Tensor:
    """Validate x and a schedule; return the schedule as float64 [B, N+1]: one decreasing row per sample, ending at 0.

    A 1-D schedule is shared by the batch; a 2-D one gives each sample its own (e.g. DLG's per-sample start).
    Checked once before a sampler's loop (one host sync), never inside it.
    """
    if tuple(x.shape[1:]) != tuple(model.shape):
        raise ValueError(f"x has sample shape {tuple(x.shape[1:])} but the model expects {tuple(model.shape)}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=x.device)
    if sigmas.ndim == 1:
        sigmas = sigmas.expand(x.shape[0], -1)
    if sigmas.ndim != 2 or sigmas.shape[0] != x.shape[0]:
        raise ValueError(f"sigmas must be [N+1] or [batch, N+1] with batch {x.shape[0]}, got {list(sigmas.shape)}")
    if sigmas.shape[1] < 2:
        raise ValueError("a schedule needs at least one noise level followed by 0")
    if not bool((sigmas[:, -1] == 0).all()) or not bool((sigmas[:, :-1] > 0).all()):
        raise ValueError("a schedule must be positive noise levels followed by a final 0")
    if not bool((sigmas[:, 1:] < sigmas[:, :-1]).all()):
        raise ValueError("a schedule must be strictly decreasing")
    return sigmas


def n_steps(sigmas: Tensor, denoise: bool) -> int:
    """Number of intervals a sampler walks: all of them, or all but the final jump to sigma = 0."""
    return sigmas.shape[1] - 1 if denoise else sigmas.shape[1] - 2


def noise_or_default(noise: Noise | None, x: Tensor) -> Noise:
    """The caller's noise source, or a deterministic per-sample one (seed 0) so that no global RNG is touched."""
    if noise is not None:
        return noise
    return SeededNoise(range(x.shape[0]), tuple(x.shape[1:]), device=x.device, dtype=x.dtype)


def bc(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample vector [B] viewed as [B, 1, ..., 1] in x's dtype."""
    return broadcast(v, x)


def per_step(x: Tensor, *coefficients: Tensor) -> tuple[Tensor, ...]:
    """Per-sample schedule coefficients [B, N] (float64) as [N, B, 1, ..., 1] in x's dtype: row i scales x at step i.

    Samplers do their schedule arithmetic once, in float64 and for every step at once, before the loop; inside the
    loop only tensor-sized work is left (each step then indexes a ready coefficient: no casts, no small kernels).
    """
    shape = (-1, x.shape[0]) + (1,) * (x.ndim - 1)
    return tuple(c.to(x.dtype).T.contiguous().view(shape) for c in coefficients)
