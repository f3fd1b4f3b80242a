"""The networks of NVlabs/edm (training/networks.py), written for scorebench, state-dict compatible with EDM's pickles.

Class names, constructor arguments and parameter names are those the pickles carry (a pickle names each object's
class and stores its constructor arguments; models.upstream.edm rebuilds the network from the top-level ones):
- layers: Linear, Conv2d (with EDM's up/down resampling by an outer-product FIR filter, [1,1] or [1,3,3,1]), GroupNorm,
  UNetBlock (the residual block of DDPM++, NCSN++ and ADM with optional self-attention), PositionalEmbedding,
  FourierEmbedding;
- U-Nets: SongUNet (DDPM++ / NCSN++ of Song et al. 2021: positional or Fourier embedding, standard/skip/residual
  encoder, standard/skip decoder) and DhariwalUNet (ADM of Dhariwal & Nichol 2021);
- preconditioners (Karras et al. 2022, Table 1), each D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) over VE-terms
  x = x0 + sigma eps: VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond. A preconditioner is the network scorebench's
  NetworkDenoiser calls as net(x_native, sigma) with an x0 prediction; `class_labels` fixes the class of a
  conditional network.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..processes import DDPMProcess, Process, VEProcess, VPProcess

__all__ = [
    "Linear",
    "Conv2d",
    "GroupNorm",
    "UNetBlock",
    "PositionalEmbedding",
    "FourierEmbedding",
    "SongUNet",
    "DhariwalUNet",
    "Precond",
    "VPPrecond",
    "VEPrecond",
    "iDDPMPrecond",
    "EDMPrecond",
    "UNETS",
    "PRECONDS",
    "CLASSES",
]


def random_weight(shape: list[int], mode: str, fan_in: int, fan_out: int) -> Tensor:
    """A random tensor by EDM's init modes (xavier/kaiming, uniform/normal)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(
        f"unknown init_mode {mode!r}; expected xavier_uniform, xavier_normal, kaiming_uniform or ...normal"
    )


