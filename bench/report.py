"""Tables (pandas: CSV + Markdown) and plots (matplotlib, PNG) of a run directory's records.

Written into the run directory:
- `tables/records.csv`: every record, one row per cell, metrics and sampler accounting as columns;
- `tables/<model>.csv`, `.md`: every metric against measured NFE, one row per sampler, one column per NFE budget
  (with its 95% interval `[lo, hi]` when the run had `bootstrap`);
- `tables/best.csv`, `.md`: the best sampler per model, metric and NFE budget, among the cells measured under one
  protocol (sample count, seed sets, reference: bench.protocol): a 1k-sample FID is never ranked against a 50k one;
- `plots/<model>-nfe.png`: each metric against measured NFE (log axis), one line per sampler, DLG variants dashed in
  the colour of the integrator they hand off to, intervals as error bars; `plots/<model>-pareto.png`: the first
  metric against ms per sample with its Pareto front;
- `grids/<model>.png`: the kept samples of each sampler (rows) at each budget (columns): image grids, or scatters of
  vector data over exact samples of the model when it has them;
- `report.md`: all of the above on one page.

Every metric is labelled with the samples behind it (`fid@50k`; with seed sets `fid@50k (min of 3 seed sets)`, the
mean over the sets in parentheses). Where cells of one model and metric were measured under different protocols, or
a published number came from another sample count than the measured one, the report says so in one warning line
(at the top of report.md and on stderr).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .files import save_figure, write_text
from .metric_table import METRICS, interval, is_score, tied
from .protocol import count_text, difference, metric_label, protocol_of
from .runner import read_records, slug

__all__ = [
    "records_frame",
    "metric_table",
    "best_table",
    "protocol_warnings",
    "metric_labels",
    "write_report",
    "is_score",
    "loaded",
    "concurrent",
]

DLG_PREFIX = "dlg+"
INTERVAL_SUFFIXES = ("_lo", "_hi")
# work a sampler books apart from its NFE (DLG's amortised burn-in and noise-level classifier calls), per sample: the
# total-cost marker of the NFE plots counts each as one evaluation
EXTRA_COST_KEYS = ("burn_in_nfe", "classifier_evals", "burn_in_classifier_evals")
PANELS_PER_ROW = 3
# the bulk of a panel's values: the median plus or minus CLIP_REACH robust standard deviations (1.4826 x the median
# absolute deviation; in decades on a log axis), robust to one sampler in four being far off; values beyond are drawn
# as triangles on the axis' edge. Bounded metrics (precision, recall in [0, 1]) are never clipped.
CLIP_REACH = 5.0


def _interval(r: pd.Series | dict, metric: str) -> tuple[float, float] | None:
    return interval(r, metric)


def _label(metric: str, shown: str | None = None) -> str:
    m = METRICS.get(metric)
    shown = shown or metric
    return f"{shown} ({m.label})" if m else shown


def loaded(r: pd.Series | dict) -> bool:
    """Whether other work loaded the machine while the cell sampled, so that its timing is noise: the load average
    exceeded the cores by more than half of what the run's own jobs x threads put on them (the run's own load is
    counted in the average, and lags it)."""
    cores = r.get("cpu_count")
    loads = [r.get(k) for k in ("load_before", "load_after")]
    loads = [float(v) for v in loads if v is not None and not pd.isna(v)]
    if not loads or cores is None or pd.isna(cores):
        return False
    own = 1.0
    for key in ("jobs", "threads"):
        value = r.get(key)
        own *= float(value) if value is not None and not pd.isna(value) else 1.0
    return max(loads) > float(cores) + 0.5 * own


def concurrent(r: pd.Series | dict) -> bool:
    """Whether the cell ran beside other cells of the run (`--jobs` > 1): its wall-clock shared the cores."""
    jobs = r.get("jobs")
    return jobs is not None and not pd.isna(jobs) and int(jobs) > 1


def _timing_mark(r: pd.Series | dict) -> str:
    marks = (["loaded"] if r.get("loaded") else []) + ([f"{int(r['jobs'])} jobs"] if concurrent(r) else [])
    return ", ".join(marks)


def in_suite_order(records: list[dict[str, Any]], suite: dict[str, Any]) -> list[dict[str, Any]]:
    """Records by model and sampler in the suite's order, then budget: the order of a run with one job, whatever
    order parallel jobs finished their cells in (names the suite does not list follow, in their first order)."""
    models = {m: i for i, m in enumerate(dict.fromkeys(e.get("name") for e in suite.get("models", [])))}
    samplers = {s: i for i, s in enumerate(dict.fromkeys(e.get("name") for e in suite.get("samplers", [])))}
    for r in records:
        models.setdefault(r.get("model"), len(models))
        samplers.setdefault(r.get("sampler"), len(samplers))
    return sorted(records, key=lambda r: (models[r.get("model")], samplers[r.get("sampler")], r.get("nfe_budget") or 0))


# --- tables -----------------------------------------------------------------------------------------------------


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record: its fields, then one column per metric and per sampler extra (e.g. DLG's burn-in NFE), and
    `loaded` (the machine's load exceeded its cores during the cell)."""
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("metrics", "extras", "hyper", "set_metrics", "labels")}
        row["hyper"] = json.dumps(r.get("hyper", {}), sort_keys=True)
        row.update(r.get("extras") or {})
        row.update(r.get("metrics") or {})
        row["loaded"] = loaded(r)
        row["concurrent"] = concurrent(r)
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("model", "sampler", "nfe_budget", "status", "nfe", "ms_per_sample", "wall_s"):
        if column not in frame and not frame.empty:
            frame[column] = np.nan  # e.g. no cell finished ok: no timing anywhere
    return frame


