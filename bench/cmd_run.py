"""`scorebench run SUITE`: sweep a suite's samplers over its models and NFE budgets into a run directory."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .checks import nonneg_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="sweep a suite (samplers x models x NFE budgets) into a run directory",
        description="Run every (model, sampler, NFE budget) cell of a suite, appending one record per finished cell to "
        "OUT/records.jsonl, then write the report (tables and plots). The whole suite is checked before any work "
        "starts. Under `torchrun --nproc_per_node=N -m bench run SUITE` the samples of every cell are sharded across "
        "the N processes (gloo on CPU, nccl on CUDA) with the same samples and records as one process.",
        epilog="Shipped suites: " + ", ".join(_shipped()) + " (`scorebench list suites`).",
    )
    p.add_argument("suite", help="a shipped suite name (e.g. quick) or the path of a suite TOML file")
    p.add_argument("--out", type=Path, help="run directory (default: results/runs/<suite>-<timestamp>)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the suite's device, else cpu)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out (default: the latest run of this suite), skipping finished cells",
    )
    p.add_argument("--force", action="store_true", help="overwrite the run directory's earlier outputs")
    p.add_argument("--models", type=_names, help="comma-separated model names: run only these models of the suite")
    p.add_argument("--samplers", type=_names, help="comma-separated sampler names: run only these samplers")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads per job (default: 1 for small models such as the mixtures and 8x8 digits, else the "
        "usable cores shared among the jobs)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        help="cells sampled at once, each in its own worker process, on the CPU (default: the usable cores, at most "
        "one per cell; 1 on a GPU and under torchrun); records are the same as with --jobs 1, timings aside",
    )
    p.add_argument(
        "--reference",
        metavar="PATH",
        help="reference data for models whose metrics need some and whose suite entry names none (e.g. FID of a "
        "checkpoint): a folder of .png/.jpg images, an .npz of uint8 images, or stats:PATH, a file of reference "
        "statistics or features (EDM fid-refs or pytorch-fid mu/sigma, score_sde pool_3, an ADM reference batch)",
    )
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="torch-fidelity's Inception-v3 weights file for fid/kid/precision/recall (default: the suite's, else "
        "torch's hub cache, else downloaded)",
    )
    p.add_argument(
        "--bootstrap",
        type=nonneg_int,
        metavar="B",
        help="add a 95%% interval (<metric>_lo, <metric>_hi) to every metric from B random half-samples "
        "(default: the suite's, else 0: none)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the tables and plots at the end")
    p.add_argument(
        "--preset",
        default=None,
        help="run every sampler that has this preset with it: score_sde, ncsnv2, dmcmc, or upstream (each sampler its "
        "own upstream's algorithm: score_sde for em/rd/pc/pf_euler/rk45, ncsnv2 for ald, dmcmc for dlg+X)",
    )
    p.add_argument(
        "--yes-i-know",
        action="store_true",
        help="start even when the suite's memory or time estimate exceeds what this machine has (checked first)",
    )
    p.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _shipped() -> list[str]:
    from .suite import shipped_suites

    return list(shipped_suites())


def run(args: argparse.Namespace) -> int:
    from .runner import Interrupted, run_suite
    from .suite import load_suite

    suite = load_suite(args.suite).select(args.models, args.samplers)
    suite = suite.with_metric_options(args.reference, args.inception_weights, args.bootstrap)
    suite = suite.with_preset(args.preset)
    try:
        out = run_suite(
            suite,
            args.out,
            device=args.device,
            resume=args.resume,
            force=args.force,
            check_resources=not args.yes_i_know,
            jobs=args.jobs,
            threads=args.threads,
        )
    except Interrupted as stop:
        again = ["scorebench", "run", args.suite, "--out", str(stop.path), "--resume"]
        for flag in (
            "device",
            "models",
            "samplers",
            "threads",
            "jobs",
            "reference",
            "inception_weights",
            "bootstrap",
            "preset",
        ):
            value = getattr(args, flag)
            if value is not None:
                again += [f"--{flag.replace('_', '-')}", ",".join(value) if isinstance(value, list) else str(value)]
        print(f"{stop}; finish the run with: {shlex.join(again)}", file=sys.stderr)
        return 130
    if out is None:  # not rank 0 of a torchrun
        return 0
    if not args.no_report:
        from .report import write_report
        from .runner import locked

        with locked(out):  # no other run may start in the directory while its report is written
            write_report(out)
    print(f"run directory: {out}")
    return 0
