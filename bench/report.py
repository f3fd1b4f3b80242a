"""Tables (pandas: CSV + Markdown) and plots (matplotlib, PNG) of a run directory's records.

Written into the run directory:
- `tables/records.csv`: every record, one row per cell, metrics and sampler accounting as columns;
- `tables/<model>.csv`, `.md`: every metric against measured NFE, one row per sampler, one column per NFE budget
  (with its 95% interval `[lo, hi]` when the run had `bootstrap`);
- `tables/best.csv`, `.md`: the best sampler per model, metric and NFE budget;
- `plots/<model>-nfe.png`: each metric against measured NFE (log axis), one line per sampler, DLG variants dashed in
  the colour of the integrator they hand off to, intervals as error bars; `plots/<model>-pareto.png`: the first
  metric against ms per sample with its Pareto front;
- `grids/<model>.png`: the kept samples of each sampler (rows) at each budget (columns): image grids, or scatters of
  vector data over exact samples of the model when it has them;
- `report.md`: all of the above on one page.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .runner import read_records, slug

__all__ = ["records_frame", "metric_table", "best_table", "write_report", "lower_is_better", "is_score"]

DLG_PREFIX = "dlg+"
# metrics where larger is better; every other metric (FID, KID, FD, TV distances...) is a distance
HIGHER_IS_BETTER_PREFIXES = ("precision", "recall", "density", "coverage", "isc", "inception_score")


# keys of a record's metrics that are not scores: sample counts, and the interval bounds <name>_lo / <name>_hi
COUNT_KEYS = ("n", "n_ref")
INTERVAL_SUFFIXES = ("_lo", "_hi")


def lower_is_better(metric: str) -> bool:
    return not metric.startswith(HIGHER_IS_BETTER_PREFIXES)


def is_score(key: str) -> bool:
    """Whether a key of a record's metrics is a metric value (not a sample count or an interval bound)."""
    return key not in COUNT_KEYS and not key.endswith(INTERVAL_SUFFIXES)


def _interval(r: pd.Series | dict, metric: str) -> tuple[float, float] | None:
    lo, hi = r.get(f"{metric}_lo"), r.get(f"{metric}_hi")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return None
    return float(lo), float(hi)


# --- tables -----------------------------------------------------------------------------------------------------


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record: its fields, then one column per metric and per sampler extra (e.g. DLG's burn-in NFE)."""
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("metrics", "extras", "hyper")}
        row["hyper"] = json.dumps(r.get("hyper", {}), sort_keys=True)
        row.update(r.get("extras") or {})
        row.update(r.get("metrics") or {})
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def metric_table(frame: pd.DataFrame, model: str, metric: str, order: list[str] | None = None) -> pd.DataFrame:
    """Rows: samplers (in `order`, default suite order); columns: NFE budgets; cells: 'value @measured NFE' (with
    '[lo, hi]', its interval, when there is one), or the status of a cell that did not finish ok."""
    df = frame[frame["model"] == model]
    order = [s for s in order or df["sampler"] if s in set(df["sampler"])]
    order = list(dict.fromkeys(order))

    def cell(r: pd.Series) -> str:
        if r["status"] != "ok":
            return r["status"]
        value = r.get(metric)
        if value is None or pd.isna(value):
            return "-"
        interval = _interval(r, metric)
        shown = _fmt(value) if interval is None else f"{_fmt(value)} [{_fmt(interval[0])}, {_fmt(interval[1])}]"
        return f"{shown} @{r['nfe']:.3g}"

    shown = df.assign(cell=df.apply(cell, axis=1))
    table = shown.pivot(index="sampler", columns="nfe_budget", values="cell").reindex(order)
    table.columns = [f"NFE<={b}" for b in table.columns]
    return table.fillna("")


def best_table(frame: pd.DataFrame, metrics: dict[str, list[str]]) -> pd.DataFrame:
    """The best sampler (among ok cells) per model, metric and NFE budget, with its measured NFE and speed."""
    rows = []
    ok = frame[frame["status"] == "ok"]
    for model, names in metrics.items():
        for metric in names:
            df = ok[(ok["model"] == model)]
            if metric not in df or df[metric].isna().all():
                continue
            df = df.dropna(subset=[metric])
            for budget, group in df.groupby("nfe_budget"):
                best = group.loc[group[metric].idxmin() if lower_is_better(metric) else group[metric].idxmax()]
                rows.append(
                    {
                        "model": model,
                        "metric": metric,
                        "nfe_budget": int(budget),
                        "best_sampler": best["sampler"],
                        "value": best[metric],
                        "nfe": best["nfe"],
                        "ms_per_sample": best["ms_per_sample"],
                        "runner_up": _runner_up(group, metric, best["sampler"]),
                    }
                )
    return pd.DataFrame(rows)


def _runner_up(group: pd.DataFrame, metric: str, best: str) -> str:
    rest = group[group["sampler"] != best].sort_values(metric, ascending=lower_is_better(metric))
    if rest.empty:
        return ""
    r = rest.iloc[0]
    return f"{r['sampler']} ({_fmt(r[metric])})"


