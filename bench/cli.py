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
    "bench.cmd_convert",
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


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The load options of upstream checkpoint specs (score_sde:, ncsnv2:, ddim:, edm:)."""
    parser.add_argument(
        "--config",
        default=None,
        help="upstream checkpoints: a published config name or a config file (default: the "
        "config beside the checkpoint)",
    )
    parser.add_argument(
        "--raw-weights", action="store_true", help="upstream checkpoints: the raw training weights, not the EMA ones"
    )
    parser.add_argument("--class-labels", type=int, default=None, help="EDM: the class of a conditional network")


def model_options(args: argparse.Namespace, spec: str) -> dict:
    """load_model's options for `spec` from add_model_options' flags; ValueError for a flag the spec does not take."""
    from models.upstream import split_spec

    given = {"config": args.config, "ema": False if args.raw_weights else None, "class_labels": args.class_labels}
    given = {k: v for k, v in given.items() if v is not None}
    found = split_spec(spec)
    accepted = found[0].options if found is not None else ()
    for key in given:
        if key not in accepted:
            flag = "--raw-weights" if key == "ema" else f"--{key.replace('_', '-')}"
            kind = f"a {found[0].prefix} checkpoint" if found is not None else f"model {spec!r}"
            raise ValueError(f"{flag} does not apply to {kind}")
    return given


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
