"""The published configs of ermongroup/ncsnv2 (configs/*.yml) and of NCSN v1 (ermongroup/ncsn configs/anneal.yml), as
plain data: `config=NAME` for an `ncsnv2:PATH` checkpoint that has no config.yml beside it.

The NCSNv2 entries hold every field of the YAML files; bedroom.yml has no sampling.denoise, and neither does this copy.
ncsn's anneal.yml is one file with the MNIST settings active and the CelebA and CIFAR-10 ones commented out; each
becomes its own entry here (`ncsn-mnist`, `ncsn-celeba`, `ncsn-cifar10`). NCSN v1 sampled with annealed Langevin
dynamics, 100 steps per level at step_lr 2e-5 and no final denoising (constants of its runner, not of its config).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PUBLISHED_CONFIGS", "CONFIG_SUMMARIES", "NCSN_V1_SAMPLING"]

# ncsn's runners/anneal_runner.py test(): anneal_Langevin_dynamics(samples, score, sigmas, 100, 0.00002), no denoising
NCSN_V1_SAMPLING = {"n_steps_each": 100, "step_lr": 0.00002, "denoise": False}


def _ncsnv2(
    *,
    dataset: str,
    image_size: int,
    sigma_begin: float,
    num_classes: int,
    n_iters: int,
    sampling: tuple[int, float, int, int],  # batch_size, step_lr, n_steps_each, n_interpolations
    fast_fid_begin: int,
    num_workers: int,
    batch_size: int = 128,
    category: str | None = None,
    adam_eps: float = 1e-8,
    denoise: bool | None = True,
) -> dict[str, Any]:
    sample_batch, step_lr, n_steps_each, n_interpolations = sampling
    last = n_iters - 1
    data: dict[str, Any] = {"dataset": dataset}
    if category is not None:
        data["category"] = category
    data.update(
        image_size=image_size,
        channels=3,
        logit_transform=False,
        uniform_dequantization=False,
        gaussian_dequantization=False,
        random_flip=True,
        rescaled=False,
        num_workers=num_workers,
    )
    sampling_cfg: dict[str, Any] = {
        "batch_size": sample_batch,
        "data_init": False,
        "step_lr": step_lr,
        "n_steps_each": n_steps_each,
        "ckpt_id": last,
        "final_only": True,
        "fid": False,
    }
    if denoise is not None:
        sampling_cfg["denoise"] = denoise
    sampling_cfg.update(num_samples4fid=10000, inpainting=False, interpolation=False, n_interpolations=n_interpolations)
    return {
        "training": {
            "batch_size": batch_size,
            "n_epochs": 500000,
            "n_iters": n_iters,
            "snapshot_freq": 5000,
            "snapshot_sampling": True,
            "anneal_power": 2,
            "log_all_sigmas": False,
        },
        "sampling": sampling_cfg,
        "fast_fid": {
            "batch_size": 1000,
            "num_samples": 1000,
            "step_lr": step_lr,
            "n_steps_each": n_steps_each,
            "begin_ckpt": fast_fid_begin,
            "end_ckpt": last,
            "verbose": False,
            "ensemble": False,
        },
        "test": {"begin_ckpt": 5000, "end_ckpt": last, "batch_size": 100},
        "data": data,
        "model": {
            "sigma_begin": sigma_begin,
            "num_classes": num_classes,
            "ema": True,
            "ema_rate": 0.999,
            "spec_norm": False,
            "sigma_dist": "geometric",
            "sigma_end": 0.01,
            "normalization": "InstanceNorm++",
            "nonlinearity": "elu",
            "ngf": 128,
        },
        "optim": {
            "weight_decay": 0.0,
            "optimizer": "Adam",
            "lr": 0.0001,
            "beta1": 0.9,
            "amsgrad": False,
            "eps": adam_eps,
        },
    }


def _ncsn_v1(*, dataset: str, image_size: int, channels: int, random_flip: bool, ngf: int) -> dict[str, Any]:
    return {
        "training": {
            "batch_size": 128,
            "n_epochs": 500000,
            "n_iters": 200001,
            "ngpu": 1,
            "snapshot_freq": 5000,
            "algo": "dsm",
            "anneal_power": 2.0,
        },
        "data": {
            "dataset": dataset,
            "image_size": image_size,
            "channels": channels,
            "logit_transform": False,
            "random_flip": random_flip,
        },
        "model": {"sigma_begin": 1, "sigma_end": 0.01, "num_classes": 10, "batch_norm": False, "ngf": ngf},
        "optim": {"weight_decay": 0.0, "optimizer": "Adam", "lr": 0.001, "beta1": 0.9, "amsgrad": False},
    }


PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "cifar10": _ncsnv2(
        dataset="CIFAR10",
        image_size=32,
        sigma_begin=50,
        num_classes=232,
        n_iters=300001,
        sampling=(100, 0.0000062, 5, 15),
        fast_fid_begin=5000,
        num_workers=4,
    ),
    "celeba": _ncsnv2(
        dataset="CELEBA",
        image_size=64,
        sigma_begin=90,
        num_classes=500,
        n_iters=210001,
        sampling=(64, 0.0000033, 5, 15),
        fast_fid_begin=5000,
        num_workers=32,
    ),
    "ffhq": _ncsnv2(
        dataset="FFHQ",
        image_size=256,
        sigma_begin=348,
        num_classes=2311,
        n_iters=80001,
        sampling=(36, 0.0000009, 3, 8),
        fast_fid_begin=100000,
        num_workers=8,
        batch_size=32,
        adam_eps=0.001,
    ),
    "church": _ncsnv2(
        dataset="LSUN",
        category="church_outdoor",
        image_size=64,
        sigma_begin=140,
        num_classes=788,
        n_iters=200001,
        sampling=(96, 0.0000049, 4, 12),
        fast_fid_begin=100000,
        num_workers=32,
    ),
    "bedroom": _ncsnv2(
        dataset="LSUN",
        category="bedroom",
        image_size=128,
        sigma_begin=190,
        num_classes=1086,
        n_iters=150001,
        sampling=(36, 0.0000018, 3, 10),
        fast_fid_begin=100000,
        num_workers=32,
        denoise=None,
    ),
    "tower": _ncsnv2(
        dataset="LSUN",
        category="tower",
        image_size=128,
        sigma_begin=190,
        num_classes=1086,
        n_iters=150001,
        sampling=(36, 0.0000018, 3, 10),
        fast_fid_begin=100000,
        num_workers=32,
    ),
    "ncsn-mnist": _ncsn_v1(dataset="MNIST", image_size=28, channels=1, random_flip=False, ngf=64),
    "ncsn-celeba": _ncsn_v1(dataset="CELEBA", image_size=32, channels=3, random_flip=True, ngf=128),
    "ncsn-cifar10": _ncsn_v1(dataset="CIFAR10", image_size=32, channels=3, random_flip=True, ngf=128),
}

_ARCH_OF_DATASET = {"CIFAR10": "NCSNv2", "CELEBA": "NCSNv2", "LSUN": "NCSNv2Deeper", "FFHQ": "NCSNv2Deepest"}


def _summary(name: str, cfg: dict[str, Any]) -> str:
    data, model = cfg["data"], cfg["model"]
    size = f"{data['image_size']}x{data['image_size']}"
    what = data["dataset"] + (f" {data['category']}" if "category" in data else "")
    levels = f"{model['num_classes']} levels {model['sigma_begin']:g}..{model['sigma_end']:g}"
    if name.startswith("ncsn-"):
        return f"NCSN v1 (CondRefineNetDilated, ngf {model['ngf']}) {what} {size}, {levels}"
    sampling = cfg["sampling"]
    return (
        f"{_ARCH_OF_DATASET[data['dataset']]} (ngf {model['ngf']}) {what} {size}, {levels}, "
        f"ALD {sampling['n_steps_each']} x step_lr {sampling['step_lr']:g}"
    )


CONFIG_SUMMARIES: dict[str, str] = {name: _summary(name, cfg) for name, cfg in PUBLISHED_CONFIGS.items()}