def _markdown(df: pd.DataFrame, index: bool = True) -> str:
    return df.to_markdown(index=index, floatfmt=".4g")


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
    if len(values) and (values > 0).all():
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def plot_nfe(frame: pd.DataFrame, model: str, metrics: list[str], styles, order, path: Path) -> bool:
    df = frame[(frame["model"] == model) & (frame["status"] == "ok")]
    metrics = [m for m in metrics if m in df and df[m].notna().any()]
    if df.empty or not metrics:
        return False
    fig = Figure(figsize=(5.0 * len(metrics), 4.0))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    fig.subplots_adjust(wspace=0.3)
    for ax, metric in zip(axes, metrics, strict=True):
        for s in order:
            d = df[df["sampler"] == s].dropna(subset=[metric]).sort_values("nfe")
            if d.empty:
                continue
            bounds = [_interval(r, metric) for _, r in d.iterrows()]
            if any(b is not None for b in bounds):  # error bars from the interval; none where a cell lacks one
                below = [max(0.0, v - b[0]) if b else 0.0 for v, b in zip(d[metric], bounds, strict=True)]
                above = [max(0.0, b[1] - v) if b else 0.0 for v, b in zip(d[metric], bounds, strict=True)]
                ax.errorbar(d["nfe"], d[metric], yerr=[below, above], capsize=2, label=s, **styles[s])
            else:
                ax.plot(d["nfe"], d[metric], label=s, **styles[s])
        _log_x(ax)
        _log_if_positive(ax, df[metric].dropna())
        ax.set_xlabel("measured NFE per sample")
        ax.set_ylabel(metric + (" (lower is better)" if lower_is_better(metric) else " (higher is better)"))
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{model}: sample quality vs NFE")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return True


def plot_pareto(frame: pd.DataFrame, model: str, metric: str, styles, order, path: Path) -> bool:
    df = frame[(frame["model"] == model) & (frame["status"] == "ok")].dropna(subset=[metric, "ms_per_sample"])
    if df.empty:
        return False
    fig = Figure(figsize=(6.5, 4.4))
    ax = fig.subplots()
    for s in order:
        d = df[df["sampler"] == s]
        if not d.empty:
            st = styles[s]
            ax.scatter(
                d["ms_per_sample"], d[metric], label=s, color=st["color"], marker="o" if st["linestyle"] == "-" else "s"
            )
    # Pareto front: the cells no other cell beats in both speed and quality
    sign = 1 if lower_is_better(metric) else -1
    front, best = [], math.inf
    for _, r in df.sort_values(["ms_per_sample", metric]).iterrows():
        if sign * r[metric] < best:
            best = sign * r[metric]
            front.append(r)
    fx, fy = [r["ms_per_sample"] for r in front], [r[metric] for r in front]
    ax.step(fx, fy, where="post", color="black", linewidth=1, alpha=0.6, label="Pareto front")
    for r in front:
        ax.annotate(f"{r['sampler']}@{r['nfe']:.0f}", (r["ms_per_sample"], r[metric]), fontsize=6, alpha=0.8)
    _log_x(ax)
    _log_if_positive(ax, df[metric])
    ax.set_xlabel("wall-clock per sample [ms] (sampling only)")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{model}: {metric} vs wall-clock")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
    fig = Figure(figsize=(size * len(budgets) + 1.2, size * len(rows) + 0.6))
    axes = fig.subplots(len(rows), len(budgets), squeeze=False)
    height = fig.get_figheight()
    fig.subplots_adjust(left=1.1 / fig.get_figwidth(), right=0.99, bottom=0.01, top=1 - 0.6 / height, hspace=0.08)
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
                ax.scatter(*points(x).T, s=0.5, color="tab:blue", rasterized=True)
                ax.set_xlim(limits[0])
                ax.set_ylim(limits[1])
            ax.text(0.02, 0.02, f"{r['nfe']:.3g}", transform=ax.transAxes, fontsize=6, color="tab:red")
    note = ""
    if not image and math.prod(shape) > 2:
        note = ", leading principal axes of the exact distribution" if basis is not None else ", first two coordinates"
    fig.suptitle(f"{model}: samples per sampler and budget (red: measured NFE{note})", fontsize=9, y=1 - 0.12 / height)
    fig.savefig(path, dpi=90)
    return True


# --- the report -------------------------------------------------------------------------------------------------