def _fmt(value: float) -> str:
    if value is None or pd.isna(value) or not np.isfinite(value):
        return "-"
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def metric_table(frame: pd.DataFrame, model: str, metric: str, order: list[str] | None = None) -> pd.DataFrame:
    """Rows: samplers (in `order`, default suite order); columns: NFE budgets; cells: 'value @measured NFE' (with
    '[lo, hi]', its interval, when there is one, and '(exact: f)' when the metric has an exact-sample floor), or the
    status of a cell that did not finish ok."""
    df = frame[frame["model"] == model]
    order = [s for s in order or df["sampler"] if s in set(df["sampler"])]
    order = list(dict.fromkeys(order))

    def cell(r: pd.Series) -> str:
        if r["status"] != "ok":
            return str(r["status"])
        value = r.get(metric)
        if value is None or pd.isna(value):
            return "-"
        bounds = _interval(r, metric)
        shown = _fmt(value) if bounds is None else f"{_fmt(value)} [{_fmt(bounds[0])}, {_fmt(bounds[1])}]"
        mean = r.get(f"{metric}_mean")
        if mean is not None and not pd.isna(mean):
            shown += f" (mean {_fmt(mean)})"
        floor = r.get(f"{metric}_floor")
        if floor is not None and not pd.isna(floor):
            shown += f" (exact: {_fmt(floor)})"
        return f"{shown} @{r['nfe']:.3g}"

    shown = df.assign(cell=df.apply(cell, axis=1) if not df.empty else [])
    table = shown.pivot(index="sampler", columns="nfe_budget", values="cell").reindex(order)
    table.columns = [f"NFE<={b}" for b in table.columns]
    return table.fillna("")


def _protocol_key(row: pd.Series, metric: str) -> tuple:
    p = protocol_of(row, metric)
    return (p.n, p.seed_sets, p.reference)


def best_table(frame: pd.DataFrame, metrics: dict[str, list[str]]) -> pd.DataFrame:
    """The best sampler (among ok cells) per model, metric and NFE budget, ranked by the metric's declared direction
    (bench.metric_table: a distance's estimate below its floor counts as the floor, a target metric by its distance
    to the target), with its measured NFE and speed, its companion metric (precision beside recall), the samplers
    whose values are within noise of it (`tied_with`), and the runner-up. Only cells measured under one protocol
    (sample count, seed sets, reference and extractor: bench.protocol) are ranked together: each protocol of a budget
    gets its own row, labelled (`label`, e.g. fid@50k)."""
    rows = []
    if frame.empty or "status" not in frame:
        return pd.DataFrame(rows)
    ok = frame[frame["status"] == "ok"]
    for model, names in metrics.items():
        for metric in names:
            info = METRICS.get(metric)
            df = ok[(ok["model"] == model)]
            if info is None or not info.score or metric not in df or df[metric].isna().all():
                continue
            df = df.dropna(subset=[metric])
            df = df.assign(_rank=[info.badness(float(v)) for v in df[metric]])
            keys = [_protocol_key(r, metric) for _, r in df.iterrows()]
            df = df.assign(_protocol=[repr(k) for k in keys])
            for (budget, _), group in df.groupby(["nfe_budget", "_protocol"], sort=True):
                group = group.sort_values(["_rank", "nfe"], kind="stable")
                best = group.iloc[0]
                rest = group.iloc[1:]
                ties = [r["sampler"] for _, r in rest.iterrows() if tied(metric, best, r)]
                companion = ""
                if info.companion and info.companion in group and not pd.isna(best.get(info.companion)):
                    companion = f"{info.companion} {_fmt(best[info.companion])}"
                floor = best.get(f"{metric}_floor")
                runner = rest.iloc[0] if not rest.empty else None
                protocol = protocol_of(best, metric)
                rows.append(
                    {
                        "model": model,
                        "metric": metric,
                        "label": metric_label(metric, protocol.n, protocol.seed_sets),
                        "nfe_budget": int(budget),
                        "best_sampler": best["sampler"],
                        "value": best[metric],
                        "exact_floor": None if floor is None or pd.isna(floor) else floor,
                        "nfe": best["nfe"],
                        "ms_per_sample": best["ms_per_sample"],
                        "timing": _timing_mark(best),
                        "companion": companion,
                        "tied_with": ", ".join(ties),
                        "runner_up": "" if runner is None else f"{runner['sampler']} ({_fmt(runner[metric])})",
                    }
                )
    return pd.DataFrame(rows)


