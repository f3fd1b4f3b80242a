"""`scorebench convert SRC OUT`: any loadable checkpoint as a native directory (model.safetensors + config.json)."""

from __future__ import annotations

import argparse

from .cli import add_model_options, model_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint (score_sde:, ncsnv2:, ddim:, edm:, native) into a native checkpoint directory",
        description="Load SRC (a model spec: score_sde:PATH, ncsnv2:PATH, ddim:PATH, edm:PATH or a native directory) "
        "and write it to OUT as a native checkpoint directory (model.safetensors + config.json) that loads and "
        "computes the same D(x, sigma) without the original format or its code. OUT must be new, empty, or a native "
        "checkpoint directory.",
    )
    p.add_argument("src", help="the model spec to convert")
    p.add_argument("out", help="the native checkpoint directory to write")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models import load_model
    from models.checkpoint_dir import check_replaceable
    from models.loaders import FORMAT, NATIVE_FILES, convert

    check_replaceable(args.out, FORMAT, NATIVE_FILES)
    options = model_options(args, args.src)
    model = load_model(args.src, **options)
    path = convert(model, args.out, source=args.src)
    print(f"converted {args.src} -> {path} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0
