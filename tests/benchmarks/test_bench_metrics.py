"""Metric evaluation speed: 2,000 digits samples against the shipped reference with a warm cache.

Run: python -m pytest tests/benchmarks/test_bench_metrics.py -m benchmark
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from bench.data import load_dataset
from bench.metrics import compute_metrics

DIGITS = SimpleNamespace(name="digits-data", dataset="digits", data_range=(-1.0, 1.0), shape=(1, 8, 8))


@pytest.mark.benchmark
def test_bench_metrics_digits_2000(benchmark, tmp_path):
    """features + FD + KD (100 subsets of 1,000) + precision/recall of 2,000 samples vs the 1,438 training digits."""
    data = load_dataset("digits")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(data.train), (2000,), generator=gen)
    x = (data.train[idx] + 0.2 * torch.randn(2000, 1, 8, 8, generator=gen)).clamp(-1, 1)  # imperfect "samples"
    compute_metrics(DIGITS, x, cache_dir=tmp_path)  # fills the reference cache
    cpu = time.process_time()
    compute_metrics(DIGITS, x, cache_dir=tmp_path)
    benchmark.extra_info["cpu_seconds"] = round(time.process_time() - cpu, 3)  # unaffected by other processes
    values = benchmark.pedantic(compute_metrics, (DIGITS, x), {"cache_dir": tmp_path}, rounds=5, warmup_rounds=0)
    assert values["n"] == 2000 and values["n_ref"] == len(data.train)
    benchmark.extra_info.update({k: round(v, 4) for k, v in values.items()})


@pytest.mark.benchmark
def test_bench_metrics_gmm64d_2000(benchmark):
    """Exact metrics + raw-coordinate FD/KD/PRC of 2,000 gmm-64d samples (the analytic default set)."""
    from models import load_model

    model = load_model("gmm-64d")
    x = model.mixture.sample(2000, torch.Generator().manual_seed(0))[0].float()
    compute_metrics(model, x)  # per-mixture constants (E_p log p, kernel mean) computed once per process
    values = benchmark.pedantic(compute_metrics, (model, x), rounds=3, warmup_rounds=0)
    assert values["n"] == 2000
