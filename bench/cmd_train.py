"""`scorebench train <what>`: training commands. Each lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib

# modules that each add one `train` sub-command: register(subparsers) sets `func(args) -> int` as the handler
TRAIN_MODULES = ("bench.cmd_train_score", "bench.cmd_train_features", "bench.cmd_train_classifier")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the project's small networks (score models, feature classifiers, ...)",
        description="Train the small networks the project ships; each sub-command writes a checkpoint directory "
        "(model.safetensors + config.json).",
    )
    train_sub = p.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    for name in TRAIN_MODULES:
        importlib.import_module(name).register(train_sub)