def protocol_warnings(frame: pd.DataFrame, metrics: dict[str, list[str]]) -> list[str]:
    """One line per model and metric whose ok cells were measured under different protocols (sample counts, seed
    sets, references): their values are not comparable, and the best tables rank each protocol apart."""
    lines = []
    if frame.empty or "status" not in frame:
        return lines
    ok = frame[frame["status"] == "ok"]
    for model, names in metrics.items():
        df = ok[ok["model"] == model]
        for metric in names:
            if metric not in df or not is_score(metric):
                continue
            seen = {}
            for _, r in df.dropna(subset=[metric]).iterrows():
                p = protocol_of(r, metric)
                seen.setdefault((p.n, p.seed_sets, p.reference), p)
            protocols = list(seen.values())
            why = sorted({difference(a, b) for a in protocols for b in protocols} - {""})
            if why:
                counts = ", ".join(metric_label(metric, p.n, p.seed_sets) for p in protocols)
                lines.append(
                    f"warning: {model}: {metric} values were measured under different protocols ({'; '.join(why)}: "
                    f"{counts}); they are not comparable, and the best tables rank each protocol apart"
                )
    return lines


def metric_labels(frame: pd.DataFrame, model: str, metrics: list[str]) -> dict[str, str]:
    """Each metric of a model labelled with its sample count (and seed sets) from its ok cells, e.g. fid@50k; counts
    that differ between cells are all listed (fid@1k/50k)."""
    out = {}
    ok = frame[(frame["model"] == model) & (frame["status"] == "ok")] if "status" in frame else frame.iloc[:0]
    for metric in metrics:
        if metric not in ok:
            out[metric] = metric
            continue
        found = list(dict.fromkeys((p.n, p.seed_sets) for p in (protocol_of(r, metric) for _, r in ok.iterrows())))
        if len(found) == 1:
            out[metric] = metric_label(metric, *found[0])
        elif found:
            out[metric] = f"{metric}@{'/'.join(count_text(n) for n, _ in found)}"
        else:
            out[metric] = metric
    return out


def _markdown(df: pd.DataFrame, index: bool = True) -> str:
    """A Markdown table, leaving out the columns that are empty in every row."""
    empty = [c for c in df.columns if df[c].isna().all() or (df[c].astype(str) == "").all()]
    shown = df.drop(columns=empty).astype(object)
    return shown.where(shown.notna(), None).to_markdown(index=index, floatfmt=".4g", missingval="")


# --- plots ------------------------------------------------------------------------------------------------------


