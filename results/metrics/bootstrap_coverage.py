"""Calibration of compute_metrics(bootstrap=B) intervals on gmm-2d, where the truth is known.

For exact samples (q = p) and a mis-weighted mixture (uniform weights, q != p): each metric's spread over independent
sample sets against the mean half-width / 1.96 of its interval, and how often the interval covers the metric's
expectation (the mean over the sets). Last, the with-replacement percentile bootstrap of recall for comparison.
Run from the repository root:
    python results/metrics/bootstrap_coverage.py > results/metrics/bootstrap_coverage.md
"""

import numpy as np
import torch
from torch_fidelity.metric_prc import prc_features_to_metric

from bench.metrics import REFERENCE_SEED, compute_metrics
from models import GaussianMixture, load_model

N, SETS, BOOT_SETS, B = 500, 40, 20, 40
NAMES = ("fd_exact", "weight_tv", "mmd2_exact", "logp_gap", "fd_data", "kd_data", "precision_data", "recall_data")

model = load_model("gmm-2d")
p = model.mixture
uniform = GaussianMixture(torch.full((p.n_components,), 1 / p.n_components, dtype=torch.float64), p.means, p.covs)
print(f"# Interval calibration on gmm-2d: n={N}, {SETS} sample sets, intervals (B={B}) on {BOOT_SETS} of them\n")
for label, q in (("exact samples (q = p)", p), ("mis-weighted mixture (uniform weights, q != p)", uniform)):
    gen = torch.Generator().manual_seed(1)
    sets = [q.sample(N, gen)[0] for _ in range(SETS)]
    points = [compute_metrics(model, x, NAMES) for x in sets]
    boots = [compute_metrics(model, x, NAMES, bootstrap=B, seed=i) for i, x in enumerate(sets[:BOOT_SETS])]
    print(f"## {label}\n\n| metric | mean | sd over sets | interval half-width / 1.96 | coverage |")
    print("|---|---|---|---|---|")
    for name in NAMES:
        vals = np.array([v[name] for v in points])
        width = np.mean([(b[f"{name}_hi"] - b[f"{name}_lo"]) / 2 / 1.96 for b in boots])
        cover = sum(b[f"{name}_lo"] <= vals.mean() <= b[f"{name}_hi"] for b in boots)
        print(f"| {name} | {vals.mean():.4g} | {vals.std():.3g} | {width:.3g} | {cover}/{BOOT_SETS} |")
    print()

# the with-replacement percentile bootstrap (not used): duplicated points collapse recall's k-NN balls
ref = p.sample(N, torch.Generator().manual_seed(REFERENCE_SEED))[0]
sets = [p.sample(N, torch.Generator().manual_seed(100 + i))[0] for i in range(SETS)]
recall = np.array([prc_features_to_metric(x, ref, verbose=False)["recall"] for x in sets])
rng, cover = np.random.default_rng(0), 0
for x in sets[:BOOT_SETS]:
    reps = [prc_features_to_metric(x[rng.integers(0, N, N)], ref, verbose=False)["recall"] for _ in range(B)]
    lo, hi = np.quantile(reps, [0.025, 0.975])
    cover += lo <= recall.mean() <= hi
print(f"With-replacement percentile bootstrap of recall_data (exact samples): mean {recall.mean():.4g}, ")
print(f"coverage {cover}/{BOOT_SETS}.")
