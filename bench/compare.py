"""Cell-by-cell comparison of two run directories, for regression checks of sample quality and speed in CI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .report import is_score, lower_is_better
from .runner import read_records

__all__ = ["Tolerances", "compare_runs"]


@dataclass(frozen=True)
class Tolerances:
    metric_rel: float = 0.05  # a metric may get worse by this fraction of its baseline value...
    metric_abs: float = 0.0  # ...plus this absolute slack (for values near 0)
    speed_rel: float | None = 0.25  # ms per sample may grow by this fraction; None: speed is not checked


def _by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["model"], r["sampler"], r["nfe_budget"]): r for r in records}


def compare_runs(run_a: Path, run_b: Path, tol: Tolerances = Tolerances()) -> pd.DataFrame:
    """One row per (cell, quantity) of the baseline `run_a` compared with `run_b`; `worse` marks regressions.

    A cell of A that B lacks, or that was ok in A and is not in B, is a regression; cells only in B are listed as
    new. Quantities: every metric of the cell (direction per metric) and ms_per_sample.
    """
    a, b = _by_key(read_records(run_a)), _by_key(read_records(run_b))
    rows = []

    def row(key, quantity, va=None, vb=None, change=None, worse=False, note=""):
        rows.append(
            {
                "model": key[0],
                "sampler": key[1],
                "nfe_budget": key[2],
                "quantity": quantity,
                "a": va,
                "b": vb,
                "change": change,
                "worse": worse,
                "note": note,
            }
        )

    for key, ra in a.items():
        rb = b.get(key)
        if rb is None:
            row(key, "cell", ra["status"], None, worse=True, note="missing in B")
            continue
        if ra["status"] != "ok" or rb["status"] != "ok":
            worse = ra["status"] == "ok"
            row(key, "status", ra["status"], rb["status"], worse=worse, note=rb.get("error") or "" if worse else "")
            continue
        note = "" if ra.get("n") == rb.get("n") else f"n differs ({ra.get('n')} vs {rb.get('n')})"
        for metric, va in ra["metrics"].items():
            if not is_score(metric):  # sample counts and interval bounds are no quality to regress
                continue
            vb = rb["metrics"].get(metric)
            if vb is None:
                row(key, metric, va, None, worse=True, note="metric missing in B")
                continue
            slack = tol.metric_rel * abs(va) + tol.metric_abs
            worse = vb > va + slack if lower_is_better(metric) else vb < va - slack
            row(key, metric, va, vb, _relative(va, vb), worse, note)
        ms_a, ms_b = ra.get("ms_per_sample"), rb.get("ms_per_sample")
        if ms_a and ms_b:
            slower = tol.speed_rel is not None and ms_b > ms_a * (1 + tol.speed_rel)
            row(key, "ms_per_sample", ms_a, ms_b, _relative(ms_a, ms_b), slower)
        if ra.get("nfe") != rb.get("nfe"):
            row(key, "nfe", ra.get("nfe"), rb.get("nfe"), _relative(ra.get("nfe"), rb.get("nfe")), note="measured NFE")
    for key, rb in b.items():
        if key not in a:
            row(key, "cell", None, rb["status"], note="new in B")
    return pd.DataFrame(rows)


def _relative(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return (b - a) / abs(a)