def sampler_styles(samplers: list[str], algorithms: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Line styles: one colour per sampler; a DLG variant takes its integrator's colour, dashed, with open markers."""
    from matplotlib import colormaps

    plain = [s for s in samplers if not algorithms.get(s, s).startswith(DLG_PREFIX)]
    palette = colormaps["tab10" if len(plain) <= 10 else "tab20"].colors
    colours: dict[str, Any] = {}
    for s in plain:
        colours[s] = palette[len(colours) % len(palette)]
    styles = {}
    for s in samplers:
        algo = algorithms.get(s, s)
        if algo.startswith(DLG_PREFIX):
            base = algo.removeprefix(DLG_PREFIX)
            partner = next((p for p in plain if algorithms.get(p, p) == base), None)
            colour = colours[partner] if partner else palette[len(colours) % len(palette)]
            colours.setdefault(s, colour)
            styles[s] = {"color": colour, "linestyle": "--", "marker": "o", "markerfacecolor": "none"}
        else:
            styles[s] = {"color": colours[s], "linestyle": "-", "marker": "o"}
    return styles


def _ordered(samplers: list[str], algorithms: dict[str, str]) -> list[str]:
    """Legend order: each integrator followed by its DLG variants."""
    out = []
    for s in samplers:
        if not algorithms.get(s, s).startswith(DLG_PREFIX):
            out.append(s)
            out += [d for d in samplers if algorithms.get(d, d) == DLG_PREFIX + algorithms.get(s, s) and d not in out]
    return out + [s for s in samplers if s not in out]


def _log_x(ax) -> None:
    """A log x axis labelled 1, 2, 5, 10, 20, ... in plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    axis = ax.xaxis
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_if_positive(ax, values: pd.Series, axis: str = "y") -> None:
    """A log axis when every value is positive, its ticks in plain numbers (0.5, 60), not powers (6 x 10^1)."""
    from matplotlib.ticker import FuncFormatter

    if len(values) and (values > 0).all():
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        target = ax.yaxis if axis == "y" else ax.xaxis
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")
        target.set_major_formatter(plain)
        target.set_minor_formatter(plain if _decades(values) < 1.5 else FuncFormatter(lambda v, _: ""))


def _decades(values: pd.Series) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.log10(v.max() / v.min())) if len(v) else 0.0


def _bulk_limits(values, log: bool) -> tuple[float, float] | None:
    """Axis limits spanning the bulk of `values` (median +- CLIP_REACH robust standard deviations, in decades on a
    log axis), or None when every value lies within: then nothing is clipped."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if log:
        v = np.log10(v[v > 0])
    if len(v) < 4:
        return None
    centre = float(np.median(v))
    spread = 1.4826 * float(np.median(np.abs(v - centre)))
    if spread == 0:
        spread = 0.1 if log else max(0.1 * abs(centre), 1e-12)
    lo, hi = centre - CLIP_REACH * spread, centre + CLIP_REACH * spread
    if lo <= v.min() and hi >= v.max():
        return None
    lo, hi = max(lo, v.min()), min(hi, v.max())
    pad = 0.06 * (hi - lo if hi > lo else spread)
    lo, hi = lo - pad, hi + pad
    return (10**lo, 10**hi) if log else (lo, hi)


def _mark_clipped(ax, xs, ys, limits: tuple[float, float], colour) -> int:
    """Triangles on the edge of a clipped y axis where values lie beyond it (pointing the way they went); returns
    how many there are."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    above, below = ys > limits[1], ys < limits[0]
    style = {"color": colour, "s": 42, "clip_on": False, "zorder": 5, "edgecolors": "black", "linewidths": 0.5}
    if above.any():
        ax.scatter(xs[above], np.full(above.sum(), limits[1]), marker="^", **style)
    if below.any():
        ax.scatter(xs[below], np.full(below.sum(), limits[0]), marker="v", **style)
    return int(above.sum() + below.sum())


def _clip_y(ax, points: list[tuple[Any, Any, Any]], values) -> int:
    """Clip the y axis of a panel to the bulk of `values` and mark every point of `points` ((x, y, colour) per
    series) beyond it; returns the number of clipped points."""
    log = ax.get_yscale() == "log"
    limits = _bulk_limits(values, log)
    if limits is None:
        return 0
    ax.set_ylim(*limits)
    return sum(_mark_clipped(ax, x, y, limits, colour) for x, y, colour in points)


def _bounded(metric: str) -> bool:
    """Precision and recall live in [0, 1]: every value of theirs is informative, none is clipped."""
    m = METRICS.get(metric)
    return m is not None and m.direction == "higher"


def _clip_note(clipped: int) -> str:
    return f"\n{clipped} value(s) beyond the axis: \u25b2 / \u25bc on its edge" if clipped else ""


def total_cost(d: pd.DataFrame) -> pd.Series:
    """NFE per sample plus the work a sampler books apart (DLG: amortised burn-in NFE and classifier calls, each
    counted as one evaluation)."""
    total = d["nfe"].astype(float).copy()
    for key in EXTRA_COST_KEYS:
        if key in d:
            total += d[key].astype(float).fillna(0.0)
    return total


def _grid(n: int, width: float, height: float, legend: float = 2.0) -> tuple[Figure, list]:
    """A figure of n panels, at most PANELS_PER_ROW per row, with room on the right for a legend."""
    cols = min(PANELS_PER_ROW, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols + legend, height * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def plot_nfe(
    frame: pd.DataFrame, model: str, metrics: list[str], styles, order, path: Path, labels: dict[str, str] | None = None
) -> bool:
    """Each metric against measured NFE, one panel per metric (at most PANELS_PER_ROW per row). A DLG point is also
    drawn at its total cost (hollow square joined by a dotted line): NFE plus its amortised burn-in and classifier
    calls. Each panel's y axis spans the bulk of its values; values beyond it are triangles on the edge."""
    from matplotlib.lines import Line2D

    if frame.empty or "status" not in frame:
        return False
    df = frame[(frame["model"] == model) & (frame["status"] == "ok")]
    metrics = [m for m in metrics if m in df and df[m].notna().any()]
    if df.empty or not metrics:
        return False
    fig, axes = _grid(len(metrics), 4.6, 3.6)
    has_cost = False
    for ax, metric in zip(axes, metrics, strict=True):
        series = []
        for s in order:
            d = df[df["sampler"] == s].dropna(subset=[metric]).sort_values("nfe")
            if d.empty:
                continue
            st = styles[s]
            bounds = [_interval(r, metric) for _, r in d.iterrows()]
            if any(b is not None for b in bounds):  # error bars from the interval; none where a cell lacks one
                below = [max(0.0, v - b[0]) if b else 0.0 for v, b in zip(d[metric], bounds, strict=True)]
                above = [max(0.0, b[1] - v) if b else 0.0 for v, b in zip(d[metric], bounds, strict=True)]
                ax.errorbar(d["nfe"], d[metric], yerr=[below, above], capsize=2, label=s, **st)
            else:
                ax.plot(d["nfe"], d[metric], label=s, **st)
            series.append((d["nfe"], d[metric], st["color"]))
            total = total_cost(d)
            extra = total > d["nfe"] + 1e-9
            if extra.any():
                has_cost = True
                for x0, x1, y in zip(d["nfe"][extra], total[extra], d[metric][extra], strict=True):
                    ax.plot([x0, x1], [y, y], color=st["color"], linestyle=":", linewidth=0.8, alpha=0.8)
                ax.plot(total[extra], d[metric][extra], linestyle="none", marker="s", markersize=5,
                        markerfacecolor="none", color=st["color"])  # fmt: skip
                series.append((total[extra], d[metric][extra], st["color"]))
        _log_x(ax)
        _log_if_positive(ax, df[metric].dropna())
        clipped = 0 if _bounded(metric) else _clip_y(ax, series, df[metric].dropna())
        ax.set_xlabel("measured NFE per sample")
        shown = (labels or {}).get(metric, metric)
        ax.set_ylabel(_label(metric, shown))
        ax.set_title(shown + _clip_note(clipped), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    if has_cost:
        seen["at total cost (+ burn-in, classifier calls)"] = Line2D(
            [], [], color="0.3", linestyle=":", marker="s", markerfacecolor="none"
        )
    fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize="small")
    fig.suptitle(f"{model}: sample quality vs NFE")
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    return True


def plot_pareto(
    frame: pd.DataFrame, model: str, metric: str, styles, order, path: Path, label: str | None = None
) -> bool:
    """The metric against ms per sample with its Pareto front; cells timed while the machine's load exceeded its
    cores are hatched (their timing is noise); y clipped to the bulk as in plot_nfe."""
    from matplotlib.patches import Patch

    info = METRICS.get(metric)
    if frame.empty or info is None or not {metric, "ms_per_sample", "status"} <= set(frame.columns):
        return False
    df = frame[(frame["model"] == model) & (frame["status"] == "ok")].dropna(subset=[metric, "ms_per_sample"])
    if df.empty:
        return False
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    series = []
    busy = df["loaded"].astype(bool) if "loaded" in df else pd.Series(False, index=df.index)
    for s in order:
        d = df[df["sampler"] == s]
        if d.empty:
            continue
        st = styles[s]
        marker = "o" if st["linestyle"] == "-" else "s"
        calm, hot = d[~busy[d.index]], d[busy[d.index]]
        if not calm.empty:
            ax.scatter(calm["ms_per_sample"], calm[metric], label=s, color=st["color"], marker=marker)
        if not hot.empty:
            ax.scatter(hot["ms_per_sample"], hot[metric], label="_" if not calm.empty else s, marker=marker,
                       facecolors="none", edgecolors=st["color"], hatch="/////", linewidths=0.8)  # fmt: skip
        series.append((d["ms_per_sample"], d[metric], st["color"]))
    # Pareto front: the cells no other cell beats in both speed and quality (in the metric's declared direction)
    front, best = [], math.inf
    for _, r in (
        df.assign(_rank=[info.badness(float(v)) for v in df[metric]]).sort_values(["ms_per_sample", "_rank"]).iterrows()
    ):
        if r["_rank"] < best:
            best = r["_rank"]
            front.append(r)
    fx, fy = [r["ms_per_sample"] for r in front], [r[metric] for r in front]
    ax.step(fx, fy, where="post", color="black", linewidth=1, alpha=0.6, label="Pareto front")
    for r in front:
        ax.annotate(f"{r['sampler']}@{r['nfe']:.0f}", (r["ms_per_sample"], r[metric]), fontsize=7, alpha=0.85)
    _log_x(ax)
    _log_if_positive(ax, df[metric])
    clipped = 0 if _bounded(metric) else _clip_y(ax, series, df[metric])
    ax.set_xlabel("wall-clock per sample [ms] (sampling only)")
    ax.set_ylabel(_label(metric, label))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{model}: {label or metric} vs wall-clock" + _clip_note(clipped))
    handles, labels = ax.get_legend_handles_labels()
    if busy.any():
        cores = df["cpu_count"].dropna().max() if "cpu_count" in df else float("nan")
        handles.append(Patch(facecolor="none", edgecolor="0.3", hatch="/////"))
        labels.append(f"timed while the load exceeded {cores:.0f} cores")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    return True


def _image_grid(x: np.ndarray, data_range: tuple[float, float], n: int = 16) -> np.ndarray:
    """Up to n images [N, C, H, W] tiled into one [H', W', C] array in [0, 1]."""
    import torch
    from torchvision.utils import make_grid

    lo, hi = data_range
    t = torch.from_numpy(x[:n]).float().sub(lo).div(hi - lo).clamp(0, 1)
    grid = make_grid(t, nrow=int(math.ceil(math.sqrt(len(t)))), padding=1, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def _xy(x: np.ndarray) -> np.ndarray:
    """The first two coordinates of vector samples [N, d] (a 1-d sample is drawn on the diagonal)."""
    x = x.reshape(len(x), -1)
    return x[:, [0, 1]] if x.shape[1] > 1 else x[:, [0, 0]]


def _scatter_limits(reference: np.ndarray | None, df: pd.DataFrame, run_dir: Path, points):
    """Axis limits from the exact samples when there are some (else from all kept samples), so outliers of a poor
    sampler do not shrink every other panel to a dot."""
    if reference is None:
        reference = np.concatenate([points(np.load(run_dir / f)["x"]) for f in df["samples_file"]])
    pts = _xy(reference)
    lo, hi = np.nanpercentile(pts, 0.5, axis=0), np.nanpercentile(pts, 99.5, axis=0)
    pad = 0.25 * (hi - lo).max()
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2 + pad
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def plot_grids(
    run_dir: Path, frame: pd.DataFrame, model: str, order: list[str], info: dict[str, Any], path: Path
) -> bool:
    """The kept samples of every sampler (rows) at every budget (columns): image grids, or scatters for vectors."""
    df = frame[(frame["model"] == model) & (frame["status"] == "ok")]
    if "samples_file" not in df:
        return False
    df = df.dropna(subset=["samples_file"])
    rows = [s for s in order if s in set(df["sampler"])]
    budgets = sorted(df["nfe_budget"].unique())
    if not rows:
        return False
    shape = info.get("shape", [])
    image = len(shape) == 3
    ref_file = run_dir / "samples" / slug(model) / "reference.npz"
    reference, basis = None, None
    if ref_file.exists() and not image:
        with np.load(ref_file) as ref:
            reference, basis = ref["x"], ref["basis"] if "basis" in ref else None

    def points(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1)
        return _xy(x @ basis if basis is not None else x)

    size = 1.6 if image else 1.9
    fig = Figure(figsize=(size * len(budgets) + 1.2, size * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), len(budgets), squeeze=False)
    any_outside = False
    limits = None if image else _scatter_limits(reference, df, run_dir, points)
    cells = {(r["sampler"], r["nfe_budget"]): r for _, r in df.iterrows()}
    for i, sampler in enumerate(rows):
        for j, budget in enumerate(budgets):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(sampler, fontsize=8)
            if i == 0:
                ax.set_title(f"NFE <= {budget}", fontsize=8)
            r = cells.get((sampler, budget))
            if r is None:
                ax.set_frame_on(False)
                continue
            x = np.load(run_dir / r["samples_file"])["x"]
            if image:
                ax.imshow(_image_grid(x, tuple(info.get("data_range", (-1, 1)))), cmap="gray", interpolation="nearest")
            else:
                if reference is not None:
                    ax.scatter(*_xy(reference).T, s=0.5, color="0.75", rasterized=True)
                outside = _scatter_inside(ax, points(x), limits)
                if outside:
                    any_outside = True
                    ax.text(0.98, 0.97, f"{outside}/{len(x)} outside", transform=ax.transAxes, ha="right", va="top",
                            fontsize=7, color="tab:red", bbox=_LABEL_BOX)  # fmt: skip
            ax.text(0.03, 0.03, f"{r['nfe']:.3g}", transform=ax.transAxes, fontsize=8, color="tab:red", bbox=_LABEL_BOX)
    note = ""
    if not image and math.prod(shape) > 2:
        note = "; leading principal axes of the exact distribution" if basis is not None else "; first two coordinates"
    if any_outside:
        note += "; red x: samples outside the axes, drawn on its edge"
    title = f"{model}: samples per sampler and budget (red number: measured NFE{note})"
    fig.suptitle("\n".join(textwrap.wrap(title, max(40, int(fig.get_figwidth() * 11)))), fontsize=9)
    save_figure(fig, path, dpi=90, bbox_inches="tight")
    return True


_LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.75, "edgecolor": "none"}


def _scatter_inside(ax, pts: np.ndarray, limits) -> int:
    """Scatter points within the axes' limits, and those outside as red x on the nearest edge; returns how many
    were outside."""
    (x0, x1), (y0, y1) = limits
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    finite = np.isfinite(pts).all(axis=1)
    pts = pts[finite]
    inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
    ax.scatter(*pts[inside].T, s=0.5, color="tab:blue", rasterized=True)
    out = pts[~inside]
    if len(out):
        edge = np.column_stack([np.clip(out[:, 0], x0, x1), np.clip(out[:, 1], y0, y1)])
        ax.scatter(*edge.T, s=10, marker="x", color="tab:red", linewidths=0.6, clip_on=False, zorder=4)
    return int(len(out) + (~finite).sum())


# --- the report -------------------------------------------------------------------------------------------------


def write_report(run_dir: Path | str, warn=None) -> Path:
    """Every table and plot of a run directory, and report.md linking them; returns the path of report.md.

    Each file is written whole (bench.files): an interrupted report leaves earlier files as they were. A model with
    no ok cell, or a metric with no value, gets what exists and a line saying what is missing. Comparisons that mix
    protocols (bench.protocol) are warned about in report.md and through `warn` (default: a line on stderr)."""
    run_dir = Path(run_dir)
    suite = json.loads((run_dir / "suite.json").read_text()) if (run_dir / "suite.json").exists() else {}
    records = in_suite_order(read_records(run_dir), suite)
    frame = records_frame(records)
    (run_dir / "tables").mkdir(exist_ok=True)
    (run_dir / "plots").mkdir(exist_ok=True)
    lines = [f"# {suite.get('name', run_dir.name)}", ""]
    if suite.get("description"):
        lines += [suite["description"], ""]
    lines += _run_summary(run_dir, frame)
    if frame.empty:
        return write_text(run_dir / "report.md", "\n".join(lines + ["No finished cells yet."]) + "\n")
    write_text(run_dir / "tables" / "records.csv", _flat(frame).to_csv(index=False))

    model_info = {m["name"]: m for m in suite.get("models", [])}
    models = list(dict.fromkeys([*model_info, *frame["model"]]))
    models = [m for m in models if m in set(frame["model"])]
    metrics = {m: list(model_info.get(m, {}).get("metrics") or _metric_columns(frame, records, m)) for m in models}
    samplers = list(dict.fromkeys(frame["sampler"]))
    algorithms = dict(zip(frame["sampler"], frame.get("algorithm", frame["sampler"]).fillna(frame["sampler"]),
                          strict=True))  # fmt: skip
    styles = sampler_styles(samplers, algorithms)
    order = _ordered(samplers, algorithms)

    warnings = protocol_warnings(frame, metrics)
    published = published_table(suite.get("published") or [], records)
    if not published.empty and "count_note" in published:
        mixed = published[published["count_note"] != ""]
        if not mixed.empty:
            warnings.append(
                f"warning: {len(mixed)} published number(s) come from another sample count than the measured ones "
                f"({'; '.join(dict.fromkeys(mixed['count_note']))}): FD is biased upwards at small n, so these pairs "
                "are not comparable"
            )
    for line in warnings:
        (warn or _stderr)(line)
    if warnings:
        lines += [f"**{line}**" for line in warnings] + [""]
    best = best_table(frame, metrics)
    if not best.empty:
        write_text(run_dir / "tables" / "best.csv", best.to_csv(index=False))
        write_text(run_dir / "tables" / "best.md", _markdown(best, index=False) + "\n")

    for model in models:
        name = slug(model)
        lines += [f"## {model}", ""]
        long = frame[frame["model"] == model]
        ok = long[long["status"] == "ok"]
        lines += _missing(long, ok, metrics[model])
        labels = metric_labels(frame, model, metrics[model])
        if plot_nfe(frame, model, metrics[model], styles, order, run_dir / "plots" / f"{name}-nfe.png", labels):
            lines += [f"![{model}: metrics vs NFE](plots/{name}-nfe.png)", ""]
        sections = []
        values = [c for m in metrics[model] for c in (m, *(m + s for s in (*INTERVAL_SUFFIXES, "_floor", "_mean")))]
        timing = ("ms_per_sample", "wall_s", "loaded", "jobs", "threads", "load_before", "load_after", "cpu_count")
        cols = [c for c in ("sampler", "nfe_budget", "nfe", "status", *values, *timing) if c in long]
        write_text(run_dir / "tables" / f"{name}.csv", long[cols].to_csv(index=False))
        for metric in metrics[model]:
            if metric in frame:
                table = metric_table(frame, model, metric, order)
                sections += [f"### {labels[metric]} @ measured NFE", "", *_sets_note(ok, metric), _markdown(table), ""]
        if not best.empty and model in set(best["model"]):
            b = best[best["model"] == model].drop(columns="model")
            sections += ["### best sampler per NFE budget", "", _markdown(b, index=False), ""]
        write_text(run_dir / "tables" / f"{name}.md", "\n".join(sections))
        lines += sections
        ranked = [m for m in metrics[model] if is_score(m)]
        pareto = run_dir / "plots" / f"{name}-pareto.png"
        if ranked and plot_pareto(frame, model, ranked[0], styles, order, pareto, labels.get(ranked[0])):
            lines += [f"![{model}: Pareto front](plots/{name}-pareto.png)", ""]
        (run_dir / "grids").mkdir(exist_ok=True)
        if plot_grids(run_dir, frame, model, order, model_info.get(model, {}), run_dir / "grids" / f"{name}.png"):
            lines += [f"Samples of every sampler at each budget: [grids/{name}.png](grids/{name}.png)", ""]

    if not published.empty:
        published = published.drop(columns="count_note")
        write_text(run_dir / "tables" / "published.csv", published.to_csv(index=False))
        write_text(run_dir / "tables" / "published.md", _markdown(published, index=False) + "\n")
        lines += [
            "## Published and measured",
            "",
            "Each published number beside this run's cell of the same model and sampler at the nearest measured NFE, "
            "each labelled with the samples behind it (`published n`, `n`): a FID from fewer samples than the "
            "paper's is biased upwards and is not the paper's number.",
            "",
            _markdown(published, index=False),
            "",
        ]

    failed = frame[frame["status"] != "ok"]
    if not failed.empty:
        cols = [c for c in ("model", "sampler", "nfe_budget", "status", "error") if c in failed]
        lines += ["## Cells that did not finish ok", "", _markdown(failed[cols], index=False), ""]
    return write_text(run_dir / "report.md", "\n".join(lines))


def _missing(cells: pd.DataFrame, ok: pd.DataFrame, metrics: list[str]) -> list[str]:
    """Lines saying what a model's section lacks: cells that did not finish ok, metrics without a value."""
    if ok.empty:
        counts = ", ".join(f"{n} {status}" for status, n in cells["status"].value_counts().items())
        return [
            f"No cell of this model finished ok ({counts}): there are no plots or rankings of it, only its cells "
            "below and in 'Cells that did not finish ok'.",
            "",
        ]
    lines = []
    bad = len(cells) - len(ok)
    if bad:
        lines.append(f"{bad} of {len(cells)} cells did not finish ok (listed at the end); they are missing below.")
    empty = [m for m in metrics if m not in ok or ok[m].isna().all()]
    if empty:
        lines.append(f"No value of {', '.join(empty)} in any ok cell.")
    return [*lines, ""] if lines else []


def published_table(published: list[dict[str, Any]], records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per published number: the paper's value (with its sample count when the suite gives it) and this
    run's cell of the same model and sampler at the nearest measured NFE (missing when the run has none);
    `count_note` says where the two counts differ."""
    rows = []
    for p in published:
        cells = [
            r for r in records if r["model"] == p["model"] and r["sampler"] == p["sampler"] and r["status"] == "ok"
        ]
        best = min(cells, key=lambda r: (abs(math.log(max(r["nfe"], 1e-9) / p["nfe"])), -r["nfe"]), default=None)
        value = None if best is None else (best.get("metrics") or {}).get(p["metric"])
        measured = None if best is None else protocol_of(best, p["metric"])
        note = ""
        if p.get("n") and measured is not None and measured.n is not None and measured.n != p["n"]:
            note = f"{metric_label(p['metric'], p['n'])} vs {metric_label(p['metric'], measured.n)}"
        rows.append(
            {
                "model": p["model"],
                "sampler": p["sampler"],
                "metric": p["metric"],
                "published": p["value"],
                "published n": count_text(p["n"]) if p.get("n") else "",
                "published NFE": p["nfe"],
                "measured": value,
                "measured NFE": None if best is None else round(best["nfe"], 2),
                "n": None if measured is None else measured.label,
                "preset": p.get("preset") or "",
                "source": p["source"] + (f" ({p['note']})" if p.get("note") else ""),
                "count_note": note,
            }
        )
    return pd.DataFrame(rows)


def _sets_note(ok: pd.DataFrame, metric: str) -> list[str]:
    """The line under a metric's heading when its values are the best of several seed sets (EDM's protocol)."""
    if "seed_sets" not in ok or ok.empty or metric not in ok:
        return []
    sets = int(ok["seed_sets"].fillna(1).max())
    if sets <= 1:
        return []
    m = METRICS.get(metric)
    which = {"lower": "minimum", "higher": "maximum"}.get(m.direction if m else "", "best")
    return [
        f"Each value is the {which} over {sets} disjoint seed sets (EDM's protocol); the mean over the sets is in "
        "parentheses.",
        "",
    ]


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with dict and list cells (reference, seed ranges) as JSON text, for CSV."""
    out = frame.copy()
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, dict | list)).any():
            out[column] = out[column].map(lambda v: json.dumps(v) if isinstance(v, dict | list) else v)
    return out


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def _metric_columns(frame: pd.DataFrame, records: list[dict[str, Any]], model: str) -> list[str]:
    names = [k for r in records if r["model"] == model for k in (r.get("metrics") or {}) if is_score(k)]
    return list(dict.fromkeys(names))


