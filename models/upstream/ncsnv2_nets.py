"""The dilated RefineNet score networks of ermongroup/ncsnv2 (NCSNv2, Deeper, Deepest) and ermongroup/ncsn (NCSN v1).

State-dict compatible with the upstream modules (after DataParallel's `module.` prefix is removed):
- NCSNv2 (ncsnv2 models/ncsnv2.py): `begin_conv`, encoder stages `res1`, `res2`, ... (lists of residual blocks with
  `conv1`, `normalize1`, `conv2`, `normalize2` and, where shapes change, `shortcut`), decoder blocks `refine1`, ...
  (`adapt_convs.i.{b}_{s}_conv`, `msf.convs.i`, `crp.convs.i`, `output_convs.{b}_{s}_conv`), `normalizer`,
  `end_conv` and the `sigmas` buffer (the geometric noise levels). The normalisation is unconditional; the output is
  divided by sigmas[y]. Variants: "ncsnv2" (4 stages; CIFAR-10, CelebA), "deeper" (5; LSUN), "deepest" (6; FFHQ).
- NCSN v1 (ncsn models/cond_refinenet_dilated.py, CondRefineNetDilated): the "ncsnv2" layout with every normalisation
  conditioned on the level index (conditional InstanceNorm++: an embedding row [gamma | alpha | beta] per level),
  normalisations also inside the RefineNet units, average instead of max pooling in the chained residual pooling, and
  the output is the score itself (not divided by sigma).

Both networks see data in [0, 1] and map it by 2x - 1 first (`rescale_input`), as the upstream does unless the data
was already rescaled or logit-transformed; both take (x, y) with y the level index, 0 = the largest sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NCSNv2Net",
    "NCSNNet",
    "VARIANTS",
    "NORMALIZATIONS",
    "ACTIVATIONS",
    "noise_levels",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": partial(nn.LeakyReLU, 0.2),
    "swish": nn.SiLU,  # ncsnv2's swish is x * sigmoid(x)
}


# --- normalisations: every one is called as norm(x, y); the unconditional ones ignore y --------------------------
def _instance_plus(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None) -> Tensor:
    """InstanceNorm++: instance-normalise, then add back the channel means (standardised across channels) times alpha.
    gamma/alpha/beta are [C] or [B, C]."""
    means = x.mean(dim=(2, 3))
    means = (means - means.mean(dim=-1, keepdim=True)) / torch.sqrt(means.var(dim=-1, keepdim=True) + 1e-5)
    h = F.instance_norm(x, eps=1e-5) + means[..., None, None] * alpha[..., None, None]
    h = h * gamma.reshape(-1, x.shape[1], 1, 1)
    return h if beta is None else h + beta.reshape(-1, x.shape[1], 1, 1)


class InstanceNormPlus(nn.Module):
    """ncsnv2's InstanceNorm2dPlus: parameters alpha, gamma (and beta unless bias is false)."""

    def __init__(self, features: int, bias: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(features))
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features)) if bias else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return _instance_plus(x, self.gamma, self.alpha, self.beta)


class CondInstanceNormPlus(nn.Module):
    """ncsn's ConditionalInstanceNorm2dPlus with bias: `embed` holds per level [gamma | alpha | beta]."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, 3 * features)
        with torch.no_grad():
            self.embed.weight[:, : 2 * features].fill_(1.0)
            self.embed.weight[:, 2 * features :].zero_()

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        assert y is not None, "a conditional normalisation needs the level index"
        gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
        return _instance_plus(x, gamma, alpha, beta)


class VarianceNorm(nn.Module):
    """ncsnv2's VarianceNorm2d: x / sqrt(var over pixels + 1e-5) * alpha."""

    def __init__(self, features: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(features))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = x / torch.sqrt(x.var(dim=(2, 3), keepdim=True) + 1e-5)
        return h * self.alpha.reshape(1, -1, 1, 1)


class NoNorm(nn.Module):
    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return x


class BatchNorm(nn.BatchNorm2d):
    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return super().forward(x)


class InstanceNorm(nn.InstanceNorm2d):
    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return super().forward(x)


NORMALIZATIONS = ("InstanceNorm++", "InstanceNorm", "BatchNorm", "VarianceNorm", "NoneNorm")


