"""Per-sample seeded Gaussian noise that does not depend on batch composition, device count or sharding.

Sample i draws from its own stream keyed by (seed, stream, i): the n-th call of a SeededNoise returns, for every
sample, the n-th block of that sample's stream. The stream is counter-based: a 32-bit integer hash of (row key,
element) turned into normals by Box-Muller, where the row key is itself a hash of (sample key, call). So the whole
batch is drawn with a handful of vectorised int32/float ops on the model's device: no per-sample generator loop, no
global RNG, no host round-trip.

The hash is lowbias32 (C. Wellons' hash prospector: two multiply rounds between three xor-shifts). torch's int32
multiplication wraps modulo 2^32 and its `>>` is arithmetic, so the logical right shifts mask the copied sign bits;
`mix32_int` is the same function on Python integers, the reference the tests check the tensor version against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["SeededNoise", "sample_keys", "mix32", "mix32_int"]

_M32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x846CA68B  # lowbias32's multipliers
_ELEMENT_SALT, _CALL_MUL, _CALL_ADD = 0x5BD1E995, 0x632BE5AB, 0x2545F491
_BLOCK = 32  # row keys are derived for this many calls at a time (amortises the small per-call ops)
_LOG_2_31 = 31 * math.log(2)


def _signed(v: int) -> int:
    """The int32 (two's complement) value with the same low 32 bits as v."""
    v &= _M32
    return v - (1 << 32) if v >= 1 << 31 else v


def mix32_int(v: int) -> int:
    """lowbias32 on a Python integer: the reference for `mix32`; returns a value in [0, 2^32)."""
    v &= _M32
    v ^= v >> 16
    v = (v * _C1) & _M32
    v ^= v >> 15
    v = (v * _C2) & _M32
    return v ^ (v >> 16)


def _xorshift_(h: Tensor, s: int) -> Tensor:
    """h ^= h >>> s (logical shift) on an int32 tensor, in place."""
    h ^= (h >> s) & ((1 << (32 - s)) - 1)
    return h


def _mix32_tail_(h: Tensor) -> Tensor:
    """lowbias32 after its first xor-shift, in place on int32."""
    h *= _signed(_C1)
    _xorshift_(h, 15)
    h *= _signed(_C2)
    return _xorshift_(h, 16)


def mix32(h: Tensor) -> Tensor:
    """lowbias32 on an int32 tensor (bits as two's complement), returning a new int32 tensor."""
    return _mix32_tail_(_xorshift_(h.to(torch.int32, copy=True), 16))


def sample_keys(indices: Iterable[int] | Tensor, seed: int = 0, stream: int = 0) -> Tensor:
    """One 32-bit key per sample index, derived from (seed, stream, index): int32 tensor [B]."""
    idx = torch.as_tensor(list(indices) if not isinstance(indices, Tensor) else indices, dtype=torch.int64)
    salt = mix32_int(mix32_int(seed) ^ (stream * 0x9E3779B9 & _M32))
    low = (idx & _M32).to(torch.int32)  # two's-complement view of the index's low 32 bits
    return mix32(mix32(low) ^ _signed(salt))


class SeededNoise:
    """Callable (sigma, sigma_next) -> standard normal tensor [B, *shape], one independent stream per sample.

    Element e of call n for a sample with key k is Box-Muller of the pair of 32-bit words
    mix32(mix32(k ^ c_n) ^ w_e), w_e a hashed element counter, c_n a hashed call counter. lowbias32 starts with an
    xor-shift, which is linear over GF(2), so that first round is applied to the row keys and to the element
    counters once, never to the full [B, numel] tensor.
    """

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
        self.device = torch.device(device)
        self.keys = sample_keys(indices, seed, stream).to(self.device)
        self._numel = math.prod(self.shape)
        self._pairs = (self._numel + 1) // 2
        elem = torch.arange(2 * self._pairs, dtype=torch.int32, device=self.device)
        # [2, 1, pairs]: the words for each pair's radius and angle, first xor-shift applied
        self._elem = _xorshift_(mix32(elem ^ _ELEMENT_SALT), 16).view(2, 1, self._pairs)
        self._rows: Tensor | None = None
        self.calls = 0

    def _row_keys(self) -> Tensor:
        """This call's per-sample keys [1, B, 1] (first xor-shift applied), derived _BLOCK calls at a time."""
        j = self.calls % _BLOCK
        if j == 0 or self._rows is None:
            first = self.calls - j  # the block holding this call
            n = torch.arange(first, first + _BLOCK, dtype=torch.int32, device=self.device)
            call_keys = mix32(n * _signed(_CALL_MUL) + _signed(_CALL_ADD))
            self._rows = _xorshift_(mix32(self.keys[None, :] ^ call_keys[:, None]), 16)  # [_BLOCK, B]
        self.calls += 1
        return self._rows[j].view(1, -1, 1)

    def skip(self, n: int) -> None:
        """Advance past n calls without drawing them: the next call returns what the (n+1)-th call would have."""
        if n > 0:
            if (self.calls + n) // _BLOCK != self.calls // _BLOCK:
                self._rows = None
            self.calls += n

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        bits = _mix32_tail_(self._row_keys() ^ self._elem)  # [2, B, pairs]
        batch = bits.shape[1]
        # Box-Muller: radius sqrt(-2 ln u) with u = |bits| / 2^31 in (0, 1] (odd, so never 0); angle uniform in
        # [-pi, pi); the pair's cosine and sine fill the first and second half of the sample's elements
        radius = (bits[0] | 1).to(self.dtype).abs_().log_().mul_(-2.0).add_(2 * _LOG_2_31).sqrt_()
        angle = bits[1].to(self.dtype).mul_(2 * math.pi / 2**32)
        z = torch.empty(batch, 2, self._pairs, dtype=self.dtype, device=self.device)
        torch.mul(radius, torch.cos(angle), out=z[:, 0])
        torch.mul(radius, torch.sin(angle), out=z[:, 1])
        z = z.view(batch, 2 * self._pairs)
        if self._numel != 2 * self._pairs:
            z = z[:, : self._numel]
        return z.reshape(batch, *self.shape)