def _run_summary(run_dir: Path, frame: pd.DataFrame) -> list[str]:
    env_file = run_dir / "env.json"
    envs = json.loads(env_file.read_text()) if env_file.exists() else []
    env = envs[-1] if envs else {}
    git = env.get("git") or {}
    parts = [
        f"{len(frame)} cells",
        f"device {env.get('device', '?')}" + (f" ({env['cuda']['name']})" if env.get("cuda") else ""),
        f"{env.get('world_size', 1)} process(es)",
        f"torch {env.get('versions', {}).get('torch', '?')}",
    ]
    if git:
        parts.append(f"commit {git['commit'][:10]}{' (modified)' if git.get('dirty') else ''}")
    if not frame.empty and "wall_s" in frame:
        parts.append(f"sampling time {frame['wall_s'].sum():.1f} s")
    busy = frame[frame["loaded"]] if "loaded" in frame else frame.iloc[:0]
    load_note = []
    if not busy.empty:
        cores = busy["cpu_count"].max()
        peak = busy[["load_before", "load_after"]].max(axis=1).max()
        load_note = [
            f"Timings: {len(busy)} of {len(frame)} cells ran while the machine's load average (up to {peak:.1f}) "
            f"exceeded its {cores:.0f} cores; their wall-clock is noise (hatched in the Pareto plots, `loaded` in "
            "the tables).",
            "",
        ]
    shared = frame[frame["concurrent"]] if "concurrent" in frame else frame.iloc[:0]
    if not shared.empty:
        load_note += [
            f"Timings: {len(shared)} of {len(frame)} cells ran {int(shared['jobs'].max())} at a time (`--jobs`), "
            "so their wall-clock includes sharing the cores with the run's other cells (`N jobs` in the best-sampler "
            "tables, `jobs` in tables/*.csv); for timings alone, run with --jobs 1.",
            "",
        ]
    return [
        "Values are `metric @measured NFE` (NFE per sample, counted, never the budget); wall-clock excludes warm-up.",
        "",
        "Run: " + ", ".join(parts) + ".",
        "",
        *load_note,
    ]
