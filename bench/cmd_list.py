"""`scorebench list`: the models and samplers this installation knows, one line each."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="list built-in models and registered samplers",
        description="List built-in models and registered samplers with a one-line description each.",
    )
    p.add_argument("what", nargs="?", choices=("models", "samplers", "all"), default="all")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models import MODELS
    from samplers import SAMPLERS

    if args.what in ("models", "all"):
        print("models (also: diffusers:PATH, or a native checkpoint directory):")
        width = max(map(len, MODELS))
        for name, spec in MODELS.items():
            print(f"  {name:<{width}}  {spec.summary}")
    if args.what in ("samplers", "all"):
        print("samplers:")
        width = max(map(len, SAMPLERS))
        for name, spec in SAMPLERS.items():
            kind = "stochastic" if spec.stochastic else "deterministic"
            print(f"  {name:<{width}}  {spec.summary} [{kind}]")
    return 0
