"""`score_sde:PATH`: checkpoints of yang-song/score_sde_pytorch (NCSN++, DDPM++, DDPM; VE/VP; continuous/discrete).

The file (e.g. checkpoint_26.pth) is what score_sde's training loop saves with torch.save:
    {"model": state dict of the DataParallel-wrapped network (keys start with `module.`; a float64 `module.sigmas`
               buffer of the SMLD levels included),
     "ema": {"decay", "num_updates", "shadow_params": [tensors in model.parameters() order, over the parameters that
             require grad only; NCSN++'s fixed Fourier projection `W` is not among them]},
     "optimizer": ..., "step": int}
It is read with torch.load(weights_only=True) (models.upstream.common.read_torch): nothing in it is executed. The
EMA weights are used by default (as score_sde evaluates); `ema=False` takes the raw training weights.

The config is score_sde's ConfigDict: `config.json` beside the checkpoint (the ConfigDict as JSON), or `config=NAME`
with NAME a published config (models.upstream.score_sde_configs.PUBLISHED_CONFIGS, e.g.
"ve/cifar10_ncsnpp_continuous"), or a path to a JSON file. It decides the network (model.name `ncsnpp` or `ddpm`,
models.upstream.score_sde_nets), the process and how the network is conditioned, as score_sde's get_score_fn does:

| training.sde, continuous | process                          | the net gets       | its output             |
|--------------------------|----------------------------------|--------------------|------------------------|
| vesde, continuous        | VE(sigma_min, sigma_max)         | sigma ("sigma")    | the score ("score")    |
| vesde, discrete          | VE, levels = the `sigmas` buffer | level index, 0 = sigma_max ("level") | the score |
| vpsde, continuous        | VP(beta_min, beta_max)           | 999 t ("t999")     | -std * score ("eps")   |
| vpsde, discrete          | DDPM(beta_min/N .. beta_max/N, N)| timestep ("index") | -std * score ("eps")   |

Data keep their space: [0, 1] unless data.centered, then [-1, 1] (the network maps uncentred input by 2x - 1 itself).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..loaders import ARCHS
from ..processes import DDPMProcess, Process, VEProcess, VPProcess
from ..wrappers import NetworkDenoiser
from .common import Config, find_config, first_line, load_strict, read_torch, strip_prefix
from .score_sde_configs import CONFIG_SUMMARIES, PUBLISHED_CONFIGS
from .score_sde_nets import DDPM, NCSNpp, smld_sigmas

__all__ = ["load", "build_network", "network_spec", "PUBLISHED_CONFIGS", "CONFIG_SUMMARIES", "NETWORKS"]

# score_sde's model.name -> (scorebench architecture name, class); registered for `scorebench convert`
NETWORKS: dict[str, tuple[str, type[nn.Module]]] = {
    "ncsnpp": ("score_sde.ncsnpp", NCSNpp),
    "ddpm": ("score_sde.ddpm", DDPM),
}
for _arch, _cls in NETWORKS.values():
    ARCHS[_arch] = _cls

SDES = ("vesde", "vpsde")


def _field(cfg: Config, dotted: str, what: str) -> Any:
    value = cfg.get_path(dotted)
    if value is None:
        raise ValueError(f"{what}: the config has no {dotted}")
    return value


def network_spec(cfg: Config, what: str = "score_sde config") -> tuple[str, dict[str, Any]]:
    """(architecture name, JSON-serialisable constructor kwargs) of the network a score_sde config describes."""
    name = str(_field(cfg, "model.name", what)).lower()
    if name not in NETWORKS:
        raise ValueError(
            f"{what}: model.name {name!r} is not supported (this loader reads {', '.join(NETWORKS)} networks)"
        )
    model = cfg.model.to_dict() if isinstance(cfg.model, Config) else dict(cfg.model)
    kwargs = {
        "model": copy.deepcopy(model),
        "image_size": int(_field(cfg, "data.image_size", what)),
        "num_channels": int(_field(cfg, "data.num_channels", what)),
        "centered": bool(_field(cfg, "data.centered", what)),
    }
    return NETWORKS[name][0], kwargs


def build_network(arch: str, arch_kwargs: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The network, built without random initialisation (on the meta device, then allocated on `device` unless that
    is "meta"): every value is about to be loaded, or only the shapes are wanted."""
    cls = next(c for a, c in NETWORKS.values() if a == arch)
    with torch.device("meta"):
        net = cls(**arch_kwargs)
    return net if torch.device(device).type == "meta" else net.to_empty(device=device)


def _process(cfg: Config, sde: str, continuous: bool, what: str) -> Process:
    if sde == "vesde":
        return VEProcess(float(_field(cfg, "model.sigma_min", what)), float(_field(cfg, "model.sigma_max", what)))
    beta_min, beta_max = float(_field(cfg, "model.beta_min", what)), float(_field(cfg, "model.beta_max", what))
    if continuous:
        return VPProcess(beta_min, beta_max)
    n = int(_field(cfg, "model.num_scales", what))
    return DDPMProcess(beta_start=beta_min / n, beta_end=beta_max / n, T=n)