# --- layers ---------------------------------------------------------------------------------------------------------
class Linear(nn.Module):
    """y = x W^T + b, weights cast to the input's dtype (fp16 networks keep fp32 weights)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(random_weight([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(random_weight([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _resample_filter(taps: list[float]) -> Tensor:
    """The 2-D FIR filter [1, 1, k, k]: outer product of the 1-D taps, normalised to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(nn.Module):
    """A k x k convolution (k = 0: none) with optional 2x up- or downsampling by the FIR `resample_filter`.

    Unfused: upsample (transposed depthwise filter, gain 4) or downsample (depthwise filter, stride 2), then convolve.
    Fused (fused_resample=True, NCSN++'s residual encoder): the padding of both in one step around the stride.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: list[float] | None = None,
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ):
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(random_weight(shape, **fans) * init_weight) if kernel else None
        self.bias = nn.Parameter(random_weight([out_channels], **fans) * init_bias) if kernel and bias else None
        taps = [1, 1] if resample_filter is None else resample_filter
        self.register_buffer("resample_filter", _resample_filter(taps) if up or down else None)

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and w is not None and self.up:
            up_filter = (4 * f).tile(self.in_channels, 1, 1, 1)
            x = F.conv_transpose2d(x, up_filter, groups=self.in_channels, stride=2, padding=w_pad + f_pad)
            x = F.conv2d(x, w)
        elif self.fused_resample and w is not None and self.down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                up_filter = (4 * f).tile(self.in_channels, 1, 1, 1)
                x = F.conv_transpose2d(x, up_filter, groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(num_groups, channels // min_channels_per_group) groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention_weights(q: Tensor, k: Tensor) -> Tensor:
    """softmax over keys of q^T k / sqrt(channels), computed in float32: [N, C, Q], [N, C, K] -> [N, Q, K]."""
    logits = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float())
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(nn.Module):
    """Residual block: norm0 -> silu -> conv0 (up/down) -> + embedding (shift, or scale and shift) -> norm1 -> silu ->
    dropout -> conv1, plus the (projected, resampled) input, times skip_scale; then optional multi-head self-attention
    (norm2 -> qkv -> attention -> proj, residual, times skip_scale)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: list[float] | None = None,
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict[str, Any] | None = None,
        init_zero: dict[str, Any] | None = None,
        init_attn: dict[str, Any] | None = None,
    ):
        super().__init__()
        init = {} if init is None else init
        init_zero = {"init_weight": 0} if init_zero is None else init_zero
        resample = dict(resample_filter=[1, 1] if resample_filter is None else resample_filter)
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, **resample, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        residual = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (residual if self.skip is None else self.skip(residual))) * self.skip_scale
        if self.num_heads:
            batch, channels = x.shape[:2]
            qkv = self.qkv(self.norm2(x)).reshape(batch * self.num_heads, channels // self.num_heads, 3, -1)
            q, k, v = qkv.unbind(2)
            attended = torch.einsum("nqk,nck->ncq", attention_weights(q, k), v)
            x = (self.proj(attended.reshape(x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """[cos(x f_i), sin(x f_i)] with f_i = (1 / max_positions) ** (i / (n/2 - endpoint)), i < n/2 (DDPM++, ADM)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        angles = torch.outer(x, ((1 / self.max_positions) ** exponents).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """[cos(2 pi x f_i), sin(2 pi x f_i)] with random frequencies f ~ N(0, scale^2) stored as a buffer (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def drop_labels(labels: Tensor, p: float) -> Tensor:
    """Class labels [B, label_dim] with each row zeroed with probability p (classifier-free guidance training)."""
    if not p:
        return labels
    keep = torch.rand([labels.shape[0], 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)


# --- U-Nets ---------------------------------------------------------------------------------------------------------
class SongUNet(nn.Module):
    """DDPM++ (positional embedding, standard encoder/decoder, [1,1] filter) and NCSN++ (Fourier embedding, residual
    encoder, [1,3,3,1] filter, channel_mult_noise 2) of Song et al. 2021, in EDM's layout.

    Module names (`enc`/`dec` entries named `{res}x{res}_{role}`) are the state-dict keys of EDM's pickles; an `aux`
    entry belongs to the skip/residual paths of the input (encoder) or of the output (decoder).
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: list[int] | None = None,
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: list[int] | None = None,
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: list[float] | None = None,
    ):
        for option, value, choices in (
            ("embedding_type", embedding_type, ("fourier", "positional")),
            ("encoder_type", encoder_type, ("standard", "skip", "residual")),
            ("decoder_type", decoder_type, ("standard", "skip")),
        ):
            if value not in choices:
                raise ValueError(f"SongUNet: unknown {option} {value!r}; expected one of {', '.join(choices)}")
        super().__init__()
        channel_mult = [1, 2, 2, 2] if channel_mult is None else channel_mult
        attn_resolutions = [16] if attn_resolutions is None else attn_resolutions
        resample_filter = [1, 1] if resample_filter is None else resample_filter
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        block = dict(
            emb_channels=emb_channels,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=init_zero,
            init_attn=dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2)),
        )

        # mapping: noise level (and label, augmentation) -> embedding
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # encoder
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, kernel=3, **init)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        # decoder
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attention, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None = None
    ) -> Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [cos, sin] -> [sin, cos], as score_sde
        if self.map_label is not None:
            labels = drop_labels(class_labels, self.label_dropout if self.training else 0)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips: list[Tensor] = []
        aux = x
        for name, layer in self.enc.items():
            if "aux_down" in name:
                aux = layer(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + layer(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + layer(aux)) / math.sqrt(2)
            else:
                x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
                skips.append(x)

        out = hidden = None
        for name, layer in self.dec.items():
            if "aux_up" in name:
                out = layer(out)
            elif "aux_norm" in name:
                hidden = layer(x)
            elif "aux_conv" in name:
                hidden = layer(F.silu(hidden))
                out = hidden if out is None else hidden + out
            else:
                if x.shape[1] != layer.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return out


class DhariwalUNet(nn.Module):
    """ADM (Dhariwal & Nichol 2021) in EDM's layout: positional embedding, adaptive scale/shift blocks with 64-channel
    attention heads, label embedding added after the mapping layers."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: list[int] | None = None,
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: list[int] | None = None,
        dropout: float = 0.10,
        label_dropout: float = 0,
    ):
        super().__init__()
        channel_mult = [1, 2, 3, 4] if channel_mult is None else channel_mult
        attn_resolutions = [32, 16, 8] if attn_resolutions is None else attn_resolutions
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = None
        if label_dim:
            label_init = dict(init_mode="kaiming_normal", init_weight=math.sqrt(label_dim))
            self.map_label = Linear(label_dim, emb_channels, bias=False, **label_init)

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels * mult, kernel=3, **init)
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(
        self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None = None
    ) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(drop_labels(class_labels, self.label_dropout if self.training else 0))
        emb = F.silu(emb)

        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for layer in self.dec.values():
            if x.shape[1] != layer.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


UNETS: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


# --- preconditioners ------------------------------------------------------------------------------------------------
class Precond(nn.Module):
    """EDM's preconditioned denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) around a U-Net `model`.

    A subclass gives the four scalings (Karras et al. 2022, Table 1) and the scorebench process of its training.
    `class_labels` is the class index every sample of a conditional network (label_dim > 0) is drawn from; an
    unconditional network takes none. `use_fp16` runs the U-Net in half precision on CUDA, as EDM does.
    """

    variance_preserving = False  # whether scorebench's process scales x_native = x_ve / sqrt(1 + sigma^2)
    out_factor = 1  # the U-Net's output channels per image channel (iDDPM also predicts variances)

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool,
        model_type: str,
        class_labels: int | None,
        model_kwargs: dict[str, Any],
    ):
        super().__init__()
        if model_type not in UNETS:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {', '.join(UNETS)}")
        if label_dim and class_labels is None:
            raise ValueError(
                f"a class-conditional network ({label_dim} classes) needs class_labels=K, the class index to sample"
            )
        if not label_dim and class_labels is not None:
            raise ValueError(f"class_labels={class_labels!r} given, but the network is unconditional (label_dim 0)")
        if class_labels is not None and (
            isinstance(class_labels, bool) or not isinstance(class_labels, int) or not 0 <= class_labels < label_dim
        ):
            raise ValueError(f"class_labels must be a class index in 0..{label_dim - 1}, got {class_labels!r}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.class_labels = use_fp16, class_labels
        self.model = UNETS[model_type](
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=img_channels * self.out_factor,
            label_dim=label_dim,
            **model_kwargs,
        )

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        """(c_skip, c_out, c_in, c_noise) at noise levels sigma [B, 1, 1, 1] (float32)."""
        raise NotImplementedError

    def process(self) -> Process:
        """The scorebench process matching this preconditioning."""
        raise NotImplementedError

    def sigma_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max) the network was trained for."""
        sde = self.process()
        return sde.sigma_min, sde.sigma_max

    def edm_denoise(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """EDM's D(x; sigma) in VE terms, float32; class_labels [B, label_dim] (one-hot) or None: this net's class."""
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim and class_labels is None:
            class_labels = F.one_hot(
                torch.full((x.shape[0],), self.class_labels, device=x.device), self.label_dim
            ).float()
        elif self.label_dim:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels)
        return c_skip * x + c_out * F_x[:, : self.img_channels].to(torch.float32)

    def forward(self, x_native: Tensor, sigma: Tensor) -> Tensor:
        """D(x; sigma) from scorebench's NetworkDenoiser, which passes x_native = s(sigma) x_ve in the process's
        coordinates: s = 1 for VE, and 1 / sqrt(1 + sigma^2) for VP, undone here exactly (EDM's precond takes x_ve)."""
        sigma32 = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        x = x_native.to(torch.float32)
        if self.variance_preserving:
            x = x * (1 + sigma32.square()).sqrt()
        return self.edm_denoise(x, sigma32).to(x_native.dtype)


class VPPrecond(Precond):
    """VP (Song et al. 2021): c_skip 1, c_out -sigma, c_in 1/sqrt(sigma^2+1), c_noise (M-1) t(sigma), with
    sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) for t in [epsilon_t, 1]."""

    variance_preserving = True

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        class_labels: int | None = None,
        **model_kwargs: Any,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, class_labels, model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        # log(1 + sigma^2) as EDM writes it (not log1p), so that c_noise rounds as in the reference outputs
        return (torch.sqrt(self.beta_min**2 + 2 * self.beta_d * torch.log(1 + sigma**2)) - self.beta_min) / self.beta_d

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        return 1.0, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.t_of_sigma(sigma)

    def process(self) -> Process:
        return VPProcess(self.beta_min, self.beta_min + self.beta_d)

    def sigma_range(self) -> tuple[float, float]:
        sde, t = self.process(), torch.tensor([self.epsilon_t, 1.0], dtype=torch.float64)
        return tuple(float(s) for s in sde.sigma(t))


class VEPrecond(Precond):
    """VE (Song et al. 2021): c_skip 1, c_out sigma, c_in 1, c_noise log(sigma / 2)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        model_type: str = "SongUNet",
        class_labels: int | None = None,
        **model_kwargs: Any,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, class_labels, model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        return 1.0, sigma, 1.0, torch.log(0.5 * sigma)

    def process(self) -> Process:
        return VEProcess(self.sigma_min, self.sigma_max)


class iDDPMPrecond(Precond):  # the class name the pickles carry
    """iDDPM (Nichol & Dhariwal 2021): c_skip 1, c_out -sigma, c_in 1/sqrt(sigma^2+1), c_noise M-1-j(sigma), j the
    index of the nearest of the M+1 levels u_j of the cosine schedule (u_M = 0, u_0 the largest). The U-Net also
    predicts variances (2x channels), which D ignores. Its process is the discrete VP with those M levels."""

    variance_preserving = True
    out_factor = 2

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        C_1: float = 0.001,  # EDM's argument names
        C_2: float = 0.008,
        M: int = 1000,
        model_type: str = "DhariwalUNet",
        class_labels: int | None = None,
        **model_kwargs: Any,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, class_labels, model_kwargs)
        self.C_1, self.C_2, self.M = C_1, C_2, M
        u = torch.zeros(M + 1)  # float32, as the levels EDM stores
        for j in range(M, 0, -1):  # u_{j-1}^2 + 1 = (u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1)
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)

    def alpha_bar(self, j: int | Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * torch.as_tensor(j) / self.M / (self.C_2 + 1)) ** 2

    def level_index(self, sigma: Tensor) -> Tensor:
        """Index j of the level u_j nearest to each sigma."""
        return (sigma.reshape(-1, 1).to(self.u.dtype) - self.u.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        c_noise = self.M - 1 - self.level_index(sigma).to(torch.float32)
        return 1.0, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise

    def process(self) -> Process:
        # DDPM index k (t = (k+1)/M) sits at level u_{M-1-k}: alpha_bar_k = 1 / (1 + u_{M-1-k}^2)
        alpha_bar = 1 / (1 + self.u[:-1].flip(0).double() ** 2)
        betas = 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        return DDPMProcess(betas=betas)

    def sigma_range(self) -> tuple[float, float]:
        return float(self.u[self.M - 1]), float(self.u[0])


class EDMPrecond(Precond):
    """EDM (Karras et al. 2022): c_skip sd^2/(sigma^2+sd^2), c_out sigma sd/sqrt(sigma^2+sd^2), c_in
    1/sqrt(sigma^2+sd^2), c_noise log(sigma)/4, sd = sigma_data. Trained on all sigma; scorebench's process is the
    VE one over EDM's sampling range 0.002..80 unless the network states a finite range."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        class_labels: int | None = None,
        **model_kwargs: Any,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, class_labels, model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor]:
        variance = sigma**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / variance
        return c_skip, sigma * self.sigma_data / variance.sqrt(), 1 / variance.sqrt(), sigma.log() / 4

    def process(self) -> Process:
        sigma_min = self.sigma_min if self.sigma_min > 0 else 0.002
        sigma_max = self.sigma_max if math.isfinite(self.sigma_max) else 80.0
        return VEProcess(sigma_min, sigma_max)


PRECONDS: dict[str, type[Precond]] = {
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
    "iDDPMPrecond": iDDPMPrecond,
    "EDMPrecond": EDMPrecond,
}

# every persistent class of EDM's training/networks.py, by the name its pickles carry
CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (Linear, Conv2d, GroupNorm, UNetBlock, PositionalEmbedding, FourierEmbedding, *UNETS.values())
} | PRECONDS
