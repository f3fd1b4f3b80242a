"""`scorebench list`: the models and samplers this installation knows, one line each."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="list built-in models, registered samplers and shipped suites",
        description="List built-in models, registered samplers and shipped suites with a one-line description each.",
    )
    p.add_argument(
        "what",
        nargs="?",
        choices=("models", "formats", "configs", "samplers", "suites", "all"),
        default="all",
        help="what to list (default: all; `configs` lists the published configs of each upstream format)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models import MODELS
    from samplers import SAMPLERS

    if args.what in ("models", "all"):
        print("models (also: diffusers:PATH, a checkpoint format below, or a native checkpoint directory):")
        width = max(map(len, MODELS))
        for name, spec in MODELS.items():
            print(f"  {name:<{width}}  {spec.summary}")
    if args.what in ("models", "formats", "all"):
        from models.upstream import FORMATS

        print("checkpoint formats (PREFIX:PATH; `scorebench list configs` for their published configs):")
        width = max(map(len, FORMATS)) + 5
        for prefix, fmt in FORMATS.items():
            options = f" [options: {', '.join(fmt.options)}]" if fmt.options else ""
            print(f"  {prefix + ':PATH':<{width}}  {fmt.summary}{options}")
    if args.what in ("configs", "all"):
        from models.upstream import FORMATS

        for prefix, fmt in FORMATS.items():
            configs = fmt.published_configs()
            if configs:
                print(f"{prefix} published configs (config=NAME):")
                width = max(map(len, configs))
                for name, summary in configs.items():
                    print(f"  {name:<{width}}  {summary}")
    if args.what in ("samplers", "all"):
        print("samplers:")
        width = max(map(len, SAMPLERS))
        for name, spec in SAMPLERS.items():
            kind = "stochastic" if spec.stochastic else "deterministic"
            print(f"  {name:<{width}}  {spec.summary} [{kind}]")
    if args.what in ("suites", "all"):
        from .suite import load_suite, shipped_suites

        print("suites (scorebench run NAME; also: the path of a suite TOML file):")
        suites = shipped_suites()
        width = max(map(len, suites))
        for name in suites:
            suite = load_suite(name)
            cells = len(suite.cells())
            summary = suite.description.split(". ")[0].rstrip(".")
            print(f"  {name:<{width}}  {summary} [{cells} cells, {suite.device}]")
    return 0
