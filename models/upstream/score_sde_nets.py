"""score_sde_pytorch's score networks, state-dict compatible with its checkpoints: `ncsnpp` (NCSN++ and DDPM++, one
class whose config options pick the variant) and `ddpm` (Ho et al.'s U-Net as score_sde ships it).

State-dict layout (forced by the checkpoints, `module.` prefix removed):
- `sigmas`: a float64 buffer [num_scales], the SMLD levels exp(linspace(log sigma_max, log sigma_min, num_scales)),
  largest first; the net divides its output by one of them when `scale_by_sigma` and it is conditioned on a level;
- `all_modules.<i>.*`: every layer in one flat list, in construction order: [Fourier projection `W` (NCSN++ with
  `embedding_type` fourier; not trainable, so absent from the EMA list)], [two Linear layers of the noise embedding
  when `conditional`], the input conv, per resolution (high to low) its residual blocks (+ attention) and a
  downsampling layer (+ the input-pyramid layer), the middle block/attention/block, per resolution (low to high)
  num_res_blocks + 1 blocks (+ attention, + output-pyramid layers) and an upsampling layer, the output GroupNorm and
  conv. Sub-layers are named as upstream names them (GroupNorm_0, Conv_0, Dense_0, NIN_0, Conv2d_0, ...).
Parameters are registered in upstream's order, so `parameters()` lines up with the EMA `shadow_params` list.

FIR resampling (StyleGAN2's upfirdn2d with a separable kernel, [1, 3, 3, 1] in every published config) is written
here with plain torch ops: zero-insertion upsampling, zero padding, a depthwise convolution with the flipped kernel,
and decimation. Inputs are in the data range the config says (the net maps uncentred [0, 1] data by 2x - 1 itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NCSNpp", "DDPM", "smld_sigmas", "timestep_embedding"]

ACTIVATIONS = {
    "swish": nn.SiLU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
}
SQRT2 = math.sqrt(2.0)


# --- option parsing ----------------------------------------------------------------------------------------------
def _option(model: Mapping[str, Any], key: str, choices: Sequence[Any] | None = None) -> Any:
    if key not in model:
        raise ValueError(f"score_sde config: model.{key} is missing")
    value = model[key]
    if isinstance(value, str):
        value = value.lower()
    if choices is not None and value not in choices:
        raise ValueError(f"score_sde config: model.{key} = {value!r} is not supported (expected one of {choices})")
    return value


def _activation(model: Mapping[str, Any]) -> nn.Module:
    return ACTIVATIONS[_option(model, "nonlinearity", tuple(ACTIVATIONS))]()


def smld_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> Tensor:
    """score_sde's discrete SMLD levels (float64, largest first): exp(linspace(log sigma_max, log sigma_min, N))."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64).exp()


