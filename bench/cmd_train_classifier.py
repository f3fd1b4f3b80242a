"""`scorebench train classifier`: train a noise-level classifier for DLG, saved as model.safetensors + config.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from .checks import nonneg_int, positive_float, positive_int
from .cli import add_device_option, device


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classifier",
        help="train a noise-level classifier for DLG",
        description="Train a noise-level classifier p(sigma | x) over a geometric grid of noise levels with "
        "cross-entropy on x0 + sigma_y eps (Kim & Ye 2023), for DLG samplers (dlg+kar1, ...). Saves "
        "model.safetensors + config.json; pass the directory to DLG as classifier=PATH.",
    )
    p.add_argument("--data", required=True, help="dataset (digits, mnist5k) or analytic mixture (gmm-2d, gmm-64d)")
    p.add_argument("--model", help="a model spec: the grid then spans its sigma_min..sigma_max")
    p.add_argument("--sigma-min", type=positive_float, default=0.01, help="smallest grid level (default: %(default)s)")
    p.add_argument("--sigma-max", type=positive_float, default=160.0, help="largest grid level (default: %(default)s)")
    p.add_argument("--levels", type=positive_int, default=None, help="grid levels (default: DLG's, 1000)")
    p.add_argument("--arch", choices=("auto", "mlp", "cnn"), default="auto", help="default: cnn for images, else mlp")
    p.add_argument("--width", type=positive_int, help="hidden width (default: 32 channels for cnn, 256 units for mlp)")
    p.add_argument("--steps", type=positive_int, default=4000, help="optimisation steps (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="default: %(default)s")
    p.add_argument(
        "--lr", type=positive_float, default=2e-3, help="peak learning rate, cosine decay (default: %(default)s)"
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="default: %(default)s")
    add_device_option(p)
    p.add_argument("--out", required=True, help="output directory (model.safetensors + config.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.checkpoint_dir import check_replaceable
    from models.noise_classifier import DEFAULT_LEVELS, FORMAT, LearnedNoiseClassifier

    from .runner import load_model_checked
    from .train_classifier import data_source, level_errors, train_noise_classifier

    dev = device(args)
    levels = args.levels if args.levels is not None else DEFAULT_LEVELS
    draw, shape, heldout = data_source(args.data)
    sigma_min, sigma_max = args.sigma_min, args.sigma_max
    if args.model:
        model = load_model_checked(args.model)
        if tuple(model.shape) != tuple(shape):
            raise ValueError(f"model {args.model!r} has samples of shape {model.shape}, the data {shape}")
        sigma_min, sigma_max = model.sigma_min, model.sigma_max
    arch = args.arch if args.arch != "auto" else ("cnn" if len(shape) == 3 else "mlp")
    arch_kwargs = {} if args.width is None else {"width": args.width}
    out = Path(args.out)
    check_replaceable(out, FORMAT, ("model.safetensors", "config.json"))  # before the training, not after
    clf = LearnedNoiseClassifier.create(arch, shape, sigma_min, sigma_max, levels, **arch_kwargs)
    summary = train_noise_classifier(
        clf,
        draw,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=dev,
        progress=True,
    )
    errors = level_errors(clf.cpu(), heldout)
    width = f" --width {args.width}" if args.width is not None else ""
    summary.update(
        command=f"scorebench train classifier --data {args.data} --sigma-min {sigma_min:g} --sigma-max {sigma_max:g} "
        f"--levels {levels} --arch {arch}{width} --steps {args.steps} --batch-size {args.batch_size} "
        f"--lr {args.lr:g} --seed {args.seed} --out DIR",
        data=args.data,
        heldout_level_error_median=float(errors.float().median()),
        heldout_level_error_mean=round(float(errors.float().mean()), 2),
        heldout_within_5_levels=round(float((errors <= 5).float().mean()), 4),
    )
    clf.save(out, dataset=args.data, training=summary)
    print(
        f"saved {out}: {levels} levels over sigma {sigma_min:g}..{sigma_max:g}; held-out level error "
        f"median {summary['heldout_level_error_median']:g}, mean {summary['heldout_level_error_mean']:g}, "
        f"within 5 levels {100 * summary['heldout_within_5_levels']:.1f}%"
    )
    return 0
