"""Training of noise-level classifiers for DLG (`scorebench train classifier`), on a dataset or an analytic mixture.

The classifier learns p(sigma_j | x) over a geometric grid of L levels (models.noise_classifier.noise_grid) with
cross-entropy on x = x0 + sigma_y eps, x0 from the data and y uniform over the grid (Kim & Ye 2023). The result is a
directory with model.safetensors + config.json, loadable with models.noise_classifier.load_noise_classifier and
usable by DLG through the hyper-parameter classifier=PATH.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from models.noise_classifier import LearnedNoiseClassifier

__all__ = ["train_noise_classifier", "level_errors", "data_source"]

DataSource = Callable[[int, torch.Generator], Tensor]  # (n, generator) -> n clean samples [n, *shape]
MIXTURE_POOL = 50_000  # exact samples drawn once from an analytic mixture, then used as a training set


def data_source(name: str) -> tuple[DataSource, tuple[int, ...], Tensor]:
    """Clean samples of a shipped dataset (bench.data) or an analytic mixture (gmm-2d, gmm-64d, ...):
    (draw(n, generator) from the training set, sample shape, held-out set)."""
    from models import MODELS, load_model

    if name in MODELS and MODELS[name].kind == "analytic":
        mixture = load_model(name).mixture
        train = mixture.sample(MIXTURE_POOL, generator=torch.Generator().manual_seed(0))[0].float()
        heldout = mixture.sample(2000, generator=torch.Generator().manual_seed(1))[0].float()
        return (lambda n, g: train[torch.randint(len(train), (n,), generator=g)]), (mixture.dim,), heldout
    from bench.data import DATASETS, load_dataset

    if name not in DATASETS:
        known = sorted([*DATASETS, *(n for n, s in MODELS.items() if s.kind == "analytic")])
        raise ValueError(f"unknown training data {name!r}; expected one of {', '.join(known)}")
    data = load_dataset(name)
    train = data.train
    return (lambda n, g: train[torch.randint(len(train), (n,), generator=g)]), data.shape, data.heldout


def _noisy_batch(clf: LearnedNoiseClassifier, x0: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """x0 + sigma_y eps with y uniform over the classifier's grid; returns (x, y)."""
    y = torch.randint(clf.n_levels, (x0.shape[0],), generator=g)
    sigma = clf.sigmas.cpu()[y].float().reshape(-1, *([1] * (x0.ndim - 1)))
    return x0 + sigma * torch.randn(x0.shape, generator=g), y


def train_noise_classifier(
    clf: LearnedNoiseClassifier,
    draw: DataSource,
    *,
    steps: int = 4000,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Cross-entropy training (AdamW, cosine learning-rate decay); returns a summary of the run."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0; got {steps}, {batch_size}, {lr}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf.to(device).train().requires_grad_(True)
    opt = torch.optim.AdamW(clf.net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    start, ema = time.perf_counter(), None
    bar = tqdm(range(steps), desc="train classifier", disable=not progress, unit="step")
    for _ in bar:
        x, y = _noisy_batch(clf, draw(batch_size, g), g)
        loss = F.cross_entropy(clf.net(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = loss.item()
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        bar.set_postfix(loss=f"{ema:.3f}")
    clf.eval().requires_grad_(False)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "final_loss": round(ema, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


@torch.no_grad()
def level_errors(clf, x0: Tensor, seed: int = 1, sigma_low: float | None = None, batch_size: int = 1000) -> Tensor:
    """|predicted level - true level| (argmax) on x0 + sigma eps at held-out noise levels: sigma log-uniform between
    `sigma_low` (default: the grid's lowest level) and the highest level, so mostly between grid levels; the true
    level is the grid level nearest in log sigma."""
    g = torch.Generator().manual_seed(seed)
    log_grid = clf.sigmas.cpu().log()
    log_low = log_grid[-1] if sigma_low is None else torch.tensor(math.log(sigma_low), dtype=torch.float64)
    errors = []
    for lo in range(0, len(x0), batch_size):
        batch = x0[lo : lo + batch_size]
        u = torch.rand(len(batch), generator=g, dtype=torch.float64)
        log_sigma = log_low + u * (log_grid[0] - log_low)
        truth = (log_grid[None] - log_sigma[:, None]).abs().argmin(1)
        sigma = log_sigma.exp().float().reshape(-1, *([1] * (batch.ndim - 1)))
        x = batch + sigma * torch.randn(batch.shape, generator=g)
        pred = clf(x.to(clf.sigmas.device)).argmax(1).cpu()
        errors.append((pred - truth).abs())
    return torch.cat(errors)