def _checkpoint_parts(ckpt: Any, ema: bool, what: str) -> tuple[dict[str, torch.Tensor], list | None]:
    """(model state dict without `module.`, the EMA shadow list or None) of a score_sde checkpoint dict."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        kind = f"keys {', '.join(map(str, list(ckpt)[:4]))}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{what}: not a score_sde checkpoint (expected a dict with 'model' and 'ema', got {kind})")
    state = strip_prefix(ckpt["model"])
    if not ema:
        return state, None
    shadow = ckpt.get("ema")
    shadow = shadow.get("shadow_params") if isinstance(shadow, dict) else None
    if not isinstance(shadow, (list, tuple)):
        raise ValueError(f"{what}: the checkpoint has no EMA 'shadow_params' list; pass ema=False for the raw weights")
    return state, list(shadow)


def _apply_ema(net: nn.Module, shadow: list, what: str) -> None:
    """Copy the EMA list onto the trainable parameters, in registration order (upstream's model.parameters())."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if len(shadow) != len(trainable):
        raise ValueError(
            f"{what}: the EMA list holds {len(shadow)} tensors but the network has {len(trainable)} trainable "
            "parameters (pass ema=False for the raw weights)"
        )
    for i, ((name, param), value) in enumerate(zip(trainable, shadow, strict=True)):
        if not isinstance(value, torch.Tensor) or value.shape != param.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{what}: EMA entry {i} is {got} but parameter {name} is {tuple(param.shape)}")
    with torch.no_grad():
        for (_, param), value in zip(trainable, shadow, strict=True):
            param.copy_(value)


def _check_sigmas(net: nn.Module, cfg: Config, what: str) -> None:
    """The checkpoint's `sigmas` buffer must be the level grid the config's model section describes."""
    n = int(_field(cfg, "model.num_scales", what))
    smin, smax = float(_field(cfg, "model.sigma_min", what)), float(_field(cfg, "model.sigma_max", what))
    have = net.sigmas.detach().double()
    if not torch.allclose(have, smld_sigmas(smin, smax, n), rtol=1e-5, atol=0):
        raise ValueError(
            f"{what}: the checkpoint's sigmas buffer ({have.numel()} levels, {have[0]:g}..{have[-1]:g}) does not match "
            f"the config (num_scales {n}, sigma_max {smax:g}, sigma_min {smin:g})"
        )


def load(path: Path, config: str | None = None, ema: bool = True) -> NetworkDenoiser:
    """Load a score_sde_pytorch checkpoint as a Denoiser; one-line ValueError for a bad file, config or option."""
    path = Path(path)
    what = f"score_sde checkpoint {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{what}: no such file")
    if not isinstance(ema, bool):
        raise ValueError(f"{what}: ema must be True or False, got {ema!r}")
    cfg = find_config(path, config, PUBLISHED_CONFIGS, "config.json", what)
    sde = str(_field(cfg, "training.sde", what)).lower()
    if sde not in SDES:
        raise ValueError(f"{what}: training.sde {sde!r} is not supported (expected one of {', '.join(SDES)})")
    continuous = bool(_field(cfg, "training.continuous", what))
    arch, arch_kwargs = network_spec(cfg, what)
    if arch == "score_sde.ncsnpp" and not continuous and str(cfg.model.get("embedding_type")).lower() == "fourier":
        raise ValueError(f"{what}: model.embedding_type 'fourier' needs training.continuous (as upstream asserts)")
    process = _process(cfg, sde, continuous, what)
    try:
        net = build_network(arch, arch_kwargs, device="meta")  # the weights come from the file (load_strict)
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as err:
        raise ValueError(f"{what}: cannot build the {arch} network from the config ({first_line(err)})") from None

    state, shadow = _checkpoint_parts(read_torch(path, what), ema, what)
    load_strict(net, state, what)
    if shadow is not None:
        _apply_ema(net, shadow, what)
    _check_sigmas(net, cfg, what)

    if sde == "vesde":
        prediction = "score"
        conditioning = "sigma" if continuous else "level"
    else:
        prediction, conditioning = "eps", "t999" if continuous else "index"
    centered = arch_kwargs["centered"]
    size, channels = arch_kwargs["image_size"], arch_kwargs["num_channels"]
    model = NetworkDenoiser(
        net,
        process,
        prediction=prediction,
        conditioning=conditioning,
        shape=(channels, size, size),
        data_range=(-1.0, 1.0) if centered else (0.0, 1.0),
        sigma_min=process.sigma_min if sde == "vesde" else None,
        sigma_max=process.sigma_max if sde == "vesde" else None,
        name=f"score_sde:{path}",
        levels=net.sigmas.detach().double().clone() if conditioning == "level" else None,
    )
    dataset = str(cfg.get_path("data.dataset", "")).lower() or None
    if dataset and cfg.get_path("data.category"):
        dataset = f"{dataset}_{str(cfg.data.category).lower()}"
    model.dataset = dataset
    model.arch = arch
    model.arch_kwargs = json.loads(json.dumps(arch_kwargs))
    model.config = json.loads(json.dumps(cfg.to_dict()))
    return model.eval()