def _norm(kind: str, features: int, eps: float = 1e-5) -> nn.Module:
    """An unconditional normalisation of ncsnv2's get_normalization(config, conditional=False).

    ncsnv2 builds each block's normalisations as cls(features) and the network's final one as cls(ngf, num_classes);
    that second positional argument is `eps` for torch's BatchNorm2d/InstanceNorm2d (so the final one there has
    eps = num_classes), and a truthy `bias` for InstanceNorm++ (beta present) and VarianceNorm (unused)."""
    if kind == "InstanceNorm++":
        return InstanceNormPlus(features)
    if kind == "InstanceNorm":
        return InstanceNorm(features, eps=eps)
    if kind == "BatchNorm":
        return BatchNorm(features, eps=eps)
    if kind == "VarianceNorm":
        return VarianceNorm(features)
    if kind == "NoneNorm":
        return NoNorm()
    raise ValueError(f"unknown normalization {kind!r}; ncsnv2 has {', '.join(NORMALIZATIONS)}")


# --- layers --------------------------------------------------------------------------------------------------------
def _conv3(cin: int, cout: int, *, bias: bool = True, dilation: int | None = None) -> nn.Conv2d:
    """3x3 convolution keeping the resolution (padding = dilation)."""
    d = dilation or 1
    return nn.Conv2d(cin, cout, 3, padding=d, dilation=d, bias=bias)


class ConvMeanPool(nn.Module):
    """A convolution, then 2x2 mean pooling; `adjust_padding` pads one row/column on the top/left first."""

    def __init__(self, cin: int, cout: int, kernel: int, adjust_padding: bool = False):
        super().__init__()
        conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), conv) if adjust_padding else conv

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return (h[..., ::2, ::2] + h[..., 1::2, ::2] + h[..., ::2, 1::2] + h[..., 1::2, 1::2]) / 4


class ResBlock(nn.Module):
    """Pre-activation residual block: norm, act, conv1, norm, act, conv2, plus the input (through `shortcut` when the
    channels change or the block is a `down` block). A down block halves the resolution by mean pooling, unless it
    is dilated: then it keeps the resolution and only widens the receptive field."""

    def __init__(
        self,
        cin: int,
        cout: int,
        act: nn.Module,
        norm: Callable[[int], nn.Module],
        *,
        down: bool = False,
        dilation: int | None = None,
        adjust_padding: bool = False,
    ):
        super().__init__()
        self.act = act
        self.shortcut: nn.Module | None = None
        if down:
            self.conv1 = _conv3(cin, cin, dilation=dilation)
            self.normalize2 = norm(cin)
            if dilation:
                self.conv2 = _conv3(cin, cout, dilation=dilation)
                self.shortcut = _conv3(cin, cout, dilation=dilation)
            else:
                self.conv2 = ConvMeanPool(cin, cout, 3, adjust_padding)
                self.shortcut = ConvMeanPool(cin, cout, 1, adjust_padding)
        else:
            self.conv1 = _conv3(cin, cout, dilation=dilation)
            self.normalize2 = norm(cout)
            self.conv2 = _conv3(cout, cout, dilation=dilation)
            if cin != cout:
                self.shortcut = _conv3(cin, cout, dilation=dilation) if dilation else nn.Conv2d(cin, cout, 1)
        self.normalize1 = norm(cin)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.conv1(self.act(self.normalize1(x, y)))
        h = self.conv2(self.act(self.normalize2(h, y)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class ResidualConvUnit(nn.Module):
    """RefineNet's RCU: n_blocks residual chains of n_stages (norm,) act, conv; modules named `{b}_{s}_conv` (and
    `{b}_{s}_norm` when conditional), both counted from 1."""

    def __init__(
        self, features: int, n_blocks: int, n_stages: int, act: nn.Module, norm: Callable[[int], nn.Module] | None
    ):
        super().__init__()
        self.act = act
        self.layout = [(f"{b}_{s}", norm is not None) for b in range(1, n_blocks + 1) for s in range(1, n_stages + 1)]
        self.n_stages = n_stages
        for name, with_norm in self.layout:
            if with_norm:
                self.add_module(f"{name}_norm", norm(features))
            self.add_module(f"{name}_conv", _conv3(features, features, bias=False))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        residual = x
        for k, (name, with_norm) in enumerate(self.layout):
            if with_norm:
                x = getattr(self, f"{name}_norm")(x, y)
            x = getattr(self, f"{name}_conv")(self.act(x))
            if (k + 1) % self.n_stages == 0:
                x = x + residual
                residual = x
        return x


class ChainedResidualPool(nn.Module):
    """RefineNet's CRP: act, then n_stages of (norm,) 5x5 pooling and conv, each added to the running sum. Max pooling
    in NCSNv2, average pooling (padding counted) in the conditional NCSN v1."""

    def __init__(self, features: int, n_stages: int, act: nn.Module, norm: Callable[[int], nn.Module] | None):
        super().__init__()
        self.act = act
        self.convs = nn.ModuleList(_conv3(features, features, bias=False) for _ in range(n_stages))
        self.norms = None if norm is None else nn.ModuleList(norm(features) for _ in range(n_stages))
        self.pool = nn.MaxPool2d(5, 1, 2) if norm is None else nn.AvgPool2d(5, 1, 2)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = self.act(x)
        path = x
        for i, conv in enumerate(self.convs):
            if self.norms is not None:
                path = self.norms[i](path, y)
            path = conv(self.pool(path))
            x = path + x
        return x


class MultiScaleFusion(nn.Module):
    """RefineNet's MSF: each input (normed when conditional) convolved to `features`, resized bilinearly (corners
    aligned) to the output shape, and summed."""

    def __init__(self, in_planes: list[int], features: int, norm: Callable[[int], nn.Module] | None):
        super().__init__()
        self.convs = nn.ModuleList(_conv3(c, features) for c in in_planes)
        self.norms = None if norm is None else nn.ModuleList(norm(c) for c in in_planes)

    def forward(self, xs: list[Tensor], y: Tensor, shape: tuple[int, int]) -> Tensor:
        total = None
        for i, (conv, x) in enumerate(zip(self.convs, xs, strict=True)):
            if self.norms is not None:
                x = self.norms[i](x, y)
            h = F.interpolate(conv(x), size=shape, mode="bilinear", align_corners=True)
            total = h if total is None else total + h
        assert total is not None
        return total


class RefineBlock(nn.Module):
    """RefineNet block: an RCU (2 x 2) per input, fusion (unless it is the first block), CRP, output RCU (3 blocks at
    the end of the decoder, else 1)."""

    def __init__(
        self,
        in_planes: list[int],
        features: int,
        act: nn.Module,
        norm: Callable[[int], nn.Module] | None,
        *,
        start: bool = False,
        end: bool = False,
    ):
        super().__init__()
        self.adapt_convs = nn.ModuleList(ResidualConvUnit(c, 2, 2, act, norm) for c in in_planes)
        self.output_convs = ResidualConvUnit(features, 3 if end else 1, 2, act, norm)
        self.msf = None if start else MultiScaleFusion(in_planes, features, norm)
        self.crp = ChainedResidualPool(features, 2, act, norm)

    def forward(self, xs: list[Tensor], y: Tensor, shape: tuple[int, int]) -> Tensor:
        hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs, strict=True)]
        h = hs[0] if self.msf is None else self.msf(hs, y, shape)
        return self.output_convs(self.crp(h, y), y)


