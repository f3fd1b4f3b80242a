"""Sample-quality metrics. Entry point: `compute_metrics(model, samples, names)` -> {metric name: value}.

Reference-based metrics (FD, KD, precision/recall) go through torch-fidelity in the feature space their name picks
(bench.fidelity): `fid`, `kid`, `kid_std`, `precision`, `recall` in Inception-v3 features (natural images);
`fd_digits`, `kd_digits`, `kd_digits_std`, `precision_digits`, `recall_digits` in the shipped digits classifier's
features (likewise `*_mnist5k`); `fd_data`, `kd_data`, ... on the raw coordinates of low-dimensional samples.

Analytic models (Gaussian mixtures) also get exact metrics against the true distribution p:
- `fd_exact`: Frechet distance between the samples' mean/covariance and the mixture's exact moments;
- `weight_tv`: total-variation distance between the true mixture weights and the samples' mean responsibilities
  (mode coverage). Biased upwards at finite n, like every absolute difference: n exact samples score about
  `weight_tv_floor` = 1/2 sum_k sd_k sqrt(2 / (pi n)), with sd_k the standard deviation of component k's
  responsibility under p (from 5 x 10^4 fixed-seed exact samples; the normal approximation of E|mean - w_k|, within
  2% of the Monte Carlo mean at n = 100..2000 on gmm-2d and gmm-64d). Every record with weight_tv carries its floor
  at the record's n: a value near the floor is as good as exact samples;
- `mmd2_exact`: unbiased estimate of the squared MMD between the samples' law q and p, Gaussian kernel
  k(x, y) = exp(-|x - y|^2 / (2 l^2)) with l^2 = tr Cov_p (the median heuristic in expectation). The p-terms are
  exact: E_y~p k(x, y) = (2 pi l^2)^(d/2) p_l(x), with p_l the mixture perturbed by noise l (its exact log_prob), and
  E_x,y~p k = sum_jk w_j w_k (2 pi l^2)^(d/2) N(mu_j; mu_k, C_j + C_k + l^2 I); only the q-q term is a U-statistic.
  A divergence (0 iff q = p, the kernel is characteristic) whose estimate is unbiased: it averages to 0 for exact
  samples at any n and is positive for any mis-weighted or mis-shaped mixture;
- `logp_gap`: E_p[log p] - mean_i log p(x_i), the mean exact log-density gap (E_p[log p] by Monte Carlo on 5 x 10^4
  fixed-seed exact samples): > 0 when samples sit in lower density than exact ones (e.g. too much noise left),
  < 0 when they are too concentrated. Not a divergence (a sampler that collapses onto modes can score below 0).

Defaults (`default_metrics`): analytic models fd_exact, weight_tv, mmd2_exact and the raw-data fd/kd/precision/recall;
models of a shipped dataset its classifier's fd/kd/precision/recall; other image models fid, kid, precision, recall.
The `*_std` spreads and `logp_gap` (best at 0) are diagnostics to request by name.

Every result carries `n` (samples evaluated) and, for reference-based metrics, `n_ref`. FD is biased upwards at small
n (read it with KD, which is unbiased); `bootstrap=B` adds `<name>_lo` / `<name>_hi`, a 95% interval over B random
halves of the generated set (bench.fidelity.half_sample_interval says why halves rather than resampling with
replacement).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from .fidelity import (
    FEATURE_SETS,
    FIDELITY_METRICS,
    Reference,
    extractor_identity,
    fidelity_metrics,
    half_sample_interval,
    half_samples,
    make_reference,
)

__all__ = [
    "frechet_distance",
    "exact_metrics",
    "weight_tv_floor",
    "default_metrics",
    "compute_metrics",
    "needs_reference",
    "reference_identity",
    "EXACT_METRICS",
    "METRICS_BY_KIND",
    "METRIC_NAMES",
    "DEFAULT_METRICS",
]

EXACT_METRICS = ("fd_exact", "weight_tv", "mmd2_exact", "logp_gap")
METRICS_BY_KIND = {
    "analytic": EXACT_METRICS + FEATURE_SETS["data"].metric_names,
    **{fs.name: fs.metric_names for fs in FEATURE_SETS.values() if fs.name != "data"},
}
METRIC_NAMES = EXACT_METRICS + tuple(FIDELITY_METRICS)
# defaults leave out the spread of KD over subsets and the signed logp_gap (best at 0, not at its minimum): both are
# diagnostics to ask for by name, not scores to rank samplers by
DEFAULT_METRICS = {
    kind: tuple(n for n in names if not n.endswith("_std") and n != "logp_gap")
    for kind, names in METRICS_BY_KIND.items()
}
REFERENCE_SEED = 20_240_601  # exact reference samples of analytic models (independent of sampler seeds)
ENTROPY_SAMPLES = 50_000


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    covmean = linalg.sqrtm(cov1 @ cov2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


# --- exact metrics of analytic models ---------------------------------------------------------------------------------
_CONSTANTS: dict[bytes, tuple[float, float, float]] = {}


def _mixture_constants(mixture) -> tuple[float, float, float]:
    """(kernel bandwidth^2, E_{x,y~p} k(x, y), E_p[log p]) of a mixture, computed once per mixture (by value)."""
    key = hashlib.sha256(b"".join(t.numpy().tobytes() for t in (mixture.weights, mixture.means, mixture.covs)))
    key = key.digest()
    if key not in _CONSTANTS:
        _CONSTANTS[key] = _compute_constants(mixture)
    return _CONSTANTS[key]


def _compute_constants(mixture) -> tuple[float, float, float]:
    d = mixture.dim
    ell2 = float(torch.trace(mixture.cov()))
    log_norm = 0.5 * d * math.log(2 * math.pi * ell2)
    k = mixture.n_components
    cov = mixture.covs[:, None] + mixture.covs[None, :] + ell2 * torch.eye(d, dtype=torch.float64)  # [j, k, d, d]
    gauss = torch.distributions.MultivariateNormal(mixture.means[None].expand(k, k, d), covariance_matrix=cov)
    log_pp = gauss.log_prob(mixture.means[:, None].expand(k, k, d)) + log_norm
    kernel_pp = float((mixture.weights[:, None] * mixture.weights[None, :] * log_pp.exp()).sum())
    x, _ = mixture.sample(ENTROPY_SAMPLES, torch.Generator().manual_seed(REFERENCE_SEED + 1))
    mean_log_p = float(torch.cat([mixture.log_prob(c) for c in x.split(10_000)]).mean())
    return ell2, kernel_pp, mean_log_p


_RESPONSIBILITY_SD: dict[bytes, Tensor] = {}


def weight_tv_floor(mixture, n: int) -> float:
    """The expected weight_tv of n exact samples of `mixture` (see the module docstring)."""
    key = hashlib.sha256(b"".join(t.numpy().tobytes() for t in (mixture.weights, mixture.means, mixture.covs)))
    key = key.digest()
    if key not in _RESPONSIBILITY_SD:
        x, _ = mixture.sample(ENTROPY_SAMPLES, torch.Generator().manual_seed(REFERENCE_SEED + 2))
        _RESPONSIBILITY_SD[key] = torch.cat([mixture.responsibilities(c) for c in x.split(10_000)]).std(0)
    return float(0.5 * _RESPONSIBILITY_SD[key].sum() * math.sqrt(2 / (math.pi * n)))


def _kernel_qq(x: Tensor, ell2: float) -> float:
    """Mean of k(x_i, x_j) over pairs i != j (a U-statistic), in row blocks of at most ~10^7 kernel values."""
    n, total = len(x), 0.0
    for xc in x.split(max(1, 10_000_000 // n)):
        total += float(torch.exp(-torch.cdist(xc, x).square() / (2 * ell2)).sum())
    return (total - n) / (n * (n - 1))  # k(x_i, x_i) = 1


def exact_metrics(mixture, x: Tensor, names: Sequence[str] = EXACT_METRICS) -> dict[str, float]:
    """Exact metrics (see the module docstring) of samples x [n, d] against a GaussianMixture."""
    x = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("samples contain NaN or infinite values; no metric is defined for them")
    if len(x) < 2:
        raise ValueError(f"exact metrics need at least 2 samples, got {len(x)}")
    out = {}
    if "fd_exact" in names:
        sample_mean, sample_cov = x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False)
        out["fd_exact"] = frechet_distance(sample_mean, sample_cov, mixture.mean().numpy(), mixture.cov().numpy())
    if "weight_tv" in names:
        resp = mixture.responsibilities(x).mean(0)
        out["weight_tv"] = float(0.5 * (resp - mixture.weights).abs().sum())
        out["weight_tv_floor"] = weight_tv_floor(mixture, len(x))
    if "mmd2_exact" in names or "logp_gap" in names:
        ell2, kernel_pp, mean_log_p = _mixture_constants(mixture)
        if "mmd2_exact" in names:
            log_norm = 0.5 * mixture.dim * math.log(2 * math.pi * ell2)
            kernel_qp = float(torch.exp(mixture.log_prob(x, math.sqrt(ell2)) + log_norm).mean())
            out["mmd2_exact"] = _kernel_qq(x, ell2) - 2 * kernel_qp + kernel_pp
        if "logp_gap" in names:
            out["logp_gap"] = mean_log_p - float(mixture.log_prob(x).mean())
    return {k: out[k] for k in (*names, "weight_tv_floor") if k in out}


def _bootstrap_exact(mixture, x: Tensor, point: dict, names: Sequence[str], n_boot: int, seed: int) -> dict:
    reps: dict[str, list[float]] = {name: [] for name in names}
    for idx in half_samples(len(x), n_boot, seed):
        for name, value in exact_metrics(mixture, x[idx], names).items():
            if name in reps:  # the floor of a half-sample is no replicate of anything
                reps[name].append(value)
    return half_sample_interval(point, reps)


# --- entry points ----------------------------------------------------------------------------------------------------
def default_metrics(model) -> tuple[str, ...]:
    """The metrics a model gets when a suite names none: exact + data-space ones for analytic models, the shipped
    classifier's for a shipped dataset, Inception ones (FID) for other image models."""
    if hasattr(model, "mixture"):
        return DEFAULT_METRICS["analytic"]
    dataset = getattr(model, "dataset", None)
    if dataset in DEFAULT_METRICS:
        return DEFAULT_METRICS[dataset]
    if len(getattr(model, "shape", ())) == 3:
        return DEFAULT_METRICS["inception"]
    return ()


