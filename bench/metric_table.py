"""The one table of metrics: what each metric's value means, for ranking (best tables), regression checks (compare)
and plots, instead of guessing from a name's prefix.

Each metric bench.metrics can compute has one `Metric` here (tests/test_harness_defects.py checks that the two
lists are the same):
- `direction`: "lower" (a distance), "higher" (precision, recall), or "target" (best at `target`, e.g. logp_gap at 0);
- `floor`: the least value the true quantity can take; an unbiased estimate below it (KD, MMD^2) is noise around it
  and ranks as the floor itself;
- `engine`: what computes it; `companion`: the metric to read beside it (precision beside recall: a sampler with
  recall 1 and precision 0 covers everything by covering nothing well);
- `noise_key`: a key of the record that holds the value's noise scale (KD's spread over subsets; weight_tv's
  exact-sample floor), used to call two values a tie; `score`: False for keys that are a spread, not a quality.

Keys of a record's metrics that are no metric: `n`, `n_ref`, the interval bounds `<name>_lo` / `<name>_hi`, the
exact-sample floor `<name>_floor` and, with seed sets (bench.protocol), the mean over the sets `<name>_mean`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Metric", "METRICS", "metric", "is_score", "badness", "interval", "tied", "REL_TIE"]

Direction = str  # "lower" | "higher" | "target"
REL_TIE = 0.02  # with no interval and no noise scale, values within 2% of each other are a tie


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Direction
    engine: str
    target: float | None = None  # direction "target": the best value
    floor: float | None = None  # least true value; estimates below it are noise (ranked as the floor)
    companion: str | None = None  # the metric to show beside this one
    noise_key: str | None = None  # record key holding this value's noise scale
    score: bool = True  # False: a diagnostic (a spread), never ranked or regressed

    def __post_init__(self) -> None:
        assert self.direction in ("lower", "higher", "target"), self.direction
        assert (self.direction == "target") == (self.target is not None), self.name

    def badness(self, value: float) -> float:
        """A number to minimise: the ranking key of `value` (NaN stays NaN)."""
        if self.direction == "higher":
            return -value
        if self.direction == "target":
            return abs(value - self.target)
        return max(value, self.floor) if self.floor is not None else value

    @property
    def label(self) -> str:
        if self.direction == "target":
            return f"best at {self.target:g}"
        return f"{self.direction} is better"


def _fidelity(set_name: str, fd: str, kd: str, precision: str, recall: str) -> list[Metric]:
    engine = f"torch-fidelity, {set_name} features"
    return [
        Metric(fd, "lower", engine, floor=0.0, companion=kd),
        Metric(kd, "lower", engine, floor=0.0, companion=fd, noise_key=f"{kd}_std"),
        Metric(f"{kd}_std", "lower", engine, floor=0.0, score=False),
        Metric(precision, "higher", engine, companion=recall),
        Metric(recall, "higher", engine, companion=precision),
    ]


_ENTRIES = [
    Metric("fd_exact", "lower", "exact mixture moments", floor=0.0, companion="weight_tv"),
    Metric(
        "weight_tv",
        "lower",
        "exact mixture responsibilities",
        floor=0.0,
        companion="fd_exact",
        noise_key="weight_tv_floor",
    ),  # fmt: skip
    Metric("mmd2_exact", "lower", "exact mixture kernel means", floor=0.0, companion="fd_exact"),
    Metric("logp_gap", "target", "exact mixture log-density", target=0.0, companion="fd_exact"),
    *_fidelity("Inception-v3", "fid", "kid", "precision", "recall"),
    *(
        m
        for s in ("digits", "mnist5k", "data")
        for m in _fidelity(s, f"fd_{s}", f"kd_{s}", f"precision_{s}", f"recall_{s}")
    ),  # fmt: skip
]
METRICS: dict[str, Metric] = {m.name: m for m in _ENTRIES}
NOT_METRICS = ("n", "n_ref")
SUFFIXES = ("_lo", "_hi", "_floor", "_mean")


def metric(name: str) -> Metric | None:
    return METRICS.get(name)


def is_score(key: str) -> bool:
    """Whether a key of a record's metrics is a quality to rank or regress (not a count, bound, floor or spread)."""
    m = METRICS.get(key)
    return m is not None and m.score


def badness(name: str, value: float) -> float:
    return METRICS[name].badness(value)


def interval(row: Any, name: str) -> tuple[float, float] | None:
    """(lo, hi) of a metric in a record's metrics or a table row, when both bounds are there and finite."""
    lo, hi = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    if not (_finite(lo) and _finite(hi)):
        return None
    return float(lo), float(hi)


def tied(name: str, a: Any, b: Any) -> bool:
    """Whether the values of metric `name` in rows `a` and `b` are within their noise of each other: their intervals
    overlap when both have one, else they differ by less than the larger noise scale (`noise_key`) when there is
    one, else by less than REL_TIE of the larger value. Values below a metric's floor sit on it (both noise)."""
    m = METRICS[name]
    va, vb = a.get(name), b.get(name)
    if not (_finite(va) and _finite(vb)):
        return False
    ia, ib = interval(a, name), interval(b, name)
    if ia is not None and ib is not None:
        return ia[0] <= ib[1] and ib[0] <= ia[1]
    ka, kb = m.badness(float(va)), m.badness(float(vb))
    if m.noise_key is not None:
        scales = [float(r.get(m.noise_key)) for r in (a, b) if _finite(r.get(m.noise_key))]
        if scales:
            return abs(ka - kb) <= max(scales)
    return abs(ka - kb) <= REL_TIE * max(abs(ka), abs(kb))


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
