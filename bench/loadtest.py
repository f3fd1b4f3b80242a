"""The main job's wall time on this machine: `scorebench run quick` with --jobs 1, with the default jobs, and with the
default jobs beside one competing busy process (a Python busy loop on one core).

    python -m bench.loadtest [--suite quick] [--json results/benchmarks/quick_under_load.json]

Each run starts afresh in a temporary run directory (no report). The JSON holds, per run, the wall seconds, the
machine's 1-minute load average before and after, and the jobs and threads the run chose (its env.json); plus the
two ratios the harness aims at: default jobs vs --jobs 1 when idle (>= 1.5x on 2 cores) and loaded vs idle (<= 2.5x).
The load average counts every process on the machine, so a machine shared with other work shows it here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .files import write_json
from .threads import machine_load, usable_cores

DEFAULT_JSON = Path("results/benchmarks/quick_under_load.json")
BUSY_LOOP = "while True:\n    pass\n"


def timed_run(suite: str, out: Path, extra: list[str], busy: bool = False) -> dict[str, Any]:
    """One `scorebench run SUITE --out OUT --no-report EXTRA` (beside a busy loop if `busy`): its wall seconds,
    the load average before and after, and the parallelism it chose."""
    neighbour = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        if neighbour is not None:
            time.sleep(2.0)  # the neighbour is running before the run starts
        before = machine_load()
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "bench", "run", suite, "--out", str(out), "--no-report", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seconds = time.perf_counter() - start
        after = machine_load()
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    env = json.loads((out / "env.json").read_text())[-1]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    return {
        "command": "scorebench " + " ".join(cmd[3:]),
        "competing_busy_process": busy,
        "wall_s": round(seconds, 1),
        "load_before": before,
        "load_after": after,
        "parallelism": env.get("parallelism"),
        "cells": len(records),
        "cells_ok": sum(r.get("status") == "ok" for r in records),
        "sampling_s": round(sum(r.get("wall_s") or 0.0 for r in records), 1),
    }


def _result(args: argparse.Namespace, runs: dict[str, Any]) -> dict[str, Any]:
    result = {
        "about": "wall time of `scorebench run SUITE` (fresh run, no report): --jobs 1, the default jobs, and the "
        "default beside one busy-loop process; load = the machine's 1-minute load average before/after each run",
        "command": "python -m bench.loadtest" + ("" if args.suite == "quick" else f" --suite {args.suite}"),
        "suite": args.suite,
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "runs": runs,
    }
    if "idle_jobs1" in runs:
        result["speedup_default_vs_jobs1_idle"] = round(
            runs["idle_jobs1"]["wall_s"] / runs["idle_default"]["wall_s"], 2
        )
    if "busy_default" in runs:
        result["slowdown_busy_vs_idle_default"] = round(
            runs["busy_default"]["wall_s"] / runs["idle_default"]["wall_s"], 2
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick", help="a shipped suite or suite file (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra, busy in (  # the default first; the JSON is written after every run
            ("idle_default", [], False),
            ("busy_default", [], True),
            ("idle_jobs1", ["--jobs", "1"], False),
        ):
            runs[name] = timed_run(args.suite, Path(tmp) / name, extra, busy)
            print(
                f"{name:13s} {runs[name]['wall_s']:7.1f} s  load {runs[name]['load_before']} -> "
                f"{runs[name]['load_after']}  {runs[name]['parallelism']['reason']}",
                flush=True,
            )
            write_json(args.json, _result(args, runs), indent=1)
    result = _result(args, runs)
    print(
        f"default jobs vs --jobs 1: {result['speedup_default_vs_jobs1_idle']}x faster; beside a busy process: "
        f"{result['slowdown_busy_vs_idle_default']}x the default's time; written to {args.json}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
