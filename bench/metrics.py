"""Sample-quality metrics. Entry point: `compute_metrics(model, samples, names)` -> {metric name: value}.

Analytic models (Gaussian mixtures) get exact metrics against the true distribution:
- `fd_exact`: Frechet distance between the samples' mean/covariance and the mixture's exact moments;
- `weight_tv`: total-variation distance between the true mixture weights and the samples' mean responsibilities
  (mode coverage; 0 in expectation for exact samples).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

__all__ = ["frechet_distance", "exact_metrics", "default_metrics", "compute_metrics", "METRICS_BY_KIND"]

METRICS_BY_KIND = {"analytic": ("fd_exact", "weight_tv")}


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    covmean = linalg.sqrtm(cov1 @ cov2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def exact_metrics(mixture, x: Tensor) -> dict[str, float]:
    """Exact metrics of samples x [n, d] against a GaussianMixture."""
    x = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)
    sample_mean, sample_cov = x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False)
    fd = frechet_distance(sample_mean, sample_cov, mixture.mean().numpy(), mixture.cov().numpy())
    resp = mixture.responsibilities(x).mean(0)
    return {"fd_exact": fd, "weight_tv": float(0.5 * (resp - mixture.weights).abs().sum())}


def default_metrics(model) -> tuple[str, ...]:
    """The metrics a model gets when a suite names none."""
    if hasattr(model, "mixture"):
        return METRICS_BY_KIND["analytic"]
    return ()


def compute_metrics(model, samples: Tensor, names: Sequence[str] | None = None) -> dict[str, float]:
    """Every requested metric (default: `default_metrics(model)`) of `samples` drawn from `model`."""
    names = tuple(default_metrics(model) if names is None else names)
    values: dict[str, float] = {}
    exact = [n for n in names if n in METRICS_BY_KIND["analytic"]]
    if exact:
        if not hasattr(model, "mixture"):
            raise ValueError(f"metrics {', '.join(exact)} need an analytic model; {model.name!r} is not one")
        values.update({k: v for k, v in exact_metrics(model.mixture, samples).items() if k in exact})
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}")
    return values