def _built_in_reference(model, feature_set: str) -> bool:
    """Whether a feature set's metrics of `model` have reference data without the user's: exact samples (raw
    coordinates of an analytic model) or the model's shipped dataset (classifier or Inception features)."""
    from .data import DATASETS

    if feature_set == "data":
        return hasattr(model, "mixture")
    return getattr(model, "dataset", None) in DATASETS


def needs_reference(model, names: Sequence[str]) -> bool:
    """Whether some of the metrics `names` of `model` need the user's reference data (e.g. FID of a checkpoint)."""
    return any(not _built_in_reference(model, FIDELITY_METRICS[n][0]) for n in names if n in FIDELITY_METRICS)


def _reference(model, feature_set: str, reference, n: int) -> Reference:
    """The reference set of a feature set: the user's, else exact mixture samples (n of them, a fixed seed) for
    raw-coordinate metrics of an analytic model, else the training split of the model's shipped dataset."""
    data_range = tuple(getattr(model, "data_range", (-1.0, 1.0)))
    if isinstance(reference, Reference):
        return reference
    if reference is not None:
        return make_reference(reference, data_range=data_range)
    if _built_in_reference(model, feature_set):
        if feature_set == "data":
            x, _ = model.mixture.sample(n, torch.Generator().manual_seed(REFERENCE_SEED))
            return replace(make_reference(x, label=f"{model.name or 'mixture'}-exact"), kind="exact")
        return _dataset_reference(model.dataset)
    name = getattr(model, "name", "") or type(model).__name__
    raise ValueError(
        f"model {name!r} has no shipped reference data for {feature_set} metrics: pass reference=PATH "
        "(command line: --reference PATH), a folder of .png/.jpg images, an .npz of uint8 images [N, H, W, C], or "
        "stats:PATH (reference statistics: EDM fid-refs, pytorch-fid, score_sde or ADM files)"
    )