def timestep_embedding(t: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """DDPM's sinusoidal embedding of (possibly fractional) timesteps t: [sin(t w_k), cos(t w_k)],
    w_k = 10000^(-k / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=t.device) * (-math.log(10000.0) / (half - 1)))
    angles = t.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _fan_avg_uniform_(w: Tensor, scale: float = 1.0, fan_in: int | None = None, fan_out: int | None = None) -> None:
    """DDPM's initialisation (uniform with variance scale / mean fan); only for freshly built nets, the loader
    overwrites every value."""
    receptive = w[0, 0].numel() if w.ndim > 2 else 1
    fan_in = fan_in if fan_in is not None else w.shape[1] * receptive
    fan_out = fan_out if fan_out is not None else w.shape[0] * receptive
    bound = math.sqrt(3 * scale / ((fan_in + fan_out) / 2))
    with torch.no_grad():
        w.uniform_(-bound, bound)


# --- FIR resampling (upfirdn2d) ----------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _fir_kernel(taps: tuple[float, ...], gain: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The separable kernel outer(taps, taps) normalised to sum `gain`, flipped for conv2d, as [1, 1, k, k]."""
    k = torch.tensor(taps, dtype=torch.float64)
    k2 = torch.outer(k, k)
    k2 = k2 / k2.sum() * gain
    return k2.flip(0, 1)[None, None].to(device=device, dtype=dtype)


def upfirdn(
    x: Tensor, taps: tuple[float, ...], gain: float, pad: tuple[int, int], up: int = 1, down: int = 1
) -> Tensor:
    """Upsample by zero insertion, pad (before, after) on both axes, filter with the FIR kernel, decimate."""
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    kernel = _fir_kernel(taps, gain, x.device, x.dtype)
    y = F.conv2d(x.reshape(b * c, 1, *x.shape[2:]), kernel)
    y = y.reshape(b, c, *y.shape[2:])
    return y[:, :, ::down, ::down] if down > 1 else y


def fir_upsample(x: Tensor, taps: tuple[float, ...]) -> Tensor:
    """2x upsampling with the FIR filter (gain 4 so that a constant image stays constant)."""
    p = len(taps) - 2
    return upfirdn(x, taps, 4.0, ((p + 1) // 2 + 1, p // 2), up=2)


def fir_downsample(x: Tensor, taps: tuple[float, ...]) -> Tensor:
    """2x downsampling with the FIR filter."""
    p = len(taps) - 2
    return upfirdn(x, taps, 1.0, ((p + 1) // 2, p // 2), down=2)


class FirConv(nn.Module):
    """A k x k convolution fused with FIR 2x up- or downsampling (upstream's up_or_down_sampling.Conv2d)."""

    def __init__(self, in_ch: int, out_ch: int, taps: Sequence[float], *, up: bool, kernel: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(out_ch))
        self.taps = tuple(float(t) for t in taps)
        self.up = up
        _fan_avg_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        k, n = self.weight.shape[-1], len(self.taps)
        if self.up:  # transposed stride-2 conv with the spatially flipped weight, then the FIR filter
            p = (n - 2) - (k - 1)
            w = self.weight.flip(2, 3).transpose(0, 1)
            x = F.conv_transpose2d(x, w, stride=2)
            x = upfirdn(x, self.taps, 4.0, ((p + 1) // 2 + 1, p // 2 + 1))
        else:  # the FIR filter, then a stride-2 conv
            p = (n - 2) + (k - 1)
            x = upfirdn(x, self.taps, 1.0, ((p + 1) // 2, p // 2))
            x = F.conv2d(x, self.weight, stride=2)
        return x + self.bias.view(1, -1, 1, 1)


# --- layers --------------------------------------------------------------------------------------------------------
def _conv(in_ch: int, out_ch: int, size: int = 3, stride: int = 1, padding: int | None = None) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, size, stride=stride, padding=size // 2 if padding is None else padding)


def _norm(channels: int, groups: int | None = None) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6: NCSN++ uses min(C // 4, 32) groups, DDPM 32."""
    return nn.GroupNorm(min(channels // 4, 32) if groups is None else groups, channels, eps=1e-6)


class NIN(nn.Module):
    """A per-pixel linear map (a 1x1 conv stored as W [in, out], b [out])."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_ch, out_ch))
        self.b = nn.Parameter(torch.zeros(out_ch))
        _fan_avg_uniform_(self.W, 0.1, fan_in=in_ch, fan_out=out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b.view(1, -1, 1, 1)


class FourierEmbedding(nn.Module):
    """Gaussian Fourier features [sin(2 pi x W), cos(2 pi x W)] of x = log sigma; W is fixed (not trained)."""

    def __init__(self, size: int, scale: float = 16.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        angles = x[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SelfAttention(nn.Module):
    """Single-head self-attention over all pixels, added back to the input (divided by sqrt 2 with skip_rescale)."""

    def __init__(self, channels: int, *, groups: int | None, skip_rescale: bool):
        super().__init__()
        self.GroupNorm_0 = _norm(channels, groups)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.GroupNorm_0(x)
        q, k, v = (m(y).reshape(b, c, h * w) for m in (self.NIN_0, self.NIN_1, self.NIN_2))
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c**-0.5, dim=-1)  # [b, query pixel, key pixel]
        y = self.NIN_3(torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w))
        return (x + y) / SQRT2 if self.skip_rescale else x + y


class ResBlock(nn.Module):
    """Pre-activation residual block with the noise embedding added after the first conv.

    One class for upstream's three: DDPM's (32 groups, NIN shortcut), DDPM++'s (min(C/4, 32) groups, NIN shortcut,
    optional skip rescale) and BigGAN's (1x1-conv shortcut, optional FIR or naive 2x up/downsampling inside).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        act: nn.Module,
        *,
        temb_dim: int | None,
        dropout: float,
        groups: int | None = None,
        skip_rescale: bool = False,
        biggan: bool = False,
        resample: str | None = None,
        taps: Sequence[float] | None = None,
    ):
        super().__init__()
        self.GroupNorm_0 = _norm(in_ch, groups)
        self.Conv_0 = _conv(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = _norm(out_ch, groups)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch)
        self.shortcut: str | None = None
        if biggan and (in_ch != out_ch or resample is not None):
            self.Conv_2 = _conv(in_ch, out_ch, size=1)
            self.shortcut = "Conv_2"
        elif not biggan and in_ch != out_ch:
            self.NIN_0 = NIN(in_ch, out_ch)
            self.shortcut = "NIN_0"
        self.act = act
        self.skip_rescale = skip_rescale
        self.resample = resample
        self.taps = None if taps is None else tuple(float(t) for t in taps)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return fir_upsample(x, self.taps) if self.taps else F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return fir_downsample(x, self.taps) if self.taps else F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        h = self.act(self.GroupNorm_0(x))
        h, x = self._resample(h), self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.shortcut is not None:
            x = getattr(self, self.shortcut)(x)
        return (x + h) / SQRT2 if self.skip_rescale else x + h


class Upsample(nn.Module):
    """2x upsampling: nearest (+ 3x3 conv `Conv_0`), or FIR (fused with a 3x3 conv `Conv2d_0`)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv: bool, taps: Sequence[float] | None):
        super().__init__()
        out_ch = out_ch or in_ch
        self.taps = None if taps is None else tuple(float(t) for t in taps)
        if with_conv and self.taps:
            self.Conv2d_0 = FirConv(in_ch, out_ch, self.taps, up=True)
        elif with_conv:
            self.Conv_0 = _conv(in_ch, out_ch)
        self.with_conv = with_conv

    def forward(self, x: Tensor) -> Tensor:
        if self.taps:
            return self.Conv2d_0(x) if self.with_conv else fir_upsample(x, self.taps)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.Conv_0(x) if self.with_conv else x


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 conv `Conv_0` on the input padded right/bottom (TF 'SAME') or 2x2 average
    pooling, or FIR (fused with a 3x3 conv `Conv2d_0`)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv: bool, taps: Sequence[float] | None):
        super().__init__()
        out_ch = out_ch or in_ch
        self.taps = None if taps is None else tuple(float(t) for t in taps)
        if with_conv and self.taps:
            self.Conv2d_0 = FirConv(in_ch, out_ch, self.taps, up=False)
        elif with_conv:
            self.Conv_0 = _conv(in_ch, out_ch, stride=2, padding=0)
        self.with_conv = with_conv

    def forward(self, x: Tensor) -> Tensor:
        if self.taps:
            return self.Conv2d_0(x) if self.with_conv else fir_downsample(x, self.taps)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class Combine(nn.Module):
    """Merge the input pyramid into the features: a 1x1 conv of the pyramid, then a sum or a concatenation."""

    def __init__(self, in_ch: int, out_ch: int, method: str):
        super().__init__()
        self.Conv_0 = _conv(in_ch, out_ch, size=1)
        self.method = method

    def forward(self, pyramid: Tensor, h: Tensor) -> Tensor:
        p = self.Conv_0(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h


# --- the networks ----------------------------------------------------------------------------------------------------
class _ScoreNet(nn.Module):
    """What both networks share: the options, the `sigmas` buffer and the noise embedding MLP."""

    def __init__(self, model: Mapping[str, Any], image_size: int, num_channels: int, centered: bool):
        super().__init__()
        self.act = _activation(model)
        smin, smax = float(_option(model, "sigma_min")), float(_option(model, "sigma_max"))
        self.register_buffer("sigmas", smld_sigmas(smin, smax, int(_option(model, "num_scales"))))
        self.nf = int(_option(model, "nf"))
        self.ch_mult = [int(m) for m in _option(model, "ch_mult")]
        self.num_res_blocks = int(_option(model, "num_res_blocks"))
        self.attn_resolutions = {int(r) for r in _option(model, "attn_resolutions")}
        self.dropout = float(_option(model, "dropout"))
        self.resamp_with_conv = bool(_option(model, "resamp_with_conv"))
        self.conditional = bool(_option(model, "conditional"))
        self.scale_by_sigma = bool(_option(model, "scale_by_sigma"))
        self.centered = bool(centered)
        self.channels = int(num_channels)
        self.resolutions = [int(image_size) // 2**i for i in range(len(self.ch_mult))]
        if int(image_size) % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(
                f"score_sde config: data.image_size {image_size} is not divisible by 2^{len(self.ch_mult) - 1} "
                f"(model.ch_mult has {len(self.ch_mult)} resolutions)"
            )
        self.all_modules = nn.ModuleList()

    def _add(self, module: nn.Module) -> None:
        self.all_modules.append(module)

    def _add_embedding_mlp(self, embed_dim: int) -> None:
        if self.conditional:
            self._add(nn.Linear(embed_dim, self.nf * 4))
            self._add(nn.Linear(self.nf * 4, self.nf * 4))

    def _embed(self, temb: Tensor, take) -> Tensor | None:
        if not self.conditional:
            return None
        first = take()
        return take()(self.act(first(temb)))

    def _level_sigmas(self, cond: Tensor, like: Tensor) -> Tensor:
        """sigmas[level] for integer-valued levels (upstream indexes with .long()), shaped to divide `like`."""
        return self.sigmas[cond.long()].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def _data_in(self, x: Tensor) -> Tensor:
        return x if self.centered else 2 * x - 1


class NCSNpp(_ScoreNet):
    """score_sde's `ncsnpp` network: NCSN++ (FIR, Fourier, BigGAN blocks) and DDPM++ (positional, no FIR), by config.

    net(x, cond): cond is sigma with the Fourier embedding (its log is embedded), else the (possibly fractional)
    timestep or level index; with scale_by_sigma the output is divided by sigma (Fourier) or sigmas[cond].
    """

    def __init__(self, model: Mapping[str, Any], image_size: int, num_channels: int, centered: bool):
        super().__init__(model, image_size, num_channels, centered)
        taps = [float(t) for t in _option(model, "fir_kernel")] if _option(model, "fir") else None
        self.skip_rescale = bool(_option(model, "skip_rescale"))
        self.resblock_type = _option(model, "resblock_type", ("ddpm", "biggan"))
        self.progressive = _option(model, "progressive", ("none", "output_skip", "residual"))
        self.progressive_input = _option(model, "progressive_input", ("none", "input_skip", "residual"))
        self.combine = _option(model, "progressive_combine", ("sum", "cat"))
        self.embedding_type = _option(model, "embedding_type", ("fourier", "positional"))
        self.taps = None if taps is None else tuple(taps)
        nf, channels = self.nf, self.channels

        def block(in_ch: int, out_ch: int | None = None, resample: str | None = None) -> ResBlock:
            return ResBlock(
                in_ch,
                out_ch or in_ch,
                self.act,
                temb_dim=4 * nf,
                dropout=self.dropout,
                skip_rescale=self.skip_rescale,
                biggan=self.resblock_type == "biggan",
                resample=resample,
                taps=taps,
            )

        def attention(ch: int) -> SelfAttention:
            return SelfAttention(ch, groups=None, skip_rescale=self.skip_rescale)

        if self.embedding_type == "fourier":
            self._add(FourierEmbedding(nf, float(model.get("fourier_scale", 16.0))))
        self._add_embedding_mlp(2 * nf if self.embedding_type == "fourier" else nf)

        self._add(_conv(channels, nf))
        skips, ch, pyramid_ch = [nf], nf, channels
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                self._add(block(ch, nf * mult))
                ch = nf * mult
                if self.resolutions[level] in self.attn_resolutions:
                    self._add(attention(ch))
                skips.append(ch)
            if level != len(self.ch_mult) - 1:
                if self.resblock_type == "ddpm":
                    self._add(Downsample(ch, with_conv=self.resamp_with_conv, taps=taps))
                else:
                    self._add(block(ch, resample="down"))
                if self.progressive_input == "input_skip":
                    self._add(Combine(pyramid_ch, ch, self.combine))
                    ch = 2 * ch if self.combine == "cat" else ch
                elif self.progressive_input == "residual":
                    self._add(Downsample(pyramid_ch, ch, with_conv=True, taps=taps))
                    pyramid_ch = ch
                skips.append(ch)

        ch = skips[-1]
        self._add(block(ch))
        self._add(attention(ch))
        self._add(block(ch))

        pyramid_ch = 0
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                self._add(block(ch + skips.pop(), nf * self.ch_mult[level]))
                ch = nf * self.ch_mult[level]
            if self.resolutions[level] in self.attn_resolutions:
                self._add(attention(ch))
            if self.progressive != "none":
                if level == len(self.ch_mult) - 1:  # the pyramid starts at the lowest resolution
                    self._add(_norm(ch))
                    pyramid_ch = channels if self.progressive == "output_skip" else ch
                    self._add(_conv(ch, pyramid_ch))
                elif self.progressive == "output_skip":
                    self._add(_norm(ch))
                    self._add(_conv(ch, channels))
                else:
                    self._add(Upsample(pyramid_ch, ch, with_conv=True, taps=taps))
                    pyramid_ch = ch
            if level != 0:
                if self.resblock_type == "ddpm":
                    self._add(Upsample(ch, with_conv=self.resamp_with_conv, taps=taps))
                else:
                    self._add(block(ch, resample="up"))
        assert not skips
        if self.progressive != "output_skip":
            self._add(_norm(ch))
            self._add(_conv(ch, channels))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        take = iter(self.all_modules).__next__
        if self.embedding_type == "fourier":
            temb = take()(torch.log(cond))
        else:
            temb = timestep_embedding(cond, self.nf, x.dtype)
        temb = self._embed(temb, take)

        x = self._data_in(x)
        pyramid = x if self.progressive_input != "none" else None
        hs = [take()(x)]
        last = len(self.ch_mult) - 1
        for level in range(len(self.ch_mult)):
            for _ in range(self.num_res_blocks):
                h = take()(hs[-1], temb)
                if self.resolutions[level] in self.attn_resolutions:
                    h = take()(h)
                hs.append(h)
            if level != last:
                h = take()(hs[-1]) if self.resblock_type == "ddpm" else take()(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    pyramid = fir_downsample(pyramid, self.taps) if self.taps else F.avg_pool2d(pyramid, 2)
                    h = take()(pyramid, h)
                elif self.progressive_input == "residual":
                    pyramid = take()(pyramid) + h
                    pyramid = pyramid / SQRT2 if self.skip_rescale else pyramid
                    h = pyramid
                hs.append(h)

        h = take()(hs[-1], temb)
        h = take()(h)
        h = take()(h, temb)

        out = None  # the output pyramid
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = take()(torch.cat([h, hs.pop()], dim=1), temb)
            if self.resolutions[level] in self.attn_resolutions:
                h = take()(h)
            if self.progressive != "none":
                if level == last:
                    norm = take()
                    out = take()(self.act(norm(h)))
                elif self.progressive == "output_skip":
                    out = fir_upsample(out, self.taps) if self.taps else F.interpolate(out, scale_factor=2.0)
                    norm = take()
                    out = out + take()(self.act(norm(h)))
                else:
                    out = take()(out) + h
                    out = out / SQRT2 if self.skip_rescale else out
                    h = out
            if level != 0:
                h = take()(h) if self.resblock_type == "ddpm" else take()(h, temb)
        assert not hs

        if self.progressive == "output_skip":
            h = out
        else:
            norm = take()
            h = take()(self.act(norm(h)))
        if self.scale_by_sigma:
            if self.embedding_type == "fourier":
                h = h / cond.to(h.dtype).view(-1, *([1] * (h.ndim - 1)))
            else:
                h = h / self._level_sigmas(cond, h)
        return h


class DDPM(_ScoreNet):
    """score_sde's `ddpm` network (Ho et al. 2020's U-Net): 32-group GroupNorm, NIN shortcuts, nearest/conv
    resampling, positional embedding of the (possibly fractional) timestep or level index.

    With scale_by_sigma (SMLD training) the output is divided by sigmas[cond].
    """

    def __init__(self, model: Mapping[str, Any], image_size: int, num_channels: int, centered: bool):
        super().__init__(model, image_size, num_channels, centered)
        nf, channels = self.nf, self.channels

        def block(in_ch: int, out_ch: int | None = None) -> ResBlock:
            return ResBlock(in_ch, out_ch or in_ch, self.act, temb_dim=4 * nf, dropout=self.dropout, groups=32)

        def attention(ch: int) -> SelfAttention:
            return SelfAttention(ch, groups=32, skip_rescale=False)

        self._add_embedding_mlp(nf)
        self._add(_conv(channels, nf))
        skips, ch = [nf], nf
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                self._add(block(ch, nf * mult))
                ch = nf * mult
                if self.resolutions[level] in self.attn_resolutions:
                    self._add(attention(ch))
                skips.append(ch)
            if level != len(self.ch_mult) - 1:
                self._add(Downsample(ch, with_conv=self.resamp_with_conv, taps=None))
                skips.append(ch)
        ch = skips[-1]
        self._add(block(ch))
        self._add(attention(ch))
        self._add(block(ch))
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                self._add(block(ch + skips.pop(), nf * self.ch_mult[level]))
                ch = nf * self.ch_mult[level]
            if self.resolutions[level] in self.attn_resolutions:
                self._add(attention(ch))
            if level != 0:
                self._add(Upsample(ch, with_conv=self.resamp_with_conv, taps=None))
        assert not skips
        self._add(_norm(ch, 32))
        self._add(_conv(ch, channels))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        take = iter(self.all_modules).__next__
        temb = self._embed(timestep_embedding(cond, self.nf, x.dtype), take)
        hs = [take()(self._data_in(x))]
        for level in range(len(self.ch_mult)):
            for _ in range(self.num_res_blocks):
                h = take()(hs[-1], temb)
                if self.resolutions[level] in self.attn_resolutions:
                    h = take()(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                hs.append(take()(hs[-1]))
        h = take()(hs[-1], temb)
        h = take()(h)
        h = take()(h, temb)
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = take()(torch.cat([h, hs.pop()], dim=1), temb)
            if self.resolutions[level] in self.attn_resolutions:
                h = take()(h)
            if level != 0:
                h = take()(h)
        assert not hs
        norm = take()
        h = take()(self.act(norm(h)))
        return h / self._level_sigmas(cond, h) if self.scale_by_sigma else h
