"""`scorebench report RUN_DIR`: tables (CSV + Markdown) and plots (PNG) of a run directory's records."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write the tables and plots of a run directory",
        description="Write RUN_DIR/tables (metric vs measured NFE per model and sampler, best sampler per budget; "
        "CSV and Markdown), RUN_DIR/plots (metric vs NFE, metric vs wall-clock Pareto front), RUN_DIR/grids (samples "
        "per sampler at each budget) and RUN_DIR/report.md. Works on a run that is still going or was interrupted.",
    )
    p.add_argument("run_dir", type=Path, help="a run directory written by `scorebench run`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .report import write_report

    if not args.run_dir.is_dir():
        raise ValueError(f"{args.run_dir} is not a directory")
    path = write_report(args.run_dir)
    print(f"report: {path}")
    return 0