@cache
def _dataset_reference(dataset: str) -> Reference:
    from .data import load_dataset

    return replace(make_reference(load_dataset(dataset).train, label=dataset), kind="dataset")


def reference_identity(model, names: Sequence[str], reference=None, inception_weights=None) -> dict | None:
    """What a record says about the reference behind `names` of `model` (None when no metric uses one): kind,
    label, hash (of the file, or of the data), path, count, and per feature set the extractor with its weights' hash.
    Exact mixture samples are identified by model and seed, not hashed (they are drawn per cell)."""
    sets = list(dict.fromkeys(FIDELITY_METRICS[n][0] for n in names if n in FIDELITY_METRICS))
    if not sets:
        return None
    if isinstance(reference, Reference):
        info = reference.identity()
    elif reference is not None:
        info = make_reference(reference, data_range=tuple(getattr(model, "data_range", (-1.0, 1.0)))).identity()
    elif _built_in_reference(model, sets[0]):
        if sets[0] == "data":
            label = f"{getattr(model, 'name', None) or 'mixture'} exact samples, seed {REFERENCE_SEED}"
            info = {"kind": "exact", "label": label, "sha256": None, "path": None, "n": None}
        else:
            info = _dataset_reference(model.dataset).identity()
    else:
        return None
    info["extractors"] = {s: extractor_identity(s, inception_weights) for s in sets}
    return info


