"""`scorebench compare RUN_A RUN_B`: per-cell differences; exit 1 when a cell got worse beyond the tolerances."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checks import nonneg_float


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two runs cell by cell; exit 1 on a quality or speed regression",
        description="Compare every cell (model, sampler, NFE budget) of the baseline RUN_A with RUN_B: each metric "
        "(in its own direction), ms per sample and measured NFE; metrics measured under different protocols (sample "
        "count, seed sets, reference) are not compared, with a warning. Exit status 1 when a cell of A is missing "
        "from B, stopped being ok, or got worse than the tolerances allow; 0 otherwise.",
    )
    p.add_argument("run_a", type=Path, help="baseline run directory")
    p.add_argument("run_b", type=Path, help="run directory to check against it")
    p.add_argument(
        "--metric-tol", type=nonneg_float, default=0.05, help="allowed relative worsening of a metric (default 0.05)"
    )
    p.add_argument(
        "--metric-atol",
        type=nonneg_float,
        default=0.0,
        help="allowed absolute worsening on top of --metric-tol (default 0)",
    )
    p.add_argument(
        "--speed-tol", type=nonneg_float, default=0.25, help="allowed relative growth of ms per sample (default 0.25)"
    )
    p.add_argument("--no-speed", action="store_true", help="do not check speed (runs from different machines)")
    p.add_argument("--all", action="store_true", help="print every compared quantity, not only the regressions")
    p.add_argument("--csv", type=Path, help="also write the full comparison to this CSV file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .checks import writable_file
    from .compare import Tolerances, compare_runs
    from .files import write_text

    if args.csv:
        writable_file(args.csv, "--csv")  # before the comparison, not after
    tol = Tolerances(args.metric_tol, args.metric_atol, None if args.no_speed else args.speed_tol)
    table = compare_runs(args.run_a, args.run_b, tol)
    for line in table.attrs.get("warnings", []):
        print(line, file=sys.stderr)
    if args.csv:
        write_text(args.csv, table.to_csv(index=False))
    if table.empty:
        print("no cells to compare")
        return 0
    shown = table if args.all else table[table["worse"] | (table["note"] != "")]
    if not shown.empty:
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
    cells = table[["model", "sampler", "nfe_budget"]].drop_duplicates()
    speed = table[table["quantity"] == "ms_per_sample"]
    if not speed.empty:
        ratio = (speed["b"].astype(float) / speed["a"].astype(float)).median()
        print(f"ms per sample, B / A: median {ratio:.3g} over {len(speed)} cells")
    worse = table[table["worse"]]
    if worse.empty:
        print(f"ok: {len(cells)} cells, no regression beyond the tolerances")
        return 0
    bad = worse[["model", "sampler", "nfe_budget"]].drop_duplicates()
    print(f"REGRESSION: {len(bad)} of {len(cells)} cells got worse ({', '.join(sorted(set(worse['quantity'])))})")
    return 1
