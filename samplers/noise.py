"""Per-sample seeded Gaussian noise that does not depend on batch composition, device count or sharding.

Sample i draws from its own stream keyed by (seed, i): the n-th call of a SeededNoise returns, for every sample, the
n-th block of that sample's stream. The stream is counter-based (an integer hash of (key, call, element) turned into
normals by Box-Muller), so the whole batch is drawn with a handful of vectorised tensor ops on the model's device:
no per-sample generator loop, no global RNG, no host round-trip.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["SeededNoise", "sample_keys"]

_M32 = 0xFFFFFFFF


def _mix32(h: Tensor) -> Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply avalanche) on int64 tensors holding values in [0, 2^32)."""
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _M32
    return h ^ (h >> 16)


def _mix_int(v: int) -> int:
    return int(_mix32(torch.tensor([v & _M32], dtype=torch.int64))[0])


def sample_keys(indices: Iterable[int] | Tensor, seed: int = 0, stream: int = 0) -> Tensor:
    """One 32-bit key per sample index, derived from (seed, stream, index): int64 tensor [B]."""
    idx = torch.as_tensor(list(indices) if not isinstance(indices, Tensor) else indices, dtype=torch.int64)
    salt = _mix_int(_mix_int(seed) ^ (stream * 0x9E3779B9 & _M32))
    return _mix32(_mix32(idx & _M32) ^ salt)


class SeededNoise:
    """Callable (sigma, sigma_next) -> standard normal tensor [B, *shape], one independent stream per sample."""

    def __init__(
        self,
        indices: Iterable[int] | Tensor,
        shape: tuple[int, ...],
        *,
        seed: int = 0,
        stream: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.keys = sample_keys(indices, seed, stream).to(device)
        numel = math.prod(self.shape)
        self._pairs = (numel + 1) // 2
        elem = torch.arange(2 * self._pairs, dtype=torch.int64, device=device)
        self._elem = _mix32(elem ^ 0x5BD1E995).view(2, self._pairs)  # [2, pairs]: the two uniforms of each pair
        self.calls = 0

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        call_key = _mix_int(self.calls * 0x632BE5AB + 0x2545F491)
        self.calls += 1
        key = _mix32(self.keys ^ call_key)[:, None, None]  # [B, 1, 1]
        bits = _mix32(key ^ self._elem)  # [B, 2, pairs]
        u = (bits.to(self.dtype) + 0.5) * 2.0**-32
        radius = torch.sqrt(-2.0 * torch.log(u[:, 0]))
        angle = (2 * math.pi) * u[:, 1]
        z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        return z[:, : math.prod(self.shape)].reshape(-1, *self.shape)
