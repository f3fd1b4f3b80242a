"""Upstream presets: what a sampler needs to reproduce an upstream implementation's exact algorithm.

A preset is the hyper-parameter `preset=NAME`. Without it (None) scorebench's defaults run; with it, the sampler swaps
in the upstream's coefficients, time grid and final step. Which sampler has which preset is in the registry
(SamplerSpec.presets, also the preset's changed hyper-parameter defaults):

- "score_sde" (em, rd, pc, pf_euler, rk45): yang-song/score_sde_pytorch sampling.py with sde_lib.py's VESDE / VPSDE,
  made here by `ScoreSdeSDE`;
- "ncsnv2" (ald): ermongroup/ncsnv2's anneal_Langevin_dynamics (samplers.score_sde.ald);
- "dmcmc" (every dlg+X): 1202kbs/DMCMC's notebooks (samplers.dlg).

score_sde's discretisation, for N steps (N = the number of positive levels of the schedule given to the sampler):
- time grid t_i = linspace(1, eps, N), eps 1e-5 on VE and 1e-3 on VP models unless `eps=` is given;
- the SDE: VE sigma(t) = sigma_min (sigma_max / sigma_min)^t with sigma_min the model's and sigma_max the schedule's
  first level (per sample: DMCMC restarts the VESDE at each chain's own sigma this way); VP with
  beta(t) = b0 + t (b1 - b0) (a discrete DDPM model runs as the VP-SDE with b0 = T beta_1, b1 = T beta_T, queried at
  that SDE's noise level: score_sde's discrete-label score for DDPM checkpoints is not reproduced);
- prior: VE N(0, sigma_max^2 I), VP N(0, I), made from the same standard normal z = x / sigmas[0] the harness drew;
- the discretised forward step at the timestep index k = trunc(t (N - 1)) (upstream's `.long()`): VE
  G_k^2 = s_k^2 - s_(k-1)^2 over discrete_sigmas s = geometric(sigma_min, sigma_max, N) (s_(-1) = 0), VP
  beta_k = linspace(b0 / N, b1 / N, N)[k] with x(t) = sqrt(1 - beta_k) x(t_next) + sqrt(beta_k) z;
- the state is in the SDE's own coordinates (VP: x_vp = mean(t) x_ve) and the sample is the last predictor's mean
  x_mean in those coordinates (noise removal; on VP not divided by mean(eps)).
Schedule arithmetic is float64 (upstream: float32).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["check_preset", "ScoreSdeSDE", "SCORE_SDE_EPS", "SCORE_SDE_N", "NCSNV2_STEP_LR"]

SCORE_SDE_EPS = {"ve": 1e-5, "vp": 1e-3}  # score_sde's sampling_eps (run_lib.py)
SCORE_SDE_N = 1000  # score_sde configs' model.num_scales: the SDE's N where no step count is given (the ODE's denoise)
NCSNV2_STEP_LR = 6.2e-6  # ncsnv2 configs/cifar10.yml sampling.step_lr (with n_steps_each 5)


def check_preset(sampler: str, preset: str | None, known: Iterable[str]) -> None:
    """One ValueError for a preset `sampler` does not have, naming the ones it has."""
    known = tuple(known)
    if preset is not None and preset not in known:
        has = ", ".join(map(repr, known)) if known else "none"
        raise ValueError(f"sampler {sampler!r} has no preset {preset!r}; its presets: {has}")


def _vp_betas(sde) -> tuple[float, float]:
    """(b0, b1) of the VP-SDE that score_sde runs for this VP process."""
    if hasattr(sde, "beta_min") and hasattr(sde, "beta_max"):
        return float(sde.beta_min), float(sde.beta_max)
    betas = getattr(sde, "betas", None)
    if betas is None:
        raise ValueError(f"preset 'score_sde' needs a VE, VP-SDE or linear DDPM model, not {sde.describe()}")
    n = betas.numel()
    linear = torch.linspace(float(betas[0]), float(betas[-1]), n, dtype=torch.float64)
    if not torch.allclose(betas.to(torch.float64), linear, rtol=1e-9, atol=0):
        raise ValueError(f"preset 'score_sde' needs linear DDPM betas; {sde.describe()} has other betas")
    return float(betas[0]) * n, float(betas[-1]) * n


class ScoreSdeSDE:
    """score_sde's VESDE or VPSDE with N discretisation steps for a batch: each method maps times t [B, M] (float64)
    to per-sample values [B, M]. `sigma` and `scale` give the model's query: the native score at t is
    (D(x/s, sigma) - x/s) / (sigma^2 s).
    """

    def __init__(self, model, first_sigma: Tensor, n: int):
        self.n = int(n)
        self.kind = model.process
        self.default_eps = SCORE_SDE_EPS[self.kind]
        if self.kind == "ve":
            self.sigma_min = torch.full_like(first_sigma, float(model.sigma_min))[:, None]  # [B, 1]
            self.sigma_max = first_sigma.to(torch.float64)[:, None]
            self.prior_std = first_sigma.to(torch.float64)  # N(0, sigma_max^2 I)
            # discrete_sigmas: exp(linspace(log sigma_min, log sigma_max, N)) per sample [B, N]
            u = torch.linspace(0, 1, self.n, dtype=torch.float64, device=first_sigma.device)
            log_lo = torch.log(self.sigma_min)
            self.levels = torch.exp(log_lo + u * (torch.log(self.sigma_max) - log_lo))
        else:
            self.beta_0, self.beta_1 = _vp_betas(model.sde)
            self.prior_std = torch.ones_like(first_sigma, dtype=torch.float64)  # N(0, I)
            self.betas = torch.linspace(
                self.beta_0 / self.n, self.beta_1 / self.n, self.n, dtype=torch.float64, device=first_sigma.device
            )

    def grid(self, eps: float | None, batch: int, device) -> Tensor:
        """The time grid linspace(1, eps, N) for every sample [B, N]."""
        eps = self.default_eps if eps is None else float(eps)
        if not 0 < eps < 1:
            raise ValueError(f"preset 'score_sde' integrates from t = 1 to eps, so 0 < eps < 1; got eps={eps}")
        return torch.linspace(1.0, eps, self.n, dtype=torch.float64, device=device).expand(batch, -1)

    def _log_mean(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def sigma(self, t: Tensor) -> Tensor:
        """The marginal's noise level in VE terms: VE sigma(t); VP std(t) / mean(t)."""
        if self.kind == "ve":
            return self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        log_mean = self._log_mean(t)
        return torch.sqrt(1.0 - torch.exp(2.0 * log_mean)) / torch.exp(log_mean)

    def scale(self, t: Tensor) -> Tensor:
        """x_native = scale(t) x_ve: 1 on VE, mean(t) on VP."""
        return torch.ones_like(t) if self.kind == "ve" else torch.exp(self._log_mean(t))

    def drift_rate(self, t: Tensor) -> Tensor:
        """a(t) with f(x, t) = a(t) x."""
        return torch.zeros_like(t) if self.kind == "ve" else -0.5 * (self.beta_0 + t * (self.beta_1 - self.beta_0))

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t): VE sigma(t) sqrt(2 log(sigma_max / sigma_min)), VP sqrt(beta(t))."""
        if self.kind == "ve":
            return self.sigma(t) * torch.sqrt(2 * (torch.log(self.sigma_max) - torch.log(self.sigma_min)))
        return torch.sqrt(self.beta_0 + t * (self.beta_1 - self.beta_0))

    def index(self, t: Tensor) -> Tensor:
        """The timestep index trunc(t (N - 1) / T), T = 1, as upstream's `.long()`."""
        return (t * (self.n - 1)).long()

    def discrete_step(self, t: Tensor, t_next: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The discretised forward step x(t) = m x(t_next) + G z at index k(t): (m, G) [B, M]. t_next is not used."""
        k = self.index(t)
        if self.kind == "ve":
            sigma = self.levels.gather(1, k)
            below = torch.where(k == 0, 0.0, self.levels.gather(1, (k - 1).clamp(min=0)))
            return torch.ones_like(t), torch.sqrt(sigma**2 - below**2)
        beta = self.betas[k]
        return torch.sqrt(1.0 - beta), torch.sqrt(beta)

    def corrector_alpha(self, t: Tensor) -> Tensor:
        """The Langevin corrector's alpha: 1 on VE, alphas[k] = 1 - beta_k on VP."""
        return torch.ones_like(t) if self.kind == "ve" else 1.0 - self.betas[self.index(t)]
