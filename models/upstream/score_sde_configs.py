"""score_sde_pytorch's published configs (its configs/ folder) as plain data, for `score_sde:PATH` with config=NAME.

A config is score_sde's ConfigDict as nested dicts (sections training, sampling, eval, data, model, optim): the
dataset defaults (configs/default_cifar10_configs.py, default_lsun_configs.py) merged with each config file's
overrides; the 1024x1024 configs are self-contained upstream and written out whole. Fields that name paths on the
authors' machines (tfrecords_path) and the torch device are left out. Tuples are lists, as in config.json.

PUBLISHED_CONFIGS maps the config's path under configs/ without `.py` (e.g. "ve/cifar10_ncsnpp_continuous") to its
dict; CONFIG_SUMMARIES maps the same names to one line each (`scorebench list`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["PUBLISHED_CONFIGS", "CONFIG_SUMMARIES", "summarize"]

_OPTIM = {
    "weight_decay": 0,
    "optimizer": "Adam",
    "lr": 2e-4,
    "beta1": 0.9,
    "eps": 1e-8,
    "warmup": 5000,
    "grad_clip": 1.0,
}

_CIFAR10_DEFAULTS: dict[str, Any] = {
    "training": {
        "batch_size": 128,
        "n_iters": 1300001,
        "snapshot_freq": 50000,
        "log_freq": 50,
        "eval_freq": 100,
        "snapshot_freq_for_preemption": 10000,
        "snapshot_sampling": True,
        "likelihood_weighting": False,
        "continuous": True,
        "reduce_mean": False,
    },
    "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False, "snr": 0.16},
    "eval": {
        "begin_ckpt": 9,
        "end_ckpt": 26,
        "batch_size": 1024,
        "enable_sampling": False,
        "num_samples": 50000,
        "enable_loss": True,
        "enable_bpd": False,
        "bpd_dataset": "test",
    },
    "data": {
        "dataset": "CIFAR10",
        "image_size": 32,
        "random_flip": True,
        "centered": False,
        "uniform_dequantization": False,
        "num_channels": 3,
    },
    "model": {
        "sigma_min": 0.01,
        "sigma_max": 50,
        "num_scales": 1000,
        "beta_min": 0.1,
        "beta_max": 20.0,
        "dropout": 0.1,
        "embedding_type": "fourier",
    },
    "optim": _OPTIM,
    "seed": 42,
}

_LSUN_DEFAULTS: dict[str, Any] = {
    "training": {
        "batch_size": 64,
        "n_iters": 2400001,
        "snapshot_freq": 50000,
        "log_freq": 50,
        "eval_freq": 100,
        "snapshot_freq_for_preemption": 5000,
        "snapshot_sampling": True,
        "likelihood_weighting": False,
        "continuous": True,
        "reduce_mean": False,
    },
    "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False, "snr": 0.075},
    "eval": {
        "begin_ckpt": 50,
        "end_ckpt": 96,
        "batch_size": 512,
        "enable_sampling": True,
        "num_samples": 50000,
        "enable_loss": True,
        "enable_bpd": False,
        "bpd_dataset": "test",
    },
    "data": {
        "dataset": "LSUN",
        "image_size": 256,
        "random_flip": True,
        "uniform_dequantization": False,
        "centered": False,
        "num_channels": 3,
    },
    "model": {
        "sigma_max": 378,
        "sigma_min": 0.01,
        "num_scales": 2000,
        "beta_min": 0.1,
        "beta_max": 20.0,
        "dropout": 0.0,
        "embedding_type": "fourier",
    },
    "optim": _OPTIM,
    "seed": 42,
}

# --- model sections shared by several config files --------------------------------------------------------------
_PC_VE = {"method": "pc", "predictor": "reverse_diffusion", "corrector": "langevin"}
_PC_VP_EM = {"method": "pc", "predictor": "euler_maruyama", "corrector": "none"}
_PC_VP_ANCESTRAL = {"method": "pc", "predictor": "ancestral_sampling", "corrector": "none"}

_NCSNPP_COMMON = {
    "name": "ncsnpp",
    "normalization": "GroupNorm",
    "nonlinearity": "swish",
    "nf": 128,
    "attn_resolutions": [16],
    "resamp_with_conv": True,
    "conditional": True,
    "fir_kernel": [1, 3, 3, 1],
    "skip_rescale": True,
    "resblock_type": "biggan",
    "progressive_combine": "sum",
    "attention_type": "ddpm",
    "init_scale": 0.0,
    "conv_size": 3,
}
# NCSN++ on CIFAR-10 (VE): FIR resampling, residual input pyramid, output divided by sigma
_NCSNPP_CIFAR10_VE = {
    **_NCSNPP_COMMON,
    "scale_by_sigma": True,
    "ema_rate": 0.999,
    "ch_mult": [1, 2, 2, 2],
    "num_res_blocks": 4,
    "fir": True,
    "progressive": "none",
    "progressive_input": "residual",
}
# NCSN++ at 256x256 (VE): 7 resolutions, output-skip / input-skip pyramids
_NCSNPP_256_VE = {
    **_NCSNPP_COMMON,
    "scale_by_sigma": True,
    "ema_rate": 0.999,
    "ch_mult": [1, 1, 2, 2, 2, 2, 2],
    "num_res_blocks": 2,
    "fir": True,
    "progressive": "output_skip",
    "progressive_input": "input_skip",
    "fourier_scale": 16,
}
# DDPM++ on CIFAR-10 (VP): no FIR, no pyramids, positional embedding of 999 t (or the timestep)
_DDPMPP_CIFAR10_VP = {
    **_NCSNPP_COMMON,
    "scale_by_sigma": False,
    "ema_rate": 0.9999,
    "ch_mult": [1, 2, 2, 2],
    "num_res_blocks": 4,
    "fir": False,
    "progressive": "none",
    "progressive_input": "none",
    "embedding_type": "positional",
    "fourier_scale": 16,
}
_NCSNPP_CIFAR10_VP = {
    **_NCSNPP_COMMON,
    "scale_by_sigma": False,
    "ema_rate": 0.9999,
    "ch_mult": [1, 2, 2, 2],
    "num_res_blocks": 4,
    "fir": True,
    "progressive": "none",
    "progressive_input": "residual",
    "embedding_type": "positional",
    "fourier_scale": 16,
}
_DDPM_COMMON = {
    "name": "ddpm",
    "normalization": "GroupNorm",
    "nonlinearity": "swish",
    "nf": 128,
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "resamp_with_conv": True,
    "conditional": True,
}
_DDPM_CIFAR10_VP = {**_DDPM_COMMON, "scale_by_sigma": False, "ema_rate": 0.9999, "ch_mult": [1, 2, 2, 2]}
_DDPM_256_VP = {
    **_DDPM_COMMON,
    "scale_by_sigma": False,
    "num_scales": 1000,
    "ema_rate": 0.9999,
    "ch_mult": [1, 1, 2, 2, 4, 4],
}

_VE_CONT = {"sde": "vesde", "continuous": True}
_VP_CONT = {"sde": "vpsde", "continuous": True, "reduce_mean": True}
_VP_DISCRETE = {"sde": "vpsde", "continuous": False, "reduce_mean": True}


def _ncsnpp_1024(dataset: str, reduce_mean: bool) -> dict[str, Any]:
    """configs/ve/{celebahq,ffhq}_ncsnpp_continuous.py: self-contained upstream (no dataset defaults)."""
    return {
        "training": {
            "batch_size": 8,
            "n_iters": 2400001,
            "snapshot_freq": 50000,
            "log_freq": 50,
            "eval_freq": 100,
            "snapshot_freq_for_preemption": 5000,
            "snapshot_sampling": True,
            "sde": "vesde",
            "continuous": True,
            "likelihood_weighting": False,
            "reduce_mean": reduce_mean,
        },
        "sampling": {**_PC_VE, "probability_flow": False, "snr": 0.15, "n_steps_each": 1, "noise_removal": True},
        "eval": {"batch_size": 1024, "num_samples": 50000, "begin_ckpt": 1, "end_ckpt": 96},
        "data": {
            "dataset": dataset,
            "image_size": 1024,
            "centered": False,
            "random_flip": True,
            "uniform_dequantization": False,
            "num_channels": 3,
        },
        "model": {
            **_NCSNPP_COMMON,
            "scale_by_sigma": True,
            "sigma_max": 1348,
            "num_scales": 2000,
            "ema_rate": 0.9999,
            "sigma_min": 0.01,
            "nf": 16,
            "ch_mult": [1, 2, 4, 8, 16, 32, 32, 32],
            "num_res_blocks": 1,
            "dropout": 0.0,
            "fir": True,
            "progressive": "output_skip",
            "progressive_input": "input_skip",
            "fourier_scale": 16,
            "embedding_type": "fourier",
        },
        "optim": {**_OPTIM, "amsgrad": False},
        "seed": 42,
    }


# name -> (defaults, overrides) or a whole config
_SOURCES: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {
    "ve/cifar10_ncsnpp_continuous": (
        _CIFAR10_DEFAULTS,
        {"training": _VE_CONT, "sampling": _PC_VE, "model": {**_NCSNPP_CIFAR10_VE, "fourier_scale": 16}},
    ),
    "ve/cifar10_ncsnpp_deep_continuous": (
        _CIFAR10_DEFAULTS,
        {
            "training": {**_VE_CONT, "n_iters": 950001},
            "sampling": _PC_VE,
            "model": {**_NCSNPP_CIFAR10_VE, "fourier_scale": 16, "num_res_blocks": 8},
        },
    ),
    "ve/cifar10_ncsnpp": (
        _CIFAR10_DEFAULTS,
        {
            "training": {"sde": "vesde", "continuous": False},
            "sampling": _PC_VE,
            "model": {**_NCSNPP_CIFAR10_VE, "embedding_type": "positional"},
        },
    ),
    "ve/cifar10_ddpm": (
        _CIFAR10_DEFAULTS,
        {
            "training": {"sde": "vesde", "continuous": False},
            "sampling": _PC_VE,
            "model": {
                **_DDPM_COMMON,
                "scale_by_sigma": True,
                "ema_rate": 0.999,
                "ch_mult": [1, 2, 2, 2],
                "conv_size": 3,
            },
        },
    ),
    "ve/celebahq_256_ncsnpp_continuous": (
        _LSUN_DEFAULTS,
        {
            "training": _VE_CONT,
            "sampling": _PC_VE,
            "data": {"dataset": "CelebAHQ", "image_size": 256},
            "model": {**_NCSNPP_256_VE, "sigma_max": 348},
        },
    ),
    "ve/ffhq_256_ncsnpp_continuous": (
        _LSUN_DEFAULTS,
        {
            "training": _VE_CONT,
            "sampling": _PC_VE,
            "data": {"dataset": "FFHQ", "image_size": 256},
            "model": {**_NCSNPP_256_VE, "sigma_max": 348},
        },
    ),
    "ve/bedroom_ncsnpp_continuous": (
        _LSUN_DEFAULTS,
        {"training": _VE_CONT, "sampling": _PC_VE, "data": {"category": "bedroom"}, "model": _NCSNPP_256_VE},
    ),
    "ve/celebahq_ncsnpp_continuous": (None, _ncsnpp_1024("CelebAHQ", reduce_mean=False)),
    "ve/ffhq_ncsnpp_continuous": (None, _ncsnpp_1024("FFHQ", reduce_mean=True)),
    "vp/cifar10_ddpmpp_continuous": (
        _CIFAR10_DEFAULTS,
        {"training": _VP_CONT, "sampling": _PC_VP_EM, "data": {"centered": True}, "model": _DDPMPP_CIFAR10_VP},
    ),
    "vp/cifar10_ddpmpp_deep_continuous": (
        _CIFAR10_DEFAULTS,
        {
            "training": {**_VP_CONT, "n_iters": 950001},
            "sampling": _PC_VP_EM,
            "data": {"centered": True},
            "model": {**_DDPMPP_CIFAR10_VP, "num_res_blocks": 8},
        },
    ),
    "vp/cifar10_ddpmpp": (
        _CIFAR10_DEFAULTS,
        {
            "training": _VP_DISCRETE,
            "sampling": _PC_VP_ANCESTRAL,
            "data": {"centered": True},
            "model": _DDPMPP_CIFAR10_VP,
        },
    ),
    "vp/cifar10_ncsnpp_continuous": (
        _CIFAR10_DEFAULTS,
        {"training": _VP_CONT, "sampling": _PC_VP_EM, "data": {"centered": True}, "model": _NCSNPP_CIFAR10_VP},
    ),
    "vp/cifar10_ncsnpp_deep_continuous": (
        _CIFAR10_DEFAULTS,
        {
            "training": {**_VP_CONT, "n_iters": 950001},
            "sampling": _PC_VP_EM,
            "data": {"centered": True},
            "model": {**_NCSNPP_CIFAR10_VP, "num_res_blocks": 8},
        },
    ),
    "vp/ddpm/cifar10": (
        _CIFAR10_DEFAULTS,
        {"training": _VP_DISCRETE, "sampling": _PC_VP_ANCESTRAL, "data": {"centered": True}, "model": _DDPM_CIFAR10_VP},
    ),
    "vp/ddpm/cifar10_continuous": (
        _CIFAR10_DEFAULTS,
        {"training": _VP_CONT, "sampling": _PC_VP_EM, "data": {"centered": True}, "model": _DDPM_CIFAR10_VP},
    ),
    "vp/ddpm/celebahq": (
        _LSUN_DEFAULTS,
        {
            "training": _VP_DISCRETE,
            "sampling": _PC_VP_ANCESTRAL,
            "data": {"dataset": "CelebAHQ", "centered": True, "image_size": 256},
            "model": _DDPM_256_VP,
            "optim": {"lr": 2e-5},
        },
    ),
    "vp/ddpm/church": (
        _LSUN_DEFAULTS,
        {
            "training": _VP_DISCRETE,
            "sampling": _PC_VP_ANCESTRAL,
            "data": {"category": "church_outdoor", "centered": True},
            "model": _DDPM_256_VP,
            "optim": {"lr": 2e-5},
        },
    ),
}


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with `overrides` applied section by section (nested dicts merge, values replace)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def summarize(config: Mapping[str, Any]) -> str:
    """One line describing a score_sde config: architecture, process, data, size."""
    model, data, training = config["model"], config["data"], config["training"]
    if model["name"] == "ncsnpp":
        arch = "NCSN++" if model.get("fir") else "DDPM++"
    else:
        arch = model["name"].upper()
    sde = {"vesde": "VE", "vpsde": "VP", "subvpsde": "sub-VP"}.get(training["sde"], training["sde"])
    time = "continuous" if training["continuous"] else f"discrete ({model['num_scales']} levels)"
    dataset = data["dataset"] + (f"/{data['category']}" if "category" in data else "")
    size = data["image_size"]
    if training["sde"] == "vesde":
        noise = f"sigma {model['sigma_min']:g}..{model['sigma_max']:g}"
    else:
        noise = f"beta {model['beta_min']:g}..{model['beta_max']:g}"
    return (
        f"{arch} ({model['num_res_blocks']} blocks/res, nf {model['nf']}), {sde} {time}, {noise}, "
        f"{dataset} {size}x{size}, data in {'[-1, 1]' if data['centered'] else '[0, 1]'}"
    )


PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    name: _merge(base, overrides) if base is not None else copy.deepcopy(overrides)
    for name, (base, overrides) in _SOURCES.items()
}
CONFIG_SUMMARIES: dict[str, str] = {name: summarize(cfg) for name, cfg in PUBLISHED_CONFIGS.items()}
