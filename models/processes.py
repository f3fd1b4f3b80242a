"""Forward diffusion processes and their map to the VE noise level sigma.

Every model is seen by samplers in VE terms, x_ve = x0 + sigma * eps. A process says how its own state and time
relate to that: x_native = scale(t) * x_ve and sigma = sigma(t). Process-specific samplers (score_sde's EM, reverse
diffusion, Langevin corrector, probability flow) step in native coordinates through the methods here, so that the
samplers themselves never see whether a model is VE or VP.

- VE: score_sde's SMLD process, sigma(t) = sigma_min * (sigma_max / sigma_min)**t, f = 0, g = sigma * sqrt(2 log r).
- VP: continuous VP-SDE (beta linear in t, 0.1 .. 20), f = -beta(t) x / 2, g = sqrt(beta(t)).
- DDPM: discrete VP with linear betas 1e-4 .. 0.02 over T = 1000 steps; timestep index k sits at t = (k + 1) / T and
  log alpha_bar is interpolated linearly in t between those knots (exact at every index).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Process", "VEProcess", "VPProcess", "DDPMProcess", "broadcast"]


def broadcast(v: Tensor, x: Tensor) -> Tensor:
    """View a per-sample vector [B] as [B, 1, ..., 1] in x's dtype, ready to multiply x."""
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class Process:
    """A forward process in its own time variable t in [t_min, t_max]; t and sigma are float64 tensors [B]."""

    name: str  # "ve" or "vp": the fixed public name of the process family
    t_min: float
    t_max: float = 1.0

    # --- maps between native time and the VE noise level ---------------------------------------------------------
    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def scale(self, t: Tensor) -> Tensor:
        """s(t) with x_native = s(t) * x_ve."""
        raise NotImplementedError

    def sigma_scale(self, sigma: Tensor) -> Tensor:
        """s at the time whose noise level is sigma (what a network wrapper needs per call, without t)."""
        return self.scale(self.t(sigma))

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    # --- the SDE in native coordinates -----------------------------------------------------------------------------
    # The drift is linear in x for every process here, f(x, t) = drift_rate(t) x, so samplers can do their schedule
    # arithmetic on per-sample coefficients [B] and touch x only in a few tensor-sized operations.
    def drift_rate(self, t: Tensor) -> Tensor:
        """a(t) with f(x, t) = a(t) x."""
        raise NotImplementedError

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t) of the forward SDE."""
        raise NotImplementedError

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward SDE dx = f(x, t) dt + g(t) dw: returns (f [like x], g [B])."""
        return broadcast(self.drift_rate(t), x) * x, self.diffusion(t)

    def step_alpha(self, t: Tensor, t_next: Tensor) -> Tensor:
        """alpha of one discrete forward step from t_next up to t (1 for VE), score_sde's `alphas`."""
        raise NotImplementedError

    def discrete_step(self, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """score_sde's discretised forward step x(t) = m x(t_next) + G z as per-sample (m, G) [B] each."""
        raise NotImplementedError

    def discretize(self, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        """score_sde's discretised forward step x(t) = x(t_next) + f + G z, for the interval (t_next, t)."""
        m, big_g = self.discrete_step(t, t_next)
        return (broadcast(m, x) - 1) * x, big_g

    # --- coordinates ----------------------------------------------------------------------------------------------
    def to_native(self, x_ve: Tensor, t: Tensor) -> Tensor:
        return x_ve * broadcast(self.scale(t), x_ve)

    def to_ve(self, x_native: Tensor, t: Tensor) -> Tensor:
        return x_native / broadcast(self.scale(t), x_native)

    def native_score(self, model, x: Tensor, t: Tensor) -> Tensor:
        """grad log p_t(x) in native coordinates from the model's denoiser over sigma: (D(x/s) - x/s) / (sigma^2 s)."""
        s, sigma = self.scale(t), self.sigma(t)
        x_ve = x * broadcast(1 / s, x)
        return (model(x_ve, sigma) - x_ve) * broadcast(1 / (sigma**2 * s), x)

    def pf_ode_drift(self, model, x: Tensor, t: Tensor) -> Tensor:
        """Probability-flow ODE dx/dt = f(x, t) - g(t)^2 / 2 * score = a x - g^2 / (2 sigma^2 s) (D(x/s) - x/s)."""
        s, sigma = self.scale(t), self.sigma(t)
        x_ve = x * broadcast(1 / s, x)
        pull = model(x_ve, sigma) - x_ve
        weight = -0.5 * self.diffusion(t) ** 2 / (sigma**2 * s)
        return torch.addcmul(broadcast(self.drift_rate(t), x) * x, broadcast(weight, x), pull)

    def describe(self) -> str:
        raise NotImplementedError


class VEProcess(Process):
    """score_sde's variance-exploding (SMLD) process with a geometric noise schedule."""

    name = "ve"
    t_min = 0.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE process needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self._sigma_min, self._sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self._sigma_max / self._sigma_min)

    @property
    def sigma_min(self) -> float:
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        return self._sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return self._sigma_min * torch.exp(t * self._log_ratio)

    def t(self, sigma: Tensor) -> Tensor:
        return torch.log(sigma / self._sigma_min) / self._log_ratio

    def scale(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma_scale(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def drift_rate(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def step_alpha(self, t: Tensor, t_next: Tensor) -> Tensor:
        return torch.ones_like(t)

    def discrete_step(self, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), torch.sqrt(self.sigma(t) ** 2 - self.sigma(t_next) ** 2)

    def describe(self) -> str:
        return f"VE (sigma {self._sigma_min:g}..{self._sigma_max:g})"


class _VarPreserving(Process):
    """Shared algebra of VP processes, given log alpha_bar(t), its inverse and beta(t) = -d log alpha_bar / dt."""

    name = "vp"

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of_neg_log_alpha_bar(self, m: Tensor) -> Tensor:
        raise NotImplementedError

    def beta(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.expm1(-self.log_alpha_bar(t)))

    def t(self, sigma: Tensor) -> Tensor:
        return self.t_of_neg_log_alpha_bar(torch.log1p(sigma**2))

    def scale(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma_scale(self, sigma: Tensor) -> Tensor:
        return torch.rsqrt(1 + sigma**2)  # sqrt(alpha_bar), as sigma^2 = (1 - alpha_bar) / alpha_bar

    def drift_rate(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))

    def step_alpha(self, t: Tensor, t_next: Tensor) -> Tensor:
        return torch.exp(self.log_alpha_bar(t) - self.log_alpha_bar(t_next))

    def discrete_step(self, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        alpha = self.step_alpha(t, t_next)
        return torch.sqrt(alpha), torch.sqrt(1 - alpha)


class VPProcess(_VarPreserving):
    """Continuous VP-SDE of score_sde: beta(t) = beta_min + t (beta_max - beta_min), t in [1e-3, 1]."""

    t_min = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"VP process needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min

    def t_of_neg_log_alpha_bar(self, m: Tensor) -> Tensor:
        a, b = 0.5 * (self.beta_max - self.beta_min), self.beta_min
        return (torch.sqrt(b * b + 4 * a * m) - b) / (2 * a)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def describe(self) -> str:
        return f"VP-SDE (beta {self.beta_min:g}..{self.beta_max:g})"


class DDPMProcess(_VarPreserving):
    """Discrete DDPM (Ho et al. 2020): alpha_bar_k = prod_{i<=k} (1 - beta_i), index k at t = (k + 1) / T."""

    def __init__(self, betas: Tensor | None = None, beta_start: float = 1e-4, beta_end: float = 0.02, T: int = 1000):
        if betas is None:
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("DDPM betas must be a 1-D sequence of values in (0, 1)")
        self.betas = betas
        self.T = betas.numel()
        self.t_min = 1.0 / self.T
        # knots of -log alpha_bar at t = 0, 1/T, ..., 1 (strictly increasing)
        self._neg_log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.cumsum(torch.log1p(-betas), 0)])
        self._tables_on: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def _tables(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """On like's device (made there once, not on every sampler step): the knots, and for each interval between
        knots k and k + 1 the affine map m -> fractional index = intercept[k] + slope[k] m of -log alpha_bar = m."""
        if like.device not in self._tables_on:
            knots = self._neg_log_ab.to(like.device)
            slope = 1 / (knots[1:] - knots[:-1])
            intercept = torch.arange(self.T, dtype=torch.float64, device=like.device) - 1 - knots[:-1] * slope
            self._tables_on[like.device] = (knots, slope, intercept)
        return self._tables_on[like.device]

    def _knots(self, like: Tensor) -> Tensor:
        return self._tables(like)[0]

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        knots = self._knots(t)
        u = (t * self.T).clamp(0, self.T)
        k = u.floor().clamp(max=self.T - 1).long()
        frac = u - k
        return -(knots[k] + frac * (knots[k + 1] - knots[k]))

    def _index_of_neg_log_alpha_bar(self, m: Tensor) -> Tensor:
        knots, slope, intercept = self._tables(m)
        k = torch.searchsorted(knots[1:], m.contiguous()).clamp_(max=self.T - 1)  # the interval holding m
        return torch.addcmul(intercept[k], slope[k], m)

    def t_of_neg_log_alpha_bar(self, m: Tensor) -> Tensor:
        return (self._index_of_neg_log_alpha_bar(m) + 1) / self.T

    def index_of_sigma(self, sigma: Tensor) -> Tensor:
        """The fractional timestep index index(t(sigma)), exact at integer steps, in fewer operations."""
        return self._index_of_neg_log_alpha_bar(torch.log1p(sigma**2))

    def beta(self, t: Tensor) -> Tensor:
        knots = self._knots(t)
        k = (t * self.T).ceil().clamp(1, self.T).long() - 1
        return (knots[k + 1] - knots[k]) * self.T

    def index(self, t: Tensor) -> Tensor:
        """Fractional timestep index k = t T - 1 that a discrete-time network is conditioned on."""
        return t * self.T - 1

    def describe(self) -> str:
        return f"DDPM (T={self.T}, beta {float(self.betas[0]):g}..{float(self.betas[-1]):g})"
