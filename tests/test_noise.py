"""Per-sample seeded noise: the int32 hash against its integer reference, the stream against a pure-Python
reimplementation, batch invariance, and the statistics of the normals it produces."""

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from samplers.noise import SeededNoise, mix32, mix32_int, sample_keys

M32 = 0xFFFFFFFF


def as_int32(values: list[int]) -> torch.Tensor:
    return torch.tensor([v - (1 << 32) if v >= 1 << 31 else v for v in values], dtype=torch.int32)


def test_int32_hash_equals_the_integer_reference():
    rng = random.Random(0)
    # odd length: vectorised body and scalar tail both covered; edge values where the sign bit matters
    values = [0, 1, 0x7FFFFFFF, 0x80000000, 0x80000001, M32, 0xDEADBEEF] + [rng.getrandbits(32) for _ in range(1000)]
    got = [v & M32 for v in mix32(as_int32(values)).tolist()]
    assert got == [mix32_int(v) for v in values]
    assert mix32_int(0x12345678) != mix32_int(0x12345679)


def reference_stream(index: int, seed: int, stream: int, calls: int, numel: int) -> list[list[float]]:
    """The documented construction in plain Python integers and floats, one sample at a time."""
    salt = mix32_int(mix32_int(seed) ^ (stream * 0x9E3779B9 & M32))
    key = mix32_int(mix32_int(index & M32) ^ salt)
    pairs = (numel + 1) // 2
    words = [mix32_int(e ^ 0x5BD1E995) for e in range(2 * pairs)]
    out = []
    for n in range(calls):
        row = mix32_int(key ^ mix32_int((n * 0x632BE5AB + 0x2545F491) & M32))
        bits = [mix32_int(row ^ w) for w in words]
        signed = [b - (1 << 32) if b >= 1 << 31 else b for b in bits]
        radius = [math.sqrt(-2 * math.log(abs(b | 1) / 2**31)) for b in signed[:pairs]]
        angle = [b * 2 * math.pi / 2**32 for b in signed[pairs:]]
        pair = list(zip(radius, angle, strict=True))
        z = [r * math.cos(a) for r, a in pair] + [r * math.sin(a) for r, a in pair]
        out.append(z[:numel])
    return out


def test_stream_equals_a_plain_python_reimplementation():
    """Checks the int32 wrap-around, the xor-shift split between row keys and element words, and the call blocks."""
    indices, calls, shape = [0, 3, 123456789], 35, (7,)  # 35 calls cross a block of row keys; 7 elements: odd
    noise = SeededNoise(indices, shape, seed=11, stream=2, dtype=torch.float64)
    draws = torch.stack([noise() for _ in range(calls)], 1)  # [B, calls, 7]
    for row, index in enumerate(indices):
        expected = torch.tensor(reference_stream(index, 11, 2, calls, 7), dtype=torch.float64)
        torch.testing.assert_close(draws[row], expected, rtol=1e-12, atol=1e-12)


def test_streams_do_not_depend_on_the_batch_or_its_order():
    whole = SeededNoise(range(40), (3, 5), seed=4)
    parts = SeededNoise([31, 7, 2], (3, 5), seed=4)
    for _ in range(40):  # past a block boundary of row keys
        a, b = whole(), parts()
        assert torch.equal(a[[31, 7, 2]], b)
    assert not torch.equal(SeededNoise([1], (3, 5), seed=5)(), SeededNoise([1], (3, 5), seed=4)())
    assert not torch.equal(SeededNoise([1], (3, 5), stream=0)(), SeededNoise([1], (3, 5), stream=1)())
    keys = sample_keys(range(10_000))
    assert keys.dtype == torch.int32 and keys.unique().numel() == 10_000


@pytest.fixture(scope="module")
def draws() -> torch.Tensor:
    """[calls, samples, elements] = [40, 2048, 64] draws: 5.2M normals (one thread: a second one that the OS
    deschedules on a busy machine stalls every parallel kernel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        noise = SeededNoise(range(2048), (64,), seed=0)
        return torch.stack([noise() for _ in range(40)]).double()
    finally:
        torch.set_num_threads(threads)


def test_values_are_standard_normal(draws):
    z = draws.flatten().numpy()
    assert abs(z.mean()) < 3e-3  # sd of the mean: 4.4e-4
    assert abs(z.var() - 1) < 5e-3  # sd: 6e-4
    assert abs(stats.skew(z)) < 6e-3
    assert abs(stats.kurtosis(z)) < 2e-2  # excess kurtosis 0; sd: 2.1e-3
    assert stats.kstest(z[::5], "norm").pvalue > 1e-3
    for k, rel in [(2, 0.02), (3, 0.05), (4, 0.25)]:  # about 5 standard errors of each tail count
        assert abs((np.abs(z) > k).mean() / (2 * stats.norm.sf(k)) - 1) < rel
    assert np.abs(z).max() <= math.sqrt(62 * math.log(2)) + 1e-6  # the radius of the smallest 31-bit uniform


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_calls_samples_and_elements_are_uncorrelated(draws):
    bound = 5 / math.sqrt(draws[0].numel())  # 5 standard errors of a correlation over one call's 131k values
    assert abs(corr(draws[:-1], draws[1:])) < bound / 6  # consecutive calls, all of them pooled
    assert abs(corr(draws[31], draws[32])) < bound  # across a block of row keys
    assert abs(corr(draws[:, :-1], draws[:, 1:])) < bound / 6  # neighbouring sample indices
    assert abs(corr(draws[..., :-1], draws[..., 1:])) < bound / 6  # neighbouring elements
    cos_half, sin_half = draws[..., :32], draws[..., 32:]  # the two normals of each Box-Muller pair
    assert abs(corr(cos_half, sin_half)) < bound / 6
    assert abs(corr(cos_half**2, sin_half**2)) < bound / 6  # independent, not merely uncorrelated
    # per-sample sums over a call are N(0, 64): no sample's stream is biased
    sums = draws.sum(-1).flatten().numpy() / 8
    assert stats.kstest(sums, "norm").pvalue > 1e-3


def test_other_shapes_and_dtypes():
    z = SeededNoise(range(3), (1, 3, 3), dtype=torch.float64)()
    assert z.shape == (3, 1, 3, 3) and z.dtype == torch.float64
    z32 = SeededNoise(range(3), (1, 3, 3))()
    torch.testing.assert_close(z32.double(), z, rtol=1e-5, atol=1e-5)  # the same stream, generated in float32
    assert SeededNoise([0], (1,))().shape == (1, 1)
