"""`ddim:PATH`: checkpoints of ermongroup/ddim's `models.diffusion.Model` (the DDPM UNet of Ho et al. 2020).

Files (read with torch.load(weights_only=True), nothing else):
- a bare state dict: the DDPM weights converted by pesser/pytorch_diffusion (CIFAR-10, LSUN bedroom / church /
  cat, e.g. `model-790000.ckpt`, `ema_diffusion_cifar10_model/model-790000.ckpt`) and ddim's CelebA weights;
- ddim's own training checkpoints (runners/diffusion.py: `ckpt.pth`, `ckpt_<step>.pth`), a list
  `[model state dict, optimizer state, epoch, step]` with the EMA shadow appended as a fifth entry when
  `model.ema` was on. The model was wrapped in DataParallel, so its keys start with `module.`; the EMA shadow maps
  the unwrapped parameter names to tensors. `ema=True` (the default, as ddim samples) loads the shadow where there is
  one; `ema=False` the raw weights. A bare state dict holds one set of weights (EMA ones in the published files),
  loaded whatever `ema` says.

Config: `config.yml` beside the file (ddim's YAML: data / model / diffusion sections) or `config=NAME`, one of
PUBLISHED_CONFIGS (models.upstream.ddim_configs). Betas follow ddim's get_beta_schedule (linear, quad, const, jsd,
sigmoid) over diffusion.num_diffusion_timesteps.

The network predicts eps from x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at an integer timestep t (0-based), so
with sigma_t = sqrt((1 - abar_t) / abar_t) the denoiser is D(x, sigma_t) = x - sigma_t eps(sqrt(abar_t) x, t): a
DDPM process, eps prediction, conditioned on the timestep index (fractional between steps). Data: [-1, 1] when
data.rescaled (every published config), else [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..loaders import ARCHS
from ..processes import DDPMProcess
from ..wrappers import NetworkDenoiser
from .common import Config, find_config, load_strict, read_torch, strip_prefix
from .ddim_configs import CONFIG_SUMMARIES, PUBLISHED_CONFIGS

__all__ = ["load", "DDIMUNet", "beta_schedule", "PUBLISHED_CONFIGS", "CONFIG_SUMMARIES", "BETA_SCHEDULES"]

BETA_SCHEDULES = ("linear", "quad", "const", "jsd", "sigmoid")


# --- the network --------------------------------------------------------------------------------------------------
def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding [B, dim] of (fractional) timesteps t [B]: sin then cos of t * 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float64, device=t.device) * (-math.log(10000.0) / (half - 1)))
    phase = t.to(torch.float64)[:, None] * freqs[None, :]
    emb = torch.cat([phase.sin(), phase.cos()], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice, the timestep embedding added in between, a 1x1 (or 3x3) shortcut on width change."""

    def __init__(self, c_in: int, c_out: int, temb_ch: int, dropout: float, conv_shortcut: bool = False):
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, c_out)
        self.norm2 = _group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut_name = None
        if c_in != c_out:
            self.shortcut_name = "conv_shortcut" if conv_shortcut else "nin_shortcut"
            kernel = 3 if conv_shortcut else 1
            self.add_module(self.shortcut_name, nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2))

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.shortcut_name is None else getattr(self, self.shortcut_name)(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, with 1x1 convolutions for q, k, v and the output projection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(b, c, height * width).transpose(1, 2) for conv in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, [b, hw, c]
        return x + self.proj_out(attended.transpose(1, 2).reshape(b, c, height, width))


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 conv after padding one pixel right and bottom, or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then (optionally) a 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class _Level(nn.Module):
    """One resolution of the UNet: its res blocks, their attention blocks (maybe none) and the resampling after."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, i: int, h: Tensor, temb: Tensor) -> Tensor:
        h = self.block[i](h, temb)
        return self.attn[i](h) if len(self.attn) else h


class DDIMUNet(nn.Module):
    """ddim's `models.diffusion.Model`, state-dict compatible: forward(x, t) -> eps, t the (fractional) timestep [B].

    Keys: temb.dense.{0,1}, conv_in, down.<level>.{block,attn}.<i> and .downsample, mid.{block_1,attn_1,block_2},
    up.<level>.{block,attn}.<i> and .upsample (up.<level> holds the decoder blocks of that level), norm_out,
    conv_out; plus `logvar` [num_timesteps] for model.type "bayesian" (learned variances, unused by the denoiser).
    """

    def __init__(
        self,
        ch: int = 128,
        out_ch: int = 3,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        in_channels: int = 3,
        resolution: int = 32,
        resamp_with_conv: bool = True,
        logvar_steps: int = 0,
    ):
        super().__init__()
        ch_mult, attn_at = tuple(int(m) for m in ch_mult), {int(r) for r in attn_resolutions}
        self.ch, self.num_res_blocks, self.levels = int(ch), int(num_res_blocks), len(ch_mult)
        if logvar_steps:
            self.logvar = nn.Parameter(torch.zeros(int(logvar_steps)))
        temb_ch = 4 * self.ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(self.ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, self.ch, 3, padding=1)

        widths = [self.ch * m for m in ch_mult]
        inputs = [self.ch, *widths[:-1]]  # each level's input width (the previous level's output)
        res, c = int(resolution), self.ch
        self.down = nn.ModuleList()
        for level, width in enumerate(widths):
            blocks = [ResnetBlock(c if i == 0 else width, width, temb_ch, dropout) for i in range(self.num_res_blocks)]
            c = width
            down = _Level(blocks, [AttnBlock(width) for _ in blocks] if res in attn_at else [])
            if level < self.levels - 1:
                down.downsample = Downsample(width, resamp_with_conv)
                res //= 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(c, c, temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(c)
        self.mid.block_2 = ResnetBlock(c, c, temb_ch, dropout)

        ups: list[_Level] = []
        for level in reversed(range(self.levels)):
            width, blocks = widths[level], []
            for i in range(self.num_res_blocks + 1):
                skip = inputs[level] if i == self.num_res_blocks else width  # the encoder output this block eats
                blocks.append(ResnetBlock(c + skip, width, temb_ch, dropout))
                c = width
            up = _Level(blocks, [AttnBlock(width) for _ in blocks] if res in attn_at else [])
            if level > 0:
                up.upsample = Upsample(width, resamp_with_conv)
                res *= 2
            ups.append(up)
        self.up = nn.ModuleList(reversed(ups))
        self.norm_out = _group_norm(c)
        self.conv_out = nn.Conv2d(c, out_ch, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.reshape(-1).expand(x.shape[0])
        temb = timestep_embedding(t, self.ch).to(x.dtype)
        temb = self.temb.dense[1](_swish(self.temb.dense[0](temb)))

        skips = [self.conv_in(x)]
        for level, down in enumerate(self.down):
            for i in range(self.num_res_blocks):
                skips.append(down.run(i, skips[-1], temb))
            if level < self.levels - 1:
                skips.append(down.downsample(skips[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(skips[-1], temb)), temb)

        for level in reversed(range(self.levels)):
            up = self.up[level]
            for i in range(self.num_res_blocks + 1):
                h = up.run(i, torch.cat([h, skips.pop()], dim=1), temb)
            if level > 0:
                h = up.upsample(h)
        assert not skips
        return self.conv_out(_swish(self.norm_out(h)))


ARCHS["ddim.unet"] = DDIMUNet


# --- config -------------------------------------------------------------------------------------------------------
def _get(cfg: Config, dotted: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = cfg.get_path(dotted)
    if value is None:
        raise ValueError(f"{what}: the config has no {dotted}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{what}: config {dotted} = {value!r} has the wrong type")
    return value


def _int_list(cfg: Config, dotted: str, what: str) -> list[int]:
    value = _get(cfg, dotted, (list, tuple), what)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{what}: config {dotted} must be a list of positive integers, got {value!r}")
    return [int(v) for v in value]


def arch_kwargs_of(cfg: Config, what: str) -> dict[str, Any]:
    """DDIMUNet's constructor arguments (JSON) from a ddim config."""
    kind = cfg.get_path("model.type", "simple")
    if kind not in ("simple", "bayesian"):
        raise ValueError(f"{what}: unknown model.type {kind!r}; expected 'simple' or 'bayesian'")
    kwargs = {
        "ch": _get(cfg, "model.ch", int, what),
        "out_ch": _get(cfg, "model.out_ch", int, what),
        "ch_mult": _int_list(cfg, "model.ch_mult", what),
        "num_res_blocks": _get(cfg, "model.num_res_blocks", int, what),
        "attn_resolutions": _int_list(cfg, "model.attn_resolutions", what),
        "dropout": _get(cfg, "model.dropout", float, what),
        "in_channels": _get(cfg, "model.in_channels", int, what),
        "resolution": _get(cfg, "data.image_size", int, what),
        "resamp_with_conv": _get(cfg, "model.resamp_with_conv", bool, what),
        "logvar_steps": _get(cfg, "diffusion.num_diffusion_timesteps", int, what) if kind == "bayesian" else 0,
    }
    if not kwargs["ch_mult"]:
        raise ValueError(f"{what}: config model.ch_mult is empty (one entry per resolution)")
    if kwargs["ch"] < 32 or kwargs["ch"] % 32:
        raise ValueError(
            f"{what}: model.ch must be a positive multiple of 32 (GroupNorm in 32 groups), got {kwargs['ch']}"
        )
    if kwargs["resolution"] % 2 ** (len(kwargs["ch_mult"]) - 1):
        raise ValueError(
            f"{what}: data.image_size {kwargs['resolution']} is not divisible by 2^{len(kwargs['ch_mult']) - 1} "
            f"(model.ch_mult {kwargs['ch_mult']})"
        )
    return kwargs


def beta_schedule(name: str, beta_start: float, beta_end: float, steps: int) -> Tensor:
    """ddim's get_beta_schedule as a float64 tensor [steps]."""
    if name == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if name == "quad":
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    if name == "const":
        return torch.full((steps,), float(beta_end), dtype=torch.float64)
    if name == "jsd":  # 1/T, 1/(T - 1), ..., 1
        return 1.0 / torch.linspace(steps, 1, steps, dtype=torch.float64)
    if name == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown beta_schedule {name!r}; expected one of {', '.join(BETA_SCHEDULES)}")


def process_of(cfg: Config, what: str) -> DDPMProcess:
    """The discrete DDPM process of a ddim config's diffusion section."""
    name = _get(cfg, "diffusion.beta_schedule", str, what)
    start = _get(cfg, "diffusion.beta_start", float, what)
    end = _get(cfg, "diffusion.beta_end", float, what)
    steps = _get(cfg, "diffusion.num_diffusion_timesteps", int, what)
    if steps < 2:
        raise ValueError(f"{what}: diffusion.num_diffusion_timesteps must be at least 2, got {steps}")
    if name not in BETA_SCHEDULES:
        raise ValueError(
            f"{what}: unknown diffusion.beta_schedule {name!r}; expected one of {', '.join(BETA_SCHEDULES)}"
        )
    betas = beta_schedule(name, start, end, steps)
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(
            f"{what}: diffusion.beta_schedule {name!r} gives betas outside (0, 1) (beta_start {start}, beta_end {end}):"
            " no finite noise level at every step"
        )
    if name == "linear":
        return DDPMProcess(beta_start=start, beta_end=end, T=steps)
    return DDPMProcess(betas=betas)


def data_range_of(cfg: Config, what: str) -> tuple[float, float]:
    if cfg.get_path("data.rescaled", False):
        return (-1.0, 1.0)
    if cfg.get_path("data.logit_transform", False):
        raise ValueError(f"{what}: data.logit_transform (logit-space data) is not supported; the denoiser needs pixels")
    return (0.0, 1.0)


def dataset_of(cfg: Config) -> str | None:
    name = cfg.get_path("data.dataset")
    if not isinstance(name, str):
        return None
    category = cfg.get_path("data.category")
    return f"{name.lower()}_{category}" if name.upper() == "LSUN" and isinstance(category, str) else name.lower()


# --- checkpoint files ---------------------------------------------------------------------------------------------
def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def select_weights(obj: Any, ema: bool, what: str) -> dict[str, Tensor]:
    """The model state dict to load from a file's contents: a bare state dict, or ddim's list checkpoint."""
    if _is_state(obj):
        return strip_prefix(obj)
    if not isinstance(obj, (list, tuple)):
        raise ValueError(
            f"{what}: expected a state dict or ddim's list checkpoint [model, optimizer, epoch, step(, ema)], "
            f"got a {type(obj).__name__}"
        )
    if len(obj) not in (4, 5):
        raise ValueError(
            f"{what}: ddim's list checkpoint has 4 entries [model, optimizer, epoch, step] or 5 (with the EMA "
            f"shadow), got {len(obj)}"
        )
    if not _is_state(obj[0]):
        raise ValueError(f"{what}: entry 0 of the list checkpoint is not a model state dict")
    state = strip_prefix(obj[0])
    if not ema or len(obj) == 4:
        return state
    shadow = obj[4]
    if not _is_state(shadow):
        raise ValueError(f"{what}: entry 4 of the list checkpoint is not an EMA shadow (a dict of tensors)")
    shadow = strip_prefix(shadow)
    unknown, absent = sorted(set(shadow) - set(state)), sorted(set(state) - set(shadow))
    if unknown or absent:
        first = f"extra {unknown[0]}" if unknown else f"missing {absent[0]}"
        raise ValueError(
            f"{what}: the EMA shadow does not cover the model's weights: {len(unknown)} extra, {len(absent)} missing "
            f"(first: {first})"
        )
    return {**state, **shadow}


def load(path: Path, config: str | None = None, ema: bool = True) -> NetworkDenoiser:
    """A ddim checkpoint as a denoiser over sigma (see the module docstring); ValueError for any bad input."""
    path = Path(path)
    what = f"ddim checkpoint {str(path)!r}"
    if not isinstance(ema, bool):
        raise ValueError(f"{what}: ema must be True or False, got {ema!r}")
    cfg = find_config(path, config, PUBLISHED_CONFIGS, "config.yml", what)
    arch_kwargs = arch_kwargs_of(cfg, what)
    sde = process_of(cfg, what)
    data_range = data_range_of(cfg, what)
    channels = _get(cfg, "data.channels", int, what)
    if channels != arch_kwargs["in_channels"] or channels != arch_kwargs["out_ch"]:
        raise ValueError(
            f"{what}: data.channels {channels} differs from model.in_channels {arch_kwargs['in_channels']} or "
            f"model.out_ch {arch_kwargs['out_ch']}"
        )

    state = select_weights(read_torch(path, what), ema, what)
    with torch.device("meta"):  # no memory, no random initialisation: the weights come from the file (load_strict)
        net = DDIMUNet(**arch_kwargs)
    load_strict(net, state, what)
    net.eval().requires_grad_(False)

    size = arch_kwargs["resolution"]
    model = NetworkDenoiser(
        net,
        sde,
        prediction="eps",
        conditioning="index",
        shape=(channels, size, size),
        data_range=data_range,
        name=f"ddim:{path.name}" if config is None else f"ddim:{path.name} ({config})",
    )
    model.dataset = dataset_of(cfg)
    model.arch = "ddim.unet"
    model.arch_kwargs = arch_kwargs
    model.config = cfg.to_dict()
    return model
