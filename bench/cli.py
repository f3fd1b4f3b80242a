"""The `scorebench` command line. Each sub-command lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# modules that each add one sub-command: register(subparsers) sets `func(args) -> int` as the handler
COMMAND_MODULES = (
    "bench.cmd_list",
    "bench.cmd_run",
    "bench.cmd_report",
    "bench.cmd_compare",
    "bench.cmd_sample",
    "bench.cmd_train",
    "bench.cmd_speed",
)


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """`--threads N`: torch's CPU threads (a command calls set_threads(args) before its work)."""
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice); on a busy machine --threads 1 is often much faster",
    )


def set_threads(args: argparse.Namespace) -> None:
    if args.threads is None:
        return
    if args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorebench",
        description="Benchmark samplers of score-based and diffusion models: sweep samplers across NFE budgets and "
        "record sample quality and wall-clock.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # user input problems: one line, non-zero exit
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same problem: say it once
            print(f"scorebench {args.command}: error: {err}", file=sys.stderr)
        return 2
