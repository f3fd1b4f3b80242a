"""`ncsnv2:PATH`: checkpoints of ermongroup/ncsnv2 (NCSNv2, Deeper, Deepest) and of ermongroup/ncsn (NCSN v1).

File format (a torch.save'd list, read with torch.load(weights_only=True)):
- ncsnv2: `[model state dict, optimizer state, epoch, step, EMA shadow]`; the model state dict comes from DataParallel
  (keys `module.<name>`, the `sigmas` buffer included); the EMA shadow maps each trainable parameter's name (no
  prefix) to its averaged value and holds no buffers. A run trained without EMA (model.ema: false) saves the first
  four entries only.
- ncsn (v1): `[model state dict ('module.' keys), optimizer state]`; there is no EMA and no sigmas buffer.
Config: `config.yml` beside the file (the YAML the upstream ran with), or `config=NAME` (models.upstream.
ncsnv2_configs: cifar10, celeba, ffhq, church, bedroom, tower; ncsn-mnist, ncsn-cifar10, ncsn-celeba) or a YAML path.
The architecture follows ncsnv2's get_model: data.dataset CIFAR10/CELEBA -> NCSNv2, LSUN -> NCSNv2Deeper,
FFHQ -> NCSNv2Deepest; an NCSN v1 list is CondRefineNetDilated.

Conditioning: the network takes x in [0, 1] (it maps 2x - 1 itself; [-1, 1] when data.rescaled) and the index y of
a noise level, 0 = sigma_begin; NCSNv2 returns its output divided by sigmas[y], NCSN v1 the score directly. Either
way net(x, y) is the score at sigmas[y], so D(x, sigma_y) = x + sigma_y^2 net(x, y) (models.wrappers.NetworkDenoiser
with prediction "score", conditioning "level", and the checkpoint's own sigmas as the model's `levels`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..loaders import ARCHS
from ..processes import VEProcess
from ..wrappers import NetworkDenoiser
from .common import Config, find_config, key_mismatch, load_strict, read_torch, strip_prefix
from .ncsnv2_configs import CONFIG_SUMMARIES, NCSN_V1_SAMPLING, PUBLISHED_CONFIGS
from .ncsnv2_nets import ACTIVATIONS, NORMALIZATIONS, NCSNNet, NCSNv2Net, noise_levels

__all__ = [
    "load",
    "ncsnv2_arch_kwargs",
    "NCSNv2Net",
    "NCSNNet",
    "PUBLISHED_CONFIGS",
    "CONFIG_SUMMARIES",
    "VARIANT_OF_DATASET",
]

ARCHS["ncsnv2.ncsnv2"] = NCSNv2Net  # variant= "ncsnv2" | "deeper" | "deepest"
ARCHS["ncsnv2.ncsn"] = NCSNNet

# ncsnv2's runners/ncsn_runner.py get_model
VARIANT_OF_DATASET = {"CIFAR10": "ncsnv2", "CELEBA": "ncsnv2", "LSUN": "deeper", "FFHQ": "deepest"}


def _get(cfg: Config, dotted: str, kind: type | tuple[type, ...], what: str, default: Any = ...) -> Any:
    value = cfg.get_path(dotted, default=None)
    if value is None:
        if default is not ...:
            return default
        raise ValueError(f"{what}: the config has no {dotted}")
    bool_ok = bool in (kind if isinstance(kind, tuple) else (kind,))
    if not isinstance(value, kind) or (isinstance(value, bool) and not bool_ok):
        raise ValueError(f"{what}: config {dotted} has the wrong type ({value!r})")
    return value


def _data_space(cfg: Config, what: str) -> tuple[bool, tuple[float, float]]:
    """(the network maps 2x - 1 itself, the data range the network is fed)."""
    if _get(cfg, "data.logit_transform", bool, what, False):
        raise ValueError(f"{what}: data.logit_transform is set: logit-space checkpoints are not supported")
    if _get(cfg, "data.rescaled", bool, what, False):
        return False, (-1.0, 1.0)
    return True, (0.0, 1.0)


def _common_kwargs(cfg: Config, what: str) -> dict[str, Any]:
    kwargs = {
        "channels": _get(cfg, "data.channels", int, what),
        "ngf": _get(cfg, "model.ngf", int, what),
        "num_classes": _get(cfg, "model.num_classes", int, what),
    }
    for key, value in kwargs.items():
        if value < 1:
            raise ValueError(f"{what}: config {key} must be positive, got {value}")
    if kwargs["num_classes"] < 2:
        raise ValueError(f"{what}: config model.num_classes must be at least 2, got {kwargs['num_classes']}")
    kwargs["rescale_input"] = _data_space(cfg, what)[0]
    return kwargs


def ncsnv2_arch_kwargs(cfg: Config, what: str) -> dict[str, Any]:
    """NCSNv2Net's JSON kwargs for an ncsnv2 config; ValueError naming the field that is missing or unsupported."""
    dataset = _get(cfg, "data.dataset", str, what)
    if dataset not in VARIANT_OF_DATASET:
        raise ValueError(
            f"{what}: data.dataset {dataset!r} has no ncsnv2 architecture (get_model knows "
            f"{', '.join(VARIANT_OF_DATASET)})"
        )
    normalization = _get(cfg, "model.normalization", str, what, "InstanceNorm++")
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"{what}: unknown model.normalization {normalization!r}; ncsnv2 has {', '.join(NORMALIZATIONS)}"
        )
    nonlinearity = _get(cfg, "model.nonlinearity", str, what, "elu").lower()
    if nonlinearity not in ACTIVATIONS:
        raise ValueError(f"{what}: unknown model.nonlinearity {nonlinearity!r}; ncsnv2 has {', '.join(ACTIVATIONS)}")
    sigma_dist = _get(cfg, "model.sigma_dist", str, what, "geometric")
    if sigma_dist not in ("geometric", "uniform"):
        raise ValueError(f"{what}: unknown model.sigma_dist {sigma_dist!r}; ncsnv2 has geometric and uniform")
    sigma_begin = float(_get(cfg, "model.sigma_begin", (int, float), what))
    sigma_end = float(_get(cfg, "model.sigma_end", (int, float), what))
    if min(sigma_begin, sigma_end) <= 0:
        raise ValueError(f"{what}: model.sigma_begin and model.sigma_end must be positive")
    # model.spec_norm is not read: ncsnv2's networks never pass it on to their layers
    return {
        **_common_kwargs(cfg, what),
        "variant": VARIANT_OF_DATASET[dataset],
        "normalization": normalization,
        "nonlinearity": nonlinearity,
        "sigma_begin": sigma_begin,
        "sigma_end": sigma_end,
        "sigma_dist": sigma_dist,
    }


