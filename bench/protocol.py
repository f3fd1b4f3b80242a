"""How a metric value was measured, and when two values may be compared: sample count, seed sets, reference.

A FID (and every other sample-based estimate) depends on more than the sampler: FD is biased upwards by O(d / n), so
a 1k-sample FID of ~30 and a 50k-sample FID of ~3 can describe the same samples; EDM's protocol reports the minimum
over three disjoint seed sets, which is lower than any one set's value; and two references (CIFAR-10's training
images through TF-GAN's Inception, EDM's fid-refs statistics, ADM's reference batch) give different numbers for the
same samples. So every value is labelled with its sample count (`fid@50k`), records say how many seed sets stood
behind it and which reference and feature extractor it was computed against, and tables, plots and `compare` rank or
compare only values whose protocol is the same, with one warning line where it is not.

Seed sets (`fid_seed_sets = K`, EDM's README: "calculated each FID three times and reported the minimum"): a cell
draws K * n samples; set j is sample indices [j * n, (j + 1) * n), i.e. per-sample seeds (suite seed, i) over
disjoint ranges (EDM: --seeds=0-49999, 50000-99999, 100000-149999). Each metric reports its best set in its own
direction (the minimum for a distance) and the mean over the sets as `<name>_mean`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .metric_table import METRICS, is_score

__all__ = [
    "count_text",
    "metric_label",
    "seed_ranges",
    "combine_seed_sets",
    "Protocol",
    "protocol_of",
    "difference",
]


def count_text(n: float | int | None) -> str:
    """A sample count the way papers write it: 50000 -> "50k", 1500 -> "1.5k", 48 -> "48", 2000000 -> "2M"."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "?"
    n = int(round(n))
    for size, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def metric_label(name: str, n: float | int | None, seed_sets: int = 1) -> str:
    """`fid@50k`; with seed sets, which of them the value is: `fid@50k (min of 3 seed sets)`."""
    label = f"{name}@{count_text(n)}"
    if seed_sets > 1:
        m = METRICS.get(name)
        which = {"lower": "min", "higher": "max"}.get(m.direction if m else "", "best")
        label += f" ({which} of {seed_sets} seed sets)"
    return label


def seed_ranges(n: int, sets: int) -> list[tuple[int, int]]:
    """The sample-index ranges [lo, hi) of `sets` disjoint seed sets of n samples each."""
    assert n > 0 and sets > 0, (n, sets)
    return [(j * n, (j + 1) * n) for j in range(sets)]


def combine_seed_sets(per_set: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """One metrics dict from the metrics of each seed set: every score takes its best set's value (in the metric's
    direction) with that set's interval bounds and noise scale, and `<name>_mean` is its mean over the sets; every
    other key (counts, floors) comes from the first set."""
    assert per_set, "no seed sets"
    out = dict(per_set[0])
    for name in per_set[0]:
        if not is_score(name):
            continue
        m = METRICS[name]
        values = [float(s[name]) for s in per_set]
        finite = [i for i, v in enumerate(values) if math.isfinite(v)]
        if not finite:
            out[f"{name}_mean"] = float("nan")
            continue
        best = min(finite, key=lambda i: m.badness(values[i]))
        out[name] = values[best]
        for key in (f"{name}_lo", f"{name}_hi", m.noise_key):
            if key is not None and key in per_set[best]:
                out[key] = per_set[best][key]
        out[f"{name}_mean"] = sum(values) / len(values)
    return out


@dataclass(frozen=True)
class Protocol:
    """What a metric value depends on besides the samples' quality."""

    n: int | None  # samples behind the value (per seed set)
    seed_sets: int  # 1, or how many disjoint sets the value is the best of
    reference: str | None  # the reference's identity (file hash) and the feature extractor; None: unknown

    @property
    def label(self) -> str:
        text = count_text(self.n)
        return text if self.seed_sets == 1 else f"{text}, best of {self.seed_sets} seed sets"


def protocol_of(record: Mapping[str, Any], metric: str) -> Protocol:
    """The protocol of `metric` in a record (or a row of the report's frame): its count from metrics `n` (else the
    record's `n`), its seed sets, and the reference + extractor of a reference-based metric (`reference` of the
    record: kind, sha256, extractors; exact metrics compare with the truth: "exact"). Records written before these
    fields existed give None where they lack one."""
    from .fidelity import FIDELITY_METRICS

    metrics = record.get("metrics") if isinstance(record.get("metrics"), Mapping) else record
    n = _number(metrics.get("n")) or _number(record.get("n"))
    sets = _number(record.get("seed_sets")) or 1
    reference = "exact"
    if metric in FIDELITY_METRICS:
        ref = record.get("reference")
        extractors = ref.get("extractors") if isinstance(ref, Mapping) else None
        if isinstance(extractors, Mapping):
            feature_set = FIDELITY_METRICS[metric][0]
            reference = f"{ref.get('kind')}:{ref.get('sha256') or ref.get('label')} / {extractors.get(feature_set)}"
        else:
            reference = None
    return Protocol(None if n is None else int(n), int(sets), reference)


def difference(a: Protocol, b: Protocol) -> str:
    """Why values measured under protocols a and b are not comparable ("" when they are). An unknown reference (an
    old record) is not held against a known one."""
    why = []
    if a.n is not None and b.n is not None and a.n != b.n:
        why.append(f"sample counts differ ({count_text(a.n)} vs {count_text(b.n)})")
    if a.seed_sets != b.seed_sets:
        why.append(f"seed sets differ ({a.seed_sets} vs {b.seed_sets})")
    if a.reference is not None and b.reference is not None and a.reference != b.reference:
        why.append("references differ")
    return "; ".join(why)


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
