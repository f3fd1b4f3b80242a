"""`scorebench train features`: the digit classifier whose features define fd_<dataset> / kd_<dataset>."""

from __future__ import annotations

import argparse
import shlex
import sys

from .checks import nonneg_int, positive_float, positive_int

# per dataset: (classifier resolution, epochs). mnist5k is classified at 14x14 (area-downsampled) to stay CPU-cheap.
TRAIN_DEFAULTS = {"digits": ((8, 8), 60), "mnist5k": ((14, 14), 30)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="train the feature classifier of a shipped dataset (for fd_<dataset>, kd_<dataset>, ...)",
        description="Train a small CNN classifier on a shipped dataset's training split; its penultimate activations "
        "are the feature space of the fd_/kd_/precision_/recall_<dataset> metrics. Reports held-out accuracy.",
    )
    p.add_argument("--data", choices=tuple(TRAIN_DEFAULTS), default="digits", help="dataset (default: digits)")
    p.add_argument(
        "--out",
        default=None,
        help="checkpoint directory to write (default: results/runs/features-<data>; the shipped one is "
        "models/checkpoints/<data>-features)",
    )
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: 60 for digits, 30 for mnist5k)")
    p.add_argument(
        "--size", type=positive_int, default=None, help="classifier resolution (default: 8 digits, 14 mnist5k)"
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="default: 64")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--seed", type=nonneg_int, default=0, help="default: 0")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.checkpoint_dir import check_replaceable

    from .features import FEATURES_FORMAT, save_classifier, train_classifier

    size, epochs = TRAIN_DEFAULTS[args.data]
    if args.size is not None:
        size = (args.size, args.size)
    epochs = args.epochs if args.epochs is not None else epochs
    for flag, value in (("--epochs", epochs), ("--size", size[0]), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")
    out = Path(args.out or f"results/runs/features-{args.data}")
    check_replaceable(out, FEATURES_FORMAT, ("model.safetensors", "config.json"))  # before the training, not after
    net, summary = train_classifier(
        args.data, epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, image_size=size
    )
    command = "scorebench " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    save_classifier(net, out, {**summary, "command": command})
    print(
        f"{args.data} feature classifier: held-out accuracy {summary['heldout_accuracy']:.4f} "
        f"({summary['n_heldout']} images), train {summary['train_accuracy']:.4f}, "
        f"{summary['feature_dim']}-d features -> {out}"
    )
    return 0
