"""`scorebench sample MODEL`: load any model spec, draw samples with one sampler and save them as a grid PNG."""

from __future__ import annotations

import argparse
import json

from .checks import image_suffix, positive_int
from .cli import (
    DefaultsFormatter,
    add_device_option,
    add_model_options,
    add_seed_option,
    add_threads_option,
    device,
    model_options,
    set_threads,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample a model (built-in name, diffusers:PATH or checkpoint directory) into a grid PNG",
        description="Load a model spec, draw --n samples (seeds 0..n-1) with one sampler within an NFE budget, and "
        "save them as a grid PNG. A quick way to check that a checkpoint loads and what its samples look like.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument(
        "model",
        help="built-in name (`scorebench list models`), diffusers:PATH, score_sde:PATH, ncsnv2:PATH, ddim:PATH, "
        "edm:PATH, or a checkpoint directory",
    )
    p.add_argument("--sampler", default="kar1", help="sampler name (`scorebench list samplers`)")
    p.add_argument("--nfe", type=positive_int, default=35, help="NFE budget per sample")
    p.add_argument("--n", type=positive_int, default=64, help="number of samples")
    add_seed_option(p, help="the noise streams' seed: sample i uses (seed, i)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="samples per batch (default: all at once)")
    add_device_option(p)
    p.add_argument("--out", default="samples.png", help="grid image to write (.png, .jpg, ...)")
    add_threads_option(p)
    add_model_options(p)
    p.add_argument("--hyper", nargs="*", default=[], metavar="KEY=VALUE", help="sampler hyper-parameters, e.g. eta=0.5")
    p.set_defaults(func=run)


def _hyper(pairs: list[str]) -> dict:
    hyper = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"hyper-parameters are KEY=VALUE, got {pair!r}")
        try:
            hyper[key] = json.loads(value)
        except json.JSONDecodeError:
            hyper[key] = value
    return hyper


def check_hyper(sampler: str, hyper: dict) -> None:
    """The sampler is registered, knows every key, and each value has its default's type; else one ValueError."""
    from samplers import get_sampler

    from .suite import _check_types

    spec = get_sampler(sampler)
    try:
        spec.resolve(hyper)
        _check_types(hyper, spec.defaults())
    except (ValueError, TypeError) as err:
        raise ValueError(f"--hyper: {err}") from None


def run(args: argparse.Namespace) -> int:
    from .grid import save_grid
    from .runner import load_model_checked

    image_suffix(args.out)  # before the sampling, not after
    hyper = _hyper(args.hyper)
    dev = device(args)
    set_threads(args)
    check_hyper(args.sampler, hyper)
    from samplers import sample

    model = load_model_checked(args.model, dev, **model_options(args, args.model))
    if len(model.shape) != 3 or model.shape[0] not in (1, 3):
        raise ValueError(f"model {args.model!r} has samples of shape {model.shape}, not images")
    print(
        f"{model.name}: {model.sde.describe()}, sigma {model.sigma_min:.4g}..{model.sigma_max:.4g}, "
        f"shape {model.shape}, data range {model.data_range}"
    )
    res = sample(
        model, args.sampler, args.nfe, seeds=range(args.n), seed=args.seed, batch_size=args.batch_size, **hyper
    )
    path = save_grid(res.x, args.out, model.data_range)
    print(f"{args.sampler}: {res.nfe:g} NFE per sample (measured), {res.seconds:.2f} s; grid: {path}")
    return 0
