"""ermongroup/ddim's published configs (configs/*.yml), as plain data: the `data`, `model` and `diffusion` sections.

`ddim:PATH` with `config=NAME` takes one of these instead of a config.yml beside the checkpoint. The CIFAR-10, LSUN
bedroom and LSUN church configs are those of the DDPM weights converted by pesser/pytorch_diffusion, which ddim
samples with (`--use_pretrained`); celeba is ddim's own CelebA 64x64 model. The training, sampling and optimiser
sections of the YAML files are left out: loading needs none of them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PUBLISHED_CONFIGS", "CONFIG_SUMMARIES"]


def _config(
    dataset: str,
    image_size: int,
    ch_mult: list[int],
    dropout: float,
    var_type: str,
    ema_rate: float,
    category: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"dataset": dataset, "image_size": image_size, "channels": 3}
    if category is not None:
        data["category"] = category
    data.update(
        {
            "logit_transform": False,
            "uniform_dequantization": False,
            "gaussian_dequantization": False,
            "random_flip": True,
            "rescaled": True,
        }
    )
    return {
        "data": data,
        "model": {
            "type": "simple",
            "in_channels": 3,
            "out_ch": 3,
            "ch": 128,
            "ch_mult": ch_mult,
            "num_res_blocks": 2,
            "attn_resolutions": [16],
            "dropout": dropout,
            "var_type": var_type,
            "ema_rate": ema_rate,
            "ema": True,
            "resamp_with_conv": True,
        },
        "diffusion": {
            "beta_schedule": "linear",
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "num_diffusion_timesteps": 1000,
        },
    }


PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "cifar10": _config("CIFAR10", 32, [1, 2, 2, 2], 0.1, "fixedlarge", 0.9999),
    "celeba": _config("CELEBA", 64, [1, 2, 2, 2, 4], 0.1, "fixedlarge", 0.9999),
    "bedroom": _config("LSUN", 256, [1, 1, 2, 2, 4, 4], 0.0, "fixedsmall", 0.999, category="bedroom"),
    "church": _config("LSUN", 256, [1, 1, 2, 2, 4, 4], 0.0, "fixedsmall", 0.999, category="church_outdoor"),
}

CONFIG_SUMMARIES: dict[str, str] = {
    "cifar10": "CIFAR-10 32x32, ch 128 x (1, 2, 2, 2), DDPM linear betas T=1000 (the converted DDPM weights)",
    "celeba": "CelebA 64x64, ch 128 x (1, 2, 2, 2, 4), DDPM linear betas T=1000 (ddim's own model)",
    "bedroom": "LSUN bedroom 256x256, ch 128 x (1, 1, 2, 2, 4, 4), DDPM linear betas T=1000 (converted DDPM weights)",
    "church": "LSUN church 256x256, ch 128 x (1, 1, 2, 2, 4, 4), DDPM linear betas T=1000 (converted DDPM weights)",
}

assert set(CONFIG_SUMMARIES) == set(PUBLISHED_CONFIGS)
