"""`scorebench speed`: sampler overhead (sampler time / model-only time) and the speed regression gate."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from .checks import nonneg_float, nonneg_int, positive_float, positive_int, writable_file
from .cli import add_device_option
from .cli import device as checked_device
from .files import write_json

# bench.speed's defaults, repeated here so that --help needs no torch (tests/test_harness_defects.py checks them)
DEFAULT_BASELINE = Path("results/benchmarks/speed_baseline.json")
DEFAULT_TOLERANCE = 0.25
GATE_REPEATS, BASELINE_REPEATS = 11, 31

DESCRIPTION = """\
Time every sampler against a replay of its own model evaluations (same batch, same NFE; the denoiser's and, for
DLG, the noise-level classifier's), interleaved in one run, and report ratio = sampler time / model-only time and
overhead = the share of the sampler's time spent outside model evaluations. With a baseline (default:
results/benchmarks/speed_baseline.json when it exists), fail (exit 1) when a ratio exceeds the baseline's by more
than the tolerance or a measured NFE changed. Ratios, unlike seconds, carry over between runs of one machine;
record a baseline for your own checkpoints and device with --update-baseline.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speed",
        help="sampler overhead vs model-only time, and the speed regression gate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", nargs="+", default=["gmm-64d"], metavar="SPEC", help="model specs (default: gmm-64d)")
    p.add_argument("--samplers", nargs="+", metavar="NAME", help="samplers to time (default: every registered one)")
    p.add_argument("--nfe", type=positive_int, default=50, help="NFE budget per sample (default: 50)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="samples per batch (default: 256)")
    add_device_option(p)
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help=f"interleaved timed pairs per workload (default: {GATE_REPEATS}; with --update-baseline "
        f"{BASELINE_REPEATS}, so that a baseline carries less noise than the runs checked against it)",
    )
    p.add_argument(
        "--threads",
        type=nonneg_int,
        default=1,
        help="torch CPU threads (default: 1, the most reproducible; 0: torch's own)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help=f"baseline JSON to gate against or update (default: {DEFAULT_BASELINE} if it exists)",
    )
    p.add_argument(
        "--update-baseline",
        action="store_true",
        help="write the measured ratios into the baseline (refused while the machine's load average exceeds half its "
        "usable cores: a baseline measured beside other work would let regressions through)",
    )
    p.add_argument(
        "--force-update",
        action="store_true",
        help="update the baseline even on a loaded machine",
    )
    p.add_argument(
        "--tolerance",
        type=positive_float,
        default=DEFAULT_TOLERANCE,
        help=f"allowed relative increase of a ratio over its baseline (default: {DEFAULT_TOLERANCE})",
    )
    p.add_argument(
        "--max-overhead",
        type=nonneg_float,
        default=None,
        metavar="F",
        help="also fail when a sampler's overhead exceeds this fraction (e.g. 0.2)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the measured rows as JSON")
    p.set_defaults(func=run)


# a baseline is recorded only while the 1-minute load average is at most this share of the usable cores
BASELINE_MAX_LOAD = 0.5


def check_idle_for_baseline() -> None:
    """ValueError (one line) when the machine is visibly loaded: its load average over half its usable cores."""
    from .threads import machine_load, usable_cores

    load, cores = machine_load(), usable_cores()
    if load is not None and load > BASELINE_MAX_LOAD * cores:
        raise ValueError(
            f"the machine is loaded (load average {load:.2f} on {cores} usable cores, over {BASELINE_MAX_LOAD:g} x "
            "cores): not updating the baseline; rerun when it is idle, or pass --force-update"
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.speed import (
        check,
        environment,
        format_rows,
        format_verdicts,
        load_baseline,
        run_gate,
        save_baseline,
    )

    repeats = args.repeats if args.repeats is not None else (BASELINE_REPEATS if args.update_baseline else GATE_REPEATS)
    device = torch.device(checked_device(args))
    if args.json is not None:
        writable_file(args.json, "--json")  # before the timing, not after
    baseline_path = args.baseline or DEFAULT_BASELINE
    baseline = load_baseline(baseline_path)  # fail on a malformed file before the long part
    if args.baseline is not None and not baseline and not args.update_baseline:
        raise ValueError(f"baseline {args.baseline} does not exist (record one with --update-baseline)")
    if args.update_baseline and not args.force_update:
        check_idle_for_baseline()

    rows = run_gate(
        args.model,
        args.samplers,
        nfe=args.nfe,
        batch=args.batch_size,
        device=str(device),
        repeats=repeats,
        threads=args.threads or None,
        progress=sys.stderr.isatty(),
    )
    threads = f", {args.threads or torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""
    print(f"device {device}{threads}, {repeats} interleaved repeats")
    print(format_rows(rows))
    if args.json is not None:
        write_json(args.json, {"environment": environment(), "rows": [asdict(r) for r in rows]}, indent=1)

    failed = []
    if args.update_baseline:
        save_baseline(baseline_path, rows)
        print(f"\nbaseline updated: {baseline_path}")
    elif baseline:
        verdicts = check(rows, baseline, args.tolerance)
        print(f"\ngate against {baseline_path} (tolerance {args.tolerance:+.0%} on the ratio):")
        print(format_verdicts(verdicts, args.tolerance))
        failed += [f"{v.row.model}/{v.row.sampler}: {v.status}" for v in verdicts if v.failed]
    else:
        print(f"\nno baseline at {baseline_path}: nothing to gate against (record one with --update-baseline)")
    if args.max_overhead is not None:
        over = [r for r in rows if r.overhead > args.max_overhead]
        failed += [f"{r.model}/{r.sampler}: overhead {r.overhead:.1%} > {args.max_overhead:.0%}" for r in over]
    if failed:
        print("\nFAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0
