"""Cell-by-cell comparison of two run directories, for regression checks of sample quality and speed in CI."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .metric_table import METRICS, interval, is_score
from .protocol import difference, metric_label, protocol_of
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

    A regression (`worse`): a cell of A that B lacks; a cell that failed in B (error, diverged) unless it failed the
    same way in A; a metric missing or NaN in B that A had finite; a metric worse, in its declared direction
    (bench.metric_table), than the tolerances allow and outside the baseline's 95% interval when it has one; ms per
    sample grown beyond the speed tolerance. Cells only in B are listed as new.

    A metric measured under different protocols in A and B (sample count, seed sets, reference or feature extractor:
    bench.protocol) is not compared: its row says why ("not comparable: fid@1k vs fid@50k") and is no regression,
    and `table.attrs["warnings"]` holds one line per kind of mismatch for the command to print.
    """
    a, b = _by_key(read_records(run_a)), _by_key(read_records(run_b))
    rows = []
    mismatched: dict[str, set[tuple[str, str, int]]] = {}

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
            row(key, "cell", ra.get("status"), None, worse=True, note="missing in B")
            continue
        sa, sb = ra.get("status"), rb.get("status")
        if sb != "ok":  # a failure is a regression unless the baseline failed the same way
            worse = sb != sa
            row(key, "status", sa, sb, worse=worse, note=(rb.get("error") or f"{sb} in B") if worse else "as in A")
            continue
        if sa != "ok":
            row(key, "status", sa, sb, note="ok in B only")
            continue
        note = "" if ra.get("n") == rb.get("n") else f"n differs ({ra.get('n')} vs {rb.get('n')})"
        ma, mb = ra.get("metrics") or {}, rb.get("metrics") or {}
        for name in dict.fromkeys([*ma, *mb]):
            if not is_score(name):  # sample counts, interval bounds, floors and spreads are no quality to regress
                continue
            va, vb = ma.get(name), mb.get(name)
            if not _finite(vb):  # missing or NaN in B: a regression unless it was so in A
                what = "missing" if vb is None else f"{vb} (not a number)"
                worse = _finite(va)
                row(key, name, va, vb, worse=worse, note=f"{what} in B" + ("" if worse else ", as in A"))
                continue
            if not _finite(va):
                row(key, name, va, vb, note="not a number in A, finite in B" if name in ma else "new in B")
                continue
            pa, pb = protocol_of(ra, name), protocol_of(rb, name)
            why = difference(pa, pb)
            if why:
                mismatched.setdefault(why, set()).add(key)
                shown = f"{metric_label(name, pa.n, pa.seed_sets)} vs {metric_label(name, pb.n, pb.seed_sets)}"
                row(key, name, va, vb, _relative(va, vb), False, f"not comparable: {why} ({shown})")
                continue
            m = METRICS[name]
            ka, kb = m.badness(va), m.badness(vb)
            worse = kb > ka + tol.metric_rel * abs(ka) + tol.metric_abs
            why = note
            bounds = interval(ma, name)
            if worse and bounds is not None and bounds[0] <= vb <= bounds[1]:
                worse, why = False, "; ".join(filter(None, [note, "within A's 95% interval"]))
            row(key, name, va, vb, _relative(va, vb), worse, why)
        ms_a, ms_b = ra.get("ms_per_sample"), rb.get("ms_per_sample")
        if _finite(ms_a) and _finite(ms_b):
            slower = tol.speed_rel is not None and ms_b > ms_a * (1 + tol.speed_rel)
            row(key, "ms_per_sample", ms_a, ms_b, _relative(ms_a, ms_b), slower)
        if ra.get("nfe") != rb.get("nfe"):
            row(key, "nfe", ra.get("nfe"), rb.get("nfe"), _relative(ra.get("nfe"), rb.get("nfe")), note="measured NFE")
    for key, rb in b.items():
        if key not in a:
            row(key, "cell", None, rb["status"], note="new in B")
    table = pd.DataFrame(rows)
    table.attrs["warnings"] = [
        f"warning: {len(cells)} cell(s) of A and B were measured under different protocols ({why}): their metrics "
        "are not compared"
        for why, cells in mismatched.items()
    ]
    return table


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _relative(a: float | None, b: float | None) -> float | None:
    if not (_finite(a) and _finite(b)) or a == 0:
        return None
    return (b - a) / abs(a)