# Encoder stages (name, input width, output width, dilation) in multiples of ngf: the first stage keeps the
# resolution; every later stage starts with a down block. Decoder blocks (name, width), deepest first: block k fuses
# encoder stage n-k with the previous block's output.
_ENCODERS = {
    "ncsnv2": (("res1", 1, 1, None), ("res2", 1, 2, None), ("res3", 2, 2, 2), ("res4", 2, 2, 4)),
    "deeper": (("res1", 1, 1, None), ("res2", 1, 2, None), ("res3", 2, 2, None), ("res4", 2, 4, 2), ("res5", 4, 4, 4)),
    "deepest": (
        ("res1", 1, 1, None),
        ("res2", 1, 2, None),
        ("res3", 2, 2, None),
        ("res31", 2, 2, None),
        ("res4", 2, 4, 2),
        ("res5", 4, 4, 4),
    ),
}
_DECODERS = {
    "ncsnv2": (("refine1", 2), ("refine2", 2), ("refine3", 1), ("refine4", 1)),
    "deeper": (("refine1", 4), ("refine2", 2), ("refine3", 2), ("refine4", 1), ("refine5", 1)),
    "deepest": (("refine1", 4), ("refine2", 2), ("refine31", 2), ("refine3", 2), ("refine4", 1), ("refine5", 1)),
}
VARIANTS = tuple(_ENCODERS)