def write_report(run_dir: Path | str) -> Path:
    """Every table and plot of a run directory, and report.md linking them; returns the path of report.md."""
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    suite = json.loads((run_dir / "suite.json").read_text()) if (run_dir / "suite.json").exists() else {}
    frame = records_frame(records)
    (run_dir / "tables").mkdir(exist_ok=True)
    (run_dir / "plots").mkdir(exist_ok=True)
    lines = [f"# {suite.get('name', run_dir.name)}", ""]
    if suite.get("description"):
        lines += [suite["description"], ""]
    lines += _run_summary(run_dir, frame)
    if frame.empty:
        (run_dir / "report.md").write_text("\n".join(lines + ["No finished cells yet."]) + "\n")
        return run_dir / "report.md"
    frame.to_csv(run_dir / "tables" / "records.csv", index=False)

    model_info = {m["name"]: m for m in suite.get("models", [])}
    models = list(dict.fromkeys([*model_info, *frame["model"]]))
    models = [m for m in models if m in set(frame["model"])]
    metrics = {m: list(model_info.get(m, {}).get("metrics") or _metric_columns(frame, records, m)) for m in models}
    samplers = list(dict.fromkeys(frame["sampler"]))
    algorithms = dict(zip(frame["sampler"], frame.get("algorithm", frame["sampler"]), strict=True))
    styles = sampler_styles(samplers, algorithms)
    order = _ordered(samplers, algorithms)

    best = best_table(frame, metrics)
    if not best.empty:
        best.to_csv(run_dir / "tables" / "best.csv", index=False)
        (run_dir / "tables" / "best.md").write_text(_markdown(best, index=False) + "\n")

    for model in models:
        name = slug(model)
        lines += [f"## {model}", ""]
        if plot_nfe(frame, model, metrics[model], styles, order, run_dir / "plots" / f"{name}-nfe.png"):
            lines += [f"![{model}: metrics vs NFE](plots/{name}-nfe.png)", ""]
        sections = []
        long = frame[frame["model"] == model]
        values = [c for m in metrics[model] for c in (m, *(m + s for s in INTERVAL_SUFFIXES))]
        cols = [c for c in ("sampler", "nfe_budget", "nfe", "status", *values, "ms_per_sample", "wall_s") if c in long]
        long[cols].to_csv(run_dir / "tables" / f"{name}.csv", index=False)
        for metric in metrics[model]:
            if metric in frame:
                table = metric_table(frame, model, metric, order)
                sections += [f"### {metric} @ measured NFE", "", _markdown(table), ""]
        if not best.empty and model in set(best["model"]):
            b = best[best["model"] == model].drop(columns="model")
            sections += ["### best sampler per NFE budget", "", _markdown(b, index=False), ""]
        (run_dir / "tables" / f"{name}.md").write_text("\n".join(sections))
        lines += sections
        if metrics[model] and plot_pareto(
            frame, model, metrics[model][0], styles, order, run_dir / "plots" / f"{name}-pareto.png"
        ):
            lines += [f"![{model}: Pareto front](plots/{name}-pareto.png)", ""]
        (run_dir / "grids").mkdir(exist_ok=True)
        if plot_grids(run_dir, frame, model, order, model_info.get(model, {}), run_dir / "grids" / f"{name}.png"):
            lines += [f"Samples of every sampler at each budget: [grids/{name}.png](grids/{name}.png)", ""]

    published = published_table(suite.get("published") or [], records)
    if not published.empty:
        published.to_csv(run_dir / "tables" / "published.csv", index=False)
        (run_dir / "tables" / "published.md").write_text(_markdown(published, index=False) + "\n")
        lines += [
            "## Published and measured",
            "",
            "Each published number beside this run's cell of the same model and sampler at the nearest measured NFE "
            "(`n`: samples behind the measured value; a metric from fewer samples than the paper's is biased).",
            "",
            _markdown(published, index=False),
            "",
        ]

    failed = frame[frame["status"] != "ok"]
    if not failed.empty:
        cols = [c for c in ("model", "sampler", "nfe_budget", "status", "error") if c in failed]
        lines += ["## Cells that did not finish ok", "", _markdown(failed[cols], index=False), ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return run_dir / "report.md"


def published_table(published: list[dict[str, Any]], records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per published number: the paper's value and this run's cell of the same model and sampler at the
    nearest measured NFE (missing when the run has none)."""
    rows = []
    for p in published:
        cells = [
            r for r in records if r["model"] == p["model"] and r["sampler"] == p["sampler"] and r["status"] == "ok"
        ]
        best = min(cells, key=lambda r: (abs(math.log(max(r["nfe"], 1e-9) / p["nfe"])), -r["nfe"]), default=None)
        value = None if best is None else (best.get("metrics") or {}).get(p["metric"])
        rows.append(
            {
                "model": p["model"],
                "sampler": p["sampler"],
                "metric": p["metric"],
                "published": p["value"],
                "published NFE": p["nfe"],
                "measured": value,
                "measured NFE": None if best is None else round(best["nfe"], 2),
                "n": None if best is None else best.get("n"),
                "preset": p.get("preset") or "",
                "source": p["source"] + (f" ({p['note']})" if p.get("note") else ""),
            }
        )
    return pd.DataFrame(rows)


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
    return [
        "Values are `metric @measured NFE` (NFE per sample, counted, never the budget); wall-clock excludes warm-up.",
        "",
        "Run: " + ", ".join(parts) + ".",
        "",
    ]
