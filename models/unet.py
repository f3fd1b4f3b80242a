"""A small UNet score network for 1xHxW images, conditioned on a noise level or a timestep through Fourier features.

The network maps (x, cond[B]) to a tensor like x. What the output means (score, eps, ...) and what cond is (sigma or
a DDPM timestep index) is the checkpoint's business (config.json, models.wrappers.NetworkDenoiser); the network only
needs to know how to embed cond:

- `cond_map="log"`: cond is a noise level sigma, embedded through log(sigma) (as NCSN++ and EDM do);
- `cond_map="linear"`: cond is a timestep index (DDPM), embedded as is.

Optionally EDM's preconditioning (Karras et al. 2022, Table 1) is built in: the UNet body F sees c_in(sigma) x_ve
and the denoiser is D = c_skip x_ve + c_out F, with c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd /
sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2) (sd: the data's standard deviation). The module still returns
what its checkpoint says it predicts, so the wrapper's semantics hold:

- `precondition="ve_score"`: a VE score network conditioned on sigma; returns the score (D - x) / sigma^2 (this also
  carries NCSN++'s 1/sigma output scaling);
- `precondition="vp_eps"`: a discrete DDPM eps network conditioned on the timestep index (linear betas beta_start..
  beta_end over T steps); x is the VP state sqrt(alpha_bar) x_ve and the module returns eps = (x_ve - D) / sigma.
  Unlike a plain eps network, whose error is multiplied by sigma (up to ~157) in x0 = x_ve - sigma eps, the
  preconditioned one stays accurate at high noise after a short training.

Every constructor argument is a JSON-serialisable value, so that checkpoints can rebuild the network from config.json.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .processes import DDPMProcess

__all__ = ["UNet", "FourierEmbedding"]


class FourierEmbedding(nn.Module):
    """cos/sin(c * f_k) for frequencies f_k geometric between f_min and f_max (fixed, not learned)."""

    def __init__(self, dim: int, f_min: float, f_max: float):
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(f_min), math.log(f_max), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        angles = c.float()[:, None] * self.freqs[None]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding added in between, and a 1x1 skip when channels change."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # [b, hw, c]
        return x + self.out(attended.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """UNet over 1xHxW images: one resolution level per entry of channel_mult, a middle block, skip connections.

    H and W must be divisible by 2^(len(channel_mult) - 1) (8x8 digits: (1, 2); 28x28 MNIST: (1, 2, 2)).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        emb_dim: int = 128,
        cond_map: str = "log",
        f_min: float = 0.1,
        f_max: float = 30.0,
        precondition: str = "none",
        sigma_data: float = 0.5,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        T: int = 1000,
        groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        if cond_map not in ("log", "linear"):
            raise ValueError(f"cond_map must be 'log' or 'linear', got {cond_map!r}")
        if precondition not in ("none", "ve_score", "vp_eps"):
            raise ValueError(f"precondition must be 'none', 've_score' or 'vp_eps', got {precondition!r}")
        if precondition == "ve_score" and cond_map != "log":
            raise ValueError("precondition='ve_score' needs cond_map='log' (the conditioning is sigma)")
        if precondition == "vp_eps" and cond_map != "linear":
            raise ValueError("precondition='vp_eps' needs cond_map='linear' (the conditioning is the timestep index)")
        self.cond_map, self.precondition, self.sigma_data = cond_map, precondition, float(sigma_data)
        self.ddpm = DDPMProcess(beta_start=beta_start, beta_end=beta_end, T=T) if precondition == "vp_eps" else None

        # noise-level embedding: Fourier features, then a small MLP
        self.embed = nn.Sequential(
            FourierEmbedding(emb_dim, f_min, f_max),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        widths = [channels * m for m in channel_mult]
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)

        # encoder: res blocks per level, a strided conv between levels; remember every output for the skips
        self.down = nn.ModuleList()
        skip_widths, c = [channels], channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(c, width, emb_dim, groups, dropout))
                c = width
                skip_widths.append(c)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_widths.append(c)

        # middle: res block, attention, res block at the coarsest resolution
        self.mid1 = ResBlock(c, c, emb_dim, groups, dropout)
        self.mid_attn = SelfAttention(c, groups) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim, groups, dropout)

        # decoder: one more res block per level than the encoder, each eating one skip; nearest upsampling + conv
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(c + skip_widths.pop(), width, emb_dim, groups, dropout))
                c = width
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(c, c, 3, padding=1)))
        assert not skip_widths

        self.head = nn.Sequential(nn.GroupNorm(min(groups, c), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def body(self, x: Tensor, c: Tensor) -> Tensor:
        """The UNet proper: image x and scalar embedding input c [B] -> tensor like x."""
        emb = self.embed(c)
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.head(h)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        cond = cond.to(x.dtype).reshape(-1).expand(x.shape[0])
        c_noise = cond.log() if self.cond_map == "log" else cond
        if self.precondition == "none":
            return self.body(x, c_noise)
        # EDM preconditioning around the body, in VE terms
        if self.precondition == "ve_score":
            sigma, x_ve = cond, x
        else:  # vp_eps: index k sits at t = (k + 1) / T; x = x_ve / sqrt(1 + sigma^2)
            sigma = self.ddpm.sigma((cond.double() + 1) / self.ddpm.T).to(x.dtype)
            x_ve = x * torch.sqrt(1 + sigma**2)[:, None, None, None]
        sigma = sigma[:, None, None, None]
        total = sigma**2 + self.sigma_data**2
        out = self.body(x_ve / total.sqrt(), c_noise)
        # D = c_skip x_ve + c_out F; written without cancellation as the score (D - x) / sigma^2 or eps (x - D) / sigma
        if self.precondition == "ve_score":
            return -x_ve / total + (self.sigma_data / (sigma * total.sqrt())) * out
        return sigma * x_ve / total - (self.sigma_data / total.sqrt()) * out