class _DilatedRefineNet(nn.Module):
    """begin_conv -> encoder stages (2 residual blocks each) -> RefineNet decoder -> normalizer, act, end_conv."""

    def __init__(
        self,
        channels: int,
        ngf: int,
        variant: str,
        act: nn.Module,
        norm: Callable[[int], nn.Module] | None,
        block_norm: Callable[[int], nn.Module],
        final_norm: nn.Module,
        rescale_input: bool,
    ):
        super().__init__()
        if variant not in _ENCODERS:
            raise ValueError(f"unknown NCSNv2 variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        self.rescale_input = rescale_input
        self.act = act
        self.begin_conv = nn.Conv2d(channels, ngf, 3, padding=1)
        self.normalizer = final_norm
        self.end_conv = nn.Conv2d(ngf, channels, 3, padding=1)
        self.stages = [name for name, *_ in _ENCODERS[variant]]
        for k, (name, cin, cout, dilation) in enumerate(_ENCODERS[variant]):
            blocks = [
                ResBlock(cin * ngf, cout * ngf, act, block_norm, down=k > 0, dilation=dilation),
                ResBlock(cout * ngf, cout * ngf, act, block_norm, dilation=dilation),
            ]
            self.add_module(name, nn.ModuleList(blocks))
        decoder = _DECODERS[variant]
        widths = [cout for *_, cout, _ in reversed(_ENCODERS[variant])]  # stage output widths, deepest first
        self.refines = [name for name, _ in decoder]
        for k, (name, features) in enumerate(decoder):
            in_planes = [widths[k] * ngf] if k == 0 else [widths[k] * ngf, decoder[k - 1][1] * ngf]
            block = RefineBlock(in_planes, features * ngf, act, norm, start=k == 0, end=k == len(decoder) - 1)
            self.add_module(name, block)

    def features(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.begin_conv(2 * x - 1 if self.rescale_input else x)
        skips = []
        for name in self.stages:
            for block in getattr(self, name):
                h = block(h, y)
            skips.append(h)
        out = None
        for name, skip in zip(self.refines, reversed(skips), strict=True):
            out = getattr(self, name)([skip] if out is None else [skip, out], y, tuple(skip.shape[2:]))
        assert out is not None
        return self.end_conv(self.act(self.normalizer(out, y)))


def noise_levels(sigma_begin: float, sigma_end: float, num_classes: int, sigma_dist: str = "geometric") -> Tensor:
    """ncsnv2's get_sigmas: num_classes levels from sigma_begin down to sigma_end, geometric or uniform (float32)."""
    if sigma_dist == "geometric":
        start, stop = math.log(sigma_begin), math.log(sigma_end)
        return torch.linspace(start, stop, num_classes, dtype=torch.float64).exp().float()
    if sigma_dist == "uniform":
        return torch.linspace(sigma_begin, sigma_end, num_classes, dtype=torch.float64).float()
    raise ValueError(f"unknown sigma_dist {sigma_dist!r}; ncsnv2 has 'geometric' and 'uniform'")


class NCSNv2Net(_DilatedRefineNet):
    """NCSNv2 / NCSNv2Deeper / NCSNv2Deepest: net(x, y) = score at level y, the output divided by sigmas[y]."""

    def __init__(
        self,
        channels: int = 3,
        ngf: int = 128,
        num_classes: int = 232,
        variant: str = "ncsnv2",
        normalization: str = "InstanceNorm++",
        nonlinearity: str = "elu",
        sigma_begin: float = 50.0,
        sigma_end: float = 0.01,
        sigma_dist: str = "geometric",
        rescale_input: bool = True,
    ):
        if nonlinearity.lower() not in ACTIVATIONS:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; ncsnv2 has {', '.join(ACTIVATIONS)}")
        _norm(normalization, 1)  # one-line error for an unknown name before anything is built
        super().__init__(
            channels,
            ngf,
            variant,
            ACTIVATIONS[nonlinearity.lower()](),
            None,
            partial(_norm, normalization),
            _norm(normalization, ngf, eps=float(num_classes)),
            rescale_input,
        )
        self.register_buffer("sigmas", noise_levels(sigma_begin, sigma_end, num_classes, sigma_dist))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        y = cond.round().long().to(self.sigmas.device)
        return self.features(x, y) / self.sigmas[y].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class NCSNNet(_DilatedRefineNet):
    """NCSN v1's CondRefineNetDilated: net(x, y) = score at level y, every normalisation conditioned on y."""

    def __init__(self, channels: int = 3, ngf: int = 128, num_classes: int = 10, rescale_input: bool = True):
        norm = partial(CondInstanceNormPlus, num_classes=num_classes)
        super().__init__(channels, ngf, "ncsnv2", nn.ELU(), norm, norm, norm(ngf), rescale_input)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.features(x, cond.round().long().to(x.device))