def compute_metrics(
    model,
    samples: Tensor | None,
    names: Sequence[str] | None = None,
    *,
    reference: Reference | Tensor | str | Path | None = None,
    device: str | torch.device = "cpu",
    inception_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    features: Mapping[str, Tensor] | None = None,
) -> dict[str, float]:
    """Every requested metric (default: `default_metrics(model)`) of `samples` [n, *model.shape] drawn from `model`.

    reference: the real data for FD/KD/precision/recall (a tensor, a folder of images, an .npz of uint8 images,
        "stats:PATH" for a file of reference statistics or features (bench.reference_files), or a `make_reference`
        made once for many calls);
        default: the model's shipped dataset (training split), or exact samples for an analytic model.
    device: where feature extractors run ("cuda" for Inception on a GPU).
    inception_weights: torch-fidelity's Inception-v3 weights file for fid/kid/precision/recall (default: torch's hub
        cache, else downloaded).
    cache_dir: reference statistics cache (default: $SCOREBENCH_CACHE or ~/.cache/scorebench).
    bootstrap: B > 0 adds `<name>_lo` / `<name>_hi`: a 95% interval from B random halves of the samples.
    features: the samples' features per feature set, already extracted (bench.fidelity.extract_features; a sweep
        gathers them from its processes); `samples` may then be None unless an exact metric needs them.
    Returns {name: value} for every requested name, plus `n` and (reference-based metrics) `n_ref`.
    """
    names = tuple(default_metrics(model) if names is None else names)
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}; known: {', '.join(METRIC_NAMES)}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    features = dict(features or {})
    if samples is None:
        assert features, "compute_metrics needs the samples or their features"
        n = len(next(iter(features.values())))
    else:
        n = len(samples)
    values: dict[str, float] = {"n": float(n)}

    exact = [n for n in names if n in EXACT_METRICS]
    if exact:
        if not hasattr(model, "mixture"):
            raise ValueError(f"metrics {', '.join(exact)} need an analytic model; {model.name!r} is not one")
        assert samples is not None, "exact metrics need the samples"
        values.update(exact_metrics(model.mixture, samples, exact))
        if bootstrap:
            x = samples.detach().to("cpu", torch.float64).reshape(len(samples), -1)
            values.update(_bootstrap_exact(model.mixture, x, values, exact, bootstrap, seed))

    by_set: dict[str, list[str]] = {}
    for name in names:
        if name in FIDELITY_METRICS:
            feature_set, stat = FIDELITY_METRICS[name]
            by_set.setdefault(feature_set, []).append(stat)
    for feature_set, stats in by_set.items():
        ref = _reference(model, feature_set, reference, n)
        values.update(
            fidelity_metrics(
                samples,
                ref,
                feature_set,
                stats,
                data_range=tuple(getattr(model, "data_range", (-1.0, 1.0))),
                device=device,
                inception_weights=inception_weights,
                cache_dir=cache_dir,
                bootstrap=bootstrap,
                seed=seed,
                features=features.get(feature_set),
            )
        )
    return {k: values[k] for k in ("n", *names, *sorted(set(values) - {"n", *names}))}
