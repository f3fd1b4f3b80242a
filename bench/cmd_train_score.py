"""`scorebench train score`: a small UNet score model (VE score network or VP DDPM eps network) on a shipped dataset."""

from __future__ import annotations

import argparse
import shlex

from .checks import nonneg_float, nonneg_int, positive_float, positive_int
from .cli import DefaultsFormatter, add_device_option, add_threads_option, device, set_threads
from .data import DATASETS
from .train_config import ScoreTraining

_DEFAULTS = ScoreTraining()


def register(train_sub: argparse._SubParsersAction) -> None:
    p = train_sub.add_parser(
        "score",
        help="train a UNet score model (VE score or VP eps network) with denoising score matching",
        description="Train a small UNet with denoising score matching on a shipped dataset and write the EMA weights "
        "as a native checkpoint (load it with `load_model(DIR)` or pass DIR as a model spec). VE: a score network "
        "conditioned on sigma, sigma log-uniform in [sigma-min, sigma-max]. VP: a discrete DDPM eps network "
        "(linear betas 1e-4..0.02, T=1000) conditioned on the timestep index. Also writes training_curve.csv/.png "
        "and samples.png (drawn with kar1).",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--data", choices=tuple(DATASETS), default=_DEFAULTS.data, help="training set")
    p.add_argument("--process", choices=("ve", "vp"), default=_DEFAULTS.process, help="forward process")
    p.add_argument("--steps", type=positive_int, default=_DEFAULTS.steps, help="optimiser steps")
    p.add_argument("--batch-size", type=positive_int, default=_DEFAULTS.batch_size)
    p.add_argument(
        "--lr", type=positive_float, default=_DEFAULTS.lr, help="Adam learning rate (after a linear warm-up)"
    )
    p.add_argument("--ema", type=nonneg_float, default=_DEFAULTS.ema, help="EMA decay of the saved weights")
    p.add_argument("--seed", type=nonneg_int, default=_DEFAULTS.seed)
    p.add_argument("--sigma-min", type=positive_float, default=_DEFAULTS.sigma_min, help="VE: smallest training sigma")
    p.add_argument(
        "--sigma-max",
        type=positive_float,
        default=None,
        help="VE: largest training sigma (default: the largest pairwise distance of the training images, rounded up)",
    )
    p.add_argument("--out", default=None, help="checkpoint directory (default: results/runs/train-DATA-PROCESS-sSEED)")
    p.add_argument("--figures", default=None, help="where the training curve and sample grid go (default: --out)")
    add_device_option(p, default=None, what="cuda when available, else cpu")
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from models.checkpoint_dir import check_replaceable
    from models.loaders import FORMAT, NATIVE_FILES

    from .train import train_score

    dev = device(args, fallback="cuda" if torch.cuda.is_available() else "cpu")
    set_threads(args)
    cfg = ScoreTraining(
        data=args.data,
        process=args.process,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema=args.ema,
        seed=args.seed,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
    )
    cfg.check()
    out = args.out or f"results/runs/train-{cfg.data}-{cfg.process}-s{cfg.seed}"
    check_replaceable(out, FORMAT, NATIVE_FILES)  # before the training, not after
    command = shlex.join(
        ["scorebench", "train", "score", "--data", cfg.data, "--process", cfg.process, "--steps", str(cfg.steps)]
        + ["--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr), "--ema", str(cfg.ema), "--seed", str(cfg.seed)]
        + (["--sigma-min", str(cfg.sigma_min)] if cfg.process == "ve" else [])
        + (["--sigma-max", str(cfg.sigma_max)] if cfg.sigma_max is not None else [])
    )
    result = train_score(cfg, out, figures=args.figures, device=dev, command=command, progress=not args.quiet)
    figures = args.figures or result.path
    print(f"checkpoint: {result.path} (final loss {result.final_loss:.4f}, {result.seconds:.0f} s)")
    print(f"figures: {figures}/training_curve.png, {figures}/samples.png")
    return 0