def _split_checkpoint(states: Any, what: str) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, str]:
    """(model state without 'module.', EMA shadow or None, 'ncsnv2' | 'ncsn') of a checkpoint list."""
    if not isinstance(states, (list, tuple)):
        raise ValueError(
            f"{what}: not an ncsnv2 checkpoint: expected a list [model, optimizer, epoch, step, ema] (or ncsn's "
            f"[model, optimizer]), got {type(states).__name__}"
        )
    if len(states) not in (2, 4, 5):
        raise ValueError(
            f"{what}: a checkpoint list has 5 entries [model, optimizer, epoch, step, ema] (4 without EMA; ncsn v1: "
            f"2, [model, optimizer]), got {len(states)}"
        )
    expected = (Mapping, Mapping, int, int, Mapping)[: len(states)]
    labels = ("model state dict", "optimizer state", "epoch", "step", "EMA shadow")
    for k, (entry, kind) in enumerate(zip(states, expected, strict=True)):
        ok = isinstance(entry, kind) and not isinstance(entry, bool)
        if ok and kind is Mapping and k != 1:
            ok = all(isinstance(key, str) and isinstance(v, Tensor) for key, v in entry.items())
        if not ok:
            raise ValueError(f"{what}: checkpoint entry {k} should be the {labels[k]}, got {type(entry).__name__}")
    ema = strip_prefix(states[4]) if len(states) == 5 else None
    return strip_prefix(states[0]), ema, "ncsn" if len(states) == 2 else "ncsnv2"


