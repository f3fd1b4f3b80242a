"""The `scorebench` command line. Each sub-command lives in its own module with `register(subparsers)`.

Nothing is imported at module level here or in the command modules beyond argparse and the standard library: torch
and the models load inside each command's `run`, so that `--help` and argument errors are instant. Every failure a
user can cause ends in one line on stderr and a non-zero exit: argument errors (2), bad input (ValueError, 2), a
file that cannot be read or written (OSError, 2) and Ctrl-C (130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .checks import check_device, nonneg_int, positive_int

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


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one `--help` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already names its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """`--threads N`: torch's CPU threads (a command calls set_threads(args) before its work)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for torch (default: torch's choice); on a busy machine --threads 1 is often much faster",
    )


def set_threads(args: argparse.Namespace) -> None:
    """Apply `--threads` (bench.threads.set_torch_threads); nothing when it is not given."""
    if args.threads is None:
        return
    from .threads import set_torch_threads

    set_torch_threads(args.threads)


def add_device_option(parser: argparse.ArgumentParser, default: str | None = "cpu", what: str = "") -> None:
    """`--device`: checked by `device(args)` against torch and this machine before any work."""
    shown = default if default is not None else what
    parser.add_argument("--device", default=default, help=f"cpu, cuda or cuda:N (default: {shown})")


def device(args: argparse.Namespace, fallback: str = "cpu") -> str:
    """The checked `--device` (ValueError in one line for an unknown or absent device)."""
    return check_device(args.device if args.device is not None else fallback)


def add_seed_option(parser: argparse.ArgumentParser, default: int = 0, help: str = "") -> None:
    parser.add_argument(
        "--seed", type=nonneg_int, default=default, help=help or f"a non-negative integer (default: {default})"
    )


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
    parser = Parser(
        prog="scorebench",
        description="Benchmark samplers of score-based and diffusion models: sweep samplers across NFE budgets and "
        "record sample quality and wall-clock.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _say(prefix: str, message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same problem: say it once
        print(f"{prefix}: {message}", file=sys.stderr)


def _os_error(err: OSError) -> str:
    what = err.strerror or str(err) or type(err).__name__
    return f"{what}: {err.filename}" if err.filename else what


def main(argv: list[str] | None = None) -> int:
    prog = "scorebench"
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as stop:  # --help (0) or an argument error, already said in one line (2)
            return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
        prog = f"scorebench {args.command}"
        return int(args.func(args) or 0)
    except ValueError as err:  # user input problems: one line, non-zero exit
        _say(f"{prog}: error", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        return 2
    except OSError as err:  # a file that cannot be read or written (read-only run directory, full disk, ...)
        _say(f"{prog}: error", _os_error(err))
        return 2
    except KeyboardInterrupt:  # Ctrl-C while importing, loading or writing: files are written whole, or not at all
        _say(prog, "interrupted")
        return 130