def _load_ema(net: nn.Module, shadow: Mapping[str, Tensor], what: str) -> None:
    """Copy the EMA shadow over the network's trainable parameters (EMAHelper.ema); buffers keep the model's values."""
    params = dict(net.named_parameters())
    mismatch = key_mismatch(params, shadow)
    if mismatch:
        raise ValueError(f"{what}: the EMA weights do not match the model's parameters: {mismatch}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(shadow[name])


def _sampler_defaults(cfg: Config, kind: str) -> dict[str, dict[str, Any]]:
    """ALD as the upstream samples this model, in scorebench's parametrisation.

    ncsnv2 (models/__init__.py anneal_Langevin_dynamics, called by runners/ncsn_runner.py with sampling.n_steps_each
    and sampling.step_lr) steps x + s * score + sqrt(2 s) z with s = step_lr (sigma_i / sigma_L)^2, then (if
    sampling.denoise) x + sigma_L^2 score(x, L). scorebench's ald steps x + alpha / 2 * score + sqrt(alpha) z with
    alpha = eps (sigma_i / sigma_L)^2, then D(x, sigma_L): the same chain when eps = 2 step_lr. NCSN v1 (ncsn's
    anneal_runner) used 100 steps per level at step_lr 2e-5 and no final denoising.
    """
    if kind == "ncsn":
        sampling = NCSN_V1_SAMPLING
    else:
        sampling = cfg.get("sampling") or {}
        if not all(k in sampling for k in ("n_steps_each", "step_lr")):
            return {}
    ald: dict[str, Any] = {"n_steps_each": int(sampling["n_steps_each"]), "eps": 2 * float(sampling["step_lr"])}
    if "denoise" in sampling:
        ald["denoise"] = bool(sampling["denoise"])
    return {"ald": ald}


def load(path: Path, config: str | None = None, ema: bool = True) -> NetworkDenoiser:
    """An ncsnv2 (or ncsn v1) checkpoint as a Denoiser over sigma with the checkpoint's noise levels.

    ema=True (the default) evaluates the EMA weights, as ncsnv2 samples; a checkpoint saved without them is accepted
    only when its config says model.ema: false (ncsnv2 then samples with the raw weights), and NCSN v1 never had any.
    ema=False evaluates the raw weights.
    """
    path = Path(path)
    what = f"ncsnv2 checkpoint {str(path)!r}"
    cfg = find_config(path, config, PUBLISHED_CONFIGS, "config.yml", what)
    model_state, shadow, kind = _split_checkpoint(read_torch(path, what), what)
    if kind == "ncsn":
        arch, arch_kwargs = "ncsnv2.ncsn", _common_kwargs(cfg, what)
        net: nn.Module = NCSNNet(**arch_kwargs)
    else:
        arch, arch_kwargs = "ncsnv2.ncsnv2", ncsnv2_arch_kwargs(cfg, what)
        net = NCSNv2Net(**arch_kwargs)
    load_strict(net, model_state, what)
    if ema and kind == "ncsnv2":
        if shadow is not None:
            _load_ema(net, shadow, what)
        elif _get(cfg, "model.ema", bool, what, True):
            raise ValueError(
                f"{what}: the checkpoint has no EMA weights (4 entries) but the config says model.ema: true; "
                "pass ema=False to evaluate the raw weights"
            )

    sigma_begin = float(_get(cfg, "model.sigma_begin", (int, float), what))
    sigma_end = float(_get(cfg, "model.sigma_end", (int, float), what))
    if min(sigma_begin, sigma_end) <= 0:
        raise ValueError(f"{what}: model.sigma_begin and model.sigma_end must be positive")
    if kind == "ncsnv2":
        levels = net.sigmas.detach().to(torch.float64)
        sigma_dist = arch_kwargs["sigma_dist"]
        expected = noise_levels(sigma_begin, sigma_end, arch_kwargs["num_classes"], sigma_dist).double()
        if not torch.allclose(levels, expected, rtol=1e-4, atol=0):
            raise ValueError(
                f"{what}: the checkpoint's sigmas ({float(levels[0]):g} .. {float(levels[-1]):g}) are not the "
                f"config's model.sigma_begin/sigma_end/num_classes/sigma_dist ({float(expected[0]):g} .. "
                f"{float(expected[-1]):g})"
            )
    else:  # ncsn keeps no levels in the network: geometric from the config, in float64 as its sampler has them
        n = arch_kwargs["num_classes"]
        levels = torch.linspace(math.log(sigma_begin), math.log(sigma_end), n, dtype=torch.float64).exp()
    if not bool((levels[1:] < levels[:-1]).all()):
        raise ValueError(f"{what}: the noise levels must decrease from model.sigma_begin to model.sigma_end")

    size = _get(cfg, "data.image_size", int, what)
    model = NetworkDenoiser(
        net,
        VEProcess(float(levels[-1]), float(levels[0])),
        prediction="score",
        conditioning="level",
        shape=(arch_kwargs["channels"], size, size),
        data_range=_data_space(cfg, what)[1],
        name=f"ncsnv2:{path}",
        levels=levels,
    )
    model.arch = arch
    model.arch_kwargs = arch_kwargs
    model.dataset = _get(cfg, "data.dataset", str, what).lower()
    model.config = cfg.to_dict()
    model.sampler_defaults = _sampler_defaults(cfg, kind)
    return model.eval()
