"""score_sde's samplers in the model's own process coordinates, and NCSN's annealed Langevin dynamics.

Each predictor(-corrector) sampler walks a `_Walk`: its per-step coefficients, computed before the loop, and how it
ends. Two walks:

- default (preset None): the sigma schedule is mapped to the model's native times t_i = sde.t(sigma_i); the state is
  carried as x_native = scale(t) x_ve between the first and the last noise level (N - 1 predictor steps), and the final
  jump to sigma = 0 is the explicit Tweedie step D(x, sigma_last). The process (models.processes) supplies f, g, the
  discretised step and the native score, so the loops are the same for VE, VP-SDE and DDPM models.
- preset="score_sde": score_sde_pytorch's own discretisation (samplers.presets.ScoreSdeSDE): N predictor steps on
  t = linspace(1, eps, N), the timestep-indexed discrete step, Euler-Maruyama's dt = 1/N, and the last predictor's
  mean x_mean as the sample (noise removal); pc's corrector then sizes its step from batch-mean norms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .common import Noise, bc, noise_or_default, per_sample, per_step
from .presets import NCSNV2_STEP_LR, ScoreSdeSDE, check_preset

SCORE_SDE_PRESETS = ("score_sde",)


class _Walk(NamedTuple):
    """A predictor(-corrector) pass as coefficients [steps, B, 1, ...] in x's dtype (schedule arithmetic in float64).

    Predictor step i, with d = D(x u_i, sigma_i) - x u_i (u = 1 / scale: the native score is d / (sigma^2 scale)):
        x_mean = keep_i x + pull_i d,   x = x_mean + push_i z,   z = noise(sigma_i, sigma_(i+1)).
    Corrector level j (pc only): the native score (D(x v_j, rho_j) - x v_j) gain_j and score_sde's alpha_j.
    """

    start: Tensor  # [B]: the native state is start * x
    sigma: Tensor  # [B, steps + 1]: each predictor step's noise level, then the level after the last step
    keep: Tensor
    pull: Tensor
    push: Tensor
    unscale: Tensor
    finish: Callable[[Tensor, Tensor], Tensor]  # (x, x_mean) -> the sample
    levels: int = 0  # corrector levels
    rho: Tensor | None = None  # [B, levels]
    c_unscale: Tensor | None = None
    gain: Tensor | None = None
    alpha: Tensor | None = None  # [B, levels]

    @property
    def steps(self) -> int:
        return self.keep.shape[0]


def _predictor(kind: str, sde, t: Tensor, t_next: Tensor | None, dt: Tensor, sigma: Tensor, s: Tensor):
    """(keep, pull, push) [B, steps] of one predictor for a process-like `sde` (models.processes or ScoreSdeSDE).

    em: x - [f - g^2 score] dt + g sqrt(dt) z = (1 - a dt) x + g^2 dt / (sigma^2 s) d + g sqrt(dt) z (Song et al.
    2021, eq. 6; dt > 0 as the SDE runs backwards). rd / pf: with the discretised forward step x(t) = m x(t_next) + G z,
    x - f + w G^2 score + G z = (2 - m) x + w G^2 / (sigma^2 s) d + G z, w = 1 (eq. 46) or 1/2 (probability flow).
    """
    if kind == "em":
        g = sde.diffusion(t)
        return 1 - sde.drift_rate(t) * dt, g**2 * dt / (sigma**2 * s), g * torch.sqrt(dt)
    m, big_g = sde.discrete_step(t, t_next)
    weight = 0.5 if kind == "pf" else 1.0
    return 2 - m, weight * big_g**2 / (sigma**2 * s), big_g


def _native_walk(model, x: Tensor, sigmas: Tensor, kind: str, denoise: bool, corrector: bool) -> _Walk:
    """scorebench's walk: N - 1 steps between the schedule's N levels in native time, then the Tweedie step."""
    sde = model.sde
    ts = sde.t(sigmas[:, :-1])  # native time of every level [B, N]
    t, t_next = ts[:, :-1], ts[:, 1:]
    s = sde.scale(t)
    keep, pull, push = _predictor(kind, sde, t, t_next, t - t_next, sigmas[:, :-2], s)

    def finish(x: Tensor, x_mean: Tensor) -> Tensor:
        # back to VE coordinates at the last level and, unless disabled, the final denoising step D(x, sigma_last)
        x = sde.to_ve(x, ts[:, -1])
        return model(x, sigmas[:, -2]) if denoise else x

    walk = _Walk(sde.scale(ts[:, 0]), sigmas, *per_step(x, keep, pull, push, 1 / s), finish)
    if not corrector:
        return walk
    n = ts.shape[1]
    # score_sde's alpha of the step below each level (the last level reuses the one above it)
    alpha = sde.step_alpha(t, t_next) if n > 1 else torch.ones_like(ts)
    alpha = alpha[:, torch.arange(n, device=ts.device).clamp(max=alpha.shape[1] - 1)]
    rho, s_c = sde.sigma(ts), sde.scale(ts)
    c_unscale, gain = per_step(x, 1 / s_c, 1 / (rho**2 * s_c))
    return walk._replace(levels=n if denoise else n - 1, rho=rho, c_unscale=c_unscale, gain=gain, alpha=alpha)


def _score_sde_walk(
    model, x: Tensor, sigmas: Tensor, kind: str, denoise: bool, corrector: bool, eps: float | None
) -> _Walk:
    """score_sde's walk: N steps on t = linspace(1, eps, N); the sample is the last x_mean (x if not denoise)."""
    n = sigmas.shape[1] - 1
    sde = ScoreSdeSDE(model, sigmas[:, 0], n)
    t = sde.grid(eps, x.shape[0], x.device)
    sigma, s = sde.sigma(t), sde.scale(t)
    dt = torch.full_like(t, 1.0 / n)  # EulerMaruyamaPredictor's dt = -1/N, whatever the grid's spacing
    keep, pull, push = _predictor(kind, sde, t, None, dt, sigma, s)
    levels = torch.cat([sigma, sigma.new_zeros(sigma.shape[0], 1)], 1)

    def finish(x: Tensor, x_mean: Tensor) -> Tensor:
        return x_mean if denoise else x

    # the prior is score_sde's (VE N(0, sigma_max^2), VP N(0, I)) from the harness's standard normal x / sigmas[0]
    walk = _Walk(sde.prior_std / sigmas[:, 0], levels, *per_step(x, keep, pull, push, 1 / s), finish)
    if not corrector:
        return walk
    c_unscale, gain = per_step(x, 1 / s, 1 / (sigma**2 * s))
    return walk._replace(levels=n, rho=sigma, c_unscale=c_unscale, gain=gain, alpha=sde.corrector_alpha(t))


def _walk(
    name: str, kind: str, model, x: Tensor, sigmas: Tensor, preset, eps, denoise: bool, corrector: bool = False
) -> _Walk:
    check_preset(name, preset, SCORE_SDE_PRESETS)
    if preset == "score_sde":
        return _score_sde_walk(model, x, sigmas, kind, denoise, corrector, eps)
    if eps is not None:
        raise ValueError(f"{name}: eps is the end time of preset 'score_sde'; pass preset='score_sde' with it")
    return _native_walk(model, x, sigmas, kind, denoise, corrector)


def _pull(model, x: Tensor, unscale: Tensor, sigma: Tensor) -> Tensor:
    """D(x / s, sigma) - x / s for a native state x: the native score times sigma^2 s."""
    x_ve = x * unscale
    return model(x_ve, sigma) - x_ve


def em(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    preset: str | None = None,
    eps: float | None = None,
    denoise: bool = True,
) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE dx = [f - g^2 score] dt + g dw (Song et al. 2021, eq. 6).

    dt = t_i - t_(i+1) on the schedule's native times; preset="score_sde": dt = 1/N on linspace(1, eps, N).
    """
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    walk = _walk("em", "em", model, x, sigmas, preset, eps, denoise)
    x = x_mean = x * bc(walk.start, x)
    for i in range(walk.steps):
        # Euler-Maruyama step: the reverse drift, then fresh noise
        d = _pull(model, x, walk.unscale[i], walk.sigma[:, i])
        x_mean = torch.addcmul(x * walk.keep[i], walk.pull[i], d)
        x = torch.addcmul(x_mean, walk.push[i], noise(walk.sigma[:, i], walk.sigma[:, i + 1]))
    return walk.finish(x, x_mean)


def rd(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    preset: str | None = None,
    eps: float | None = None,
    denoise: bool = True,
) -> Tensor:
    """Reverse-diffusion predictor x <- x - f + G^2 score + G z (Song et al. 2021, eq. 46), in native coordinates."""
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    walk = _walk("rd", "rd", model, x, sigmas, preset, eps, denoise)
    x = x_mean = x * bc(walk.start, x)
    for i in range(walk.steps):
        # predictor mean, then fresh noise
        d = _pull(model, x, walk.unscale[i], walk.sigma[:, i])
        x_mean = torch.addcmul(x * walk.keep[i], walk.pull[i], d)
        x = torch.addcmul(x_mean, walk.push[i], noise(walk.sigma[:, i], walk.sigma[:, i + 1]))
    return walk.finish(x, x_mean)


def pf_euler(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    preset: str | None = None,
    eps: float | None = None,
    denoise: bool = True,
) -> Tensor:
    """Probability-flow ODE with score_sde's reverse-diffusion predictor, probability_flow=True (Song et al. 2021)."""
    sigmas = per_sample(sigmas, x, model)
    walk = _walk("pf_euler", "pf", model, x, sigmas, preset, eps, denoise)
    x = x * bc(walk.start, x)
    for i in range(walk.steps):
        # predictor mean x - f + G^2 / 2 score, no noise
        d = _pull(model, x, walk.unscale[i], walk.sigma[:, i])
        x = torch.addcmul(x * walk.keep[i], walk.pull[i], d)
    return walk.finish(x, x)


def _own_norms(grad: Tensor, z: Tensor) -> tuple[Tensor, float]:
    """Each sample's score norm, and the noise norm's expectation sqrt(d)."""
    return grad.flatten(1).norm(dim=1), math.sqrt(z[0].numel())


def _batch_mean_norms(grad: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """score_sde's norms: the score's and the drawn noise's per-sample norms, each averaged over the batch."""
    return grad.flatten(1).norm(dim=1).mean(), z.flatten(1).norm(dim=1).mean()


_CORRECTOR_NORMS = {None: _own_norms, "score_sde": _batch_mean_norms}


def _langevin_corrector(model, x: Tensor, walk: _Walk, j: int, snr: float, z: Tensor, norms) -> Tensor:
    """One Langevin corrector step x + step score + sqrt(2 step) z, step = 2 alpha (snr |z| / |score|)^2."""
    grad = _pull(model, x, walk.c_unscale[j], walk.rho[:, j]) * walk.gain[j]
    grad_norm, noise_norm = norms(grad, z)
    step = 2 * walk.alpha[:, j] * (snr * noise_norm / grad_norm) ** 2
    return torch.addcmul(x, bc(step, x), grad).addcmul_(bc(torch.sqrt(2 * step), x), z)


def pc(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    snr: float | None = None,
    n_corrector: int = 1,
    preset: str | None = None,
    eps: float | None = None,
    denoise: bool = True,
) -> Tensor:
    """Predictor-corrector: Langevin corrector, then reverse-diffusion predictor (Song et al. 2021, Algorithm 1).

    snr defaults to score_sde's 0.16 on VE and 0.01 on VP models. The corrector's step uses each sample's score norm
    and the noise norm's expectation sqrt(d), so that a sample does not depend on its batch (Algorithm 4 uses the
    drawn noise's own norm, which in low dimension correlates the step with the noise). preset="score_sde" uses
    score_sde's norms, each averaged over the batch: its samples then depend on the rest of the batch.
    """
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    snr = (0.16 if model.process == "ve" else 0.01) if snr is None else snr
    walk = _walk("pc", "rd", model, x, sigmas, preset, eps, denoise, corrector=True)
    norms = _CORRECTOR_NORMS[preset]
    x = x_mean = x * bc(walk.start, x)
    for i in range(walk.levels):
        # corrector: Langevin MCMC at the current noise level
        for _ in range(n_corrector):
            x = _langevin_corrector(model, x, walk, i, snr, noise(walk.sigma[:, i], walk.sigma[:, i]), norms)
        # predictor: one reverse-diffusion step (by default the last level hands over to the Tweedie step instead)
        if i < walk.steps:
            d = _pull(model, x, walk.unscale[i], walk.sigma[:, i])
            x_mean = torch.addcmul(x * walk.keep[i], walk.pull[i], d)
            x = torch.addcmul(x_mean, walk.push[i], noise(walk.sigma[:, i], walk.sigma[:, i + 1]))
    return walk.finish(x, x_mean)


def _ald_steps(preset, sigma: Tensor, sigma_last: Tensor, eps, step_lr) -> tuple[Tensor, Tensor]:
    """Per level [B, L]: the weight of the score and of the noise z in ald's Langevin step.

    Default (Song & Ermon 2019, Algorithm 1): alpha_i = eps sigma_i^2 / sigma_L^2,
    x + alpha_i/2 score + sqrt(alpha_i) z, eps = 0.2 sigma_L^2 unless given (NCSN's 2e-5 at sigma_L = 0.01).
    ncsnv2 (anneal_Langevin_dynamics): step_i = step_lr sigma_i^2 / sigma_L^2, x + step_i score + sqrt(2 step_i) z,
    step_lr = 6.2e-6 (configs/cifar10.yml).
    """
    if preset == "ncsnv2":
        if eps is not None:
            raise ValueError("ald: preset 'ncsnv2' sets its step size with step_lr, not eps")
        step_lr = NCSNV2_STEP_LR if step_lr is None else float(step_lr)
        if step_lr <= 0:
            raise ValueError(f"ald needs step_lr > 0, got {step_lr}")
        step = step_lr * (sigma / sigma_last) ** 2
        return step, torch.sqrt(step * 2)
    if step_lr is not None:
        raise ValueError("ald: step_lr is preset 'ncsnv2''s step size; without it the step size is eps")
    eps_ = 0.2 * sigma_last**2 if eps is None else torch.full_like(sigma_last, eps)
    alpha = eps_ * (sigma / sigma_last) ** 2
    return alpha / 2, torch.sqrt(alpha)


def _tweedie_step(model, x: Tensor, sigma: Tensor) -> Tensor:
    """D(x, sigma_L): the posterior mean."""
    return model(x, sigma)


def _ncsnv2_denoise(model, x: Tensor, sigma: Tensor) -> Tensor:
    """ncsnv2's final step x + sigma_L^2 score(x, sigma_L) (the same point, as upstream computes it)."""
    return x + bc(sigma**2, x) * model.score(x, sigma)


_ALD_FINAL = {None: _tweedie_step, "ncsnv2": _ncsnv2_denoise}


def ald(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    n_steps_each: int = 5,
    eps: float | None = None,
    step_lr: float | None = None,
    preset: str | None = None,
    denoise: bool = True,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): n_steps_each Langevin steps at each level.

    preset="ncsnv2": ermongroup/ncsnv2's anneal_Langevin_dynamics, step size step_lr sigma_i^2 / sigma_L^2 in its
    x + step score + sqrt(2 step) z form, then x + sigma_L^2 score(x, sigma_L).
    """
    check_preset("ald", preset, ("ncsnv2",))
    if n_steps_each < 1:
        raise ValueError(f"ald needs n_steps_each >= 1, got {n_steps_each}")
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    sigma, sigma_last = sigmas[:, :-1], sigmas[:, -2:-1]
    drift, spread = _ald_steps(preset, sigma, sigma_last, eps, step_lr)
    # with score = (D - x) / sigma^2 the Langevin step is x + drift / sigma^2 (D - x) + spread z
    weight, root = per_step(x, drift / sigma**2, spread)
    for i in range(sigma.shape[1]):
        for _ in range(n_steps_each):
            # Langevin step at fixed sigma
            d = model(x, sigma[:, i]) - x
            x = torch.addcmul(x, weight[i], d).addcmul_(root[i], noise(sigma[:, i], sigma[:, i]))
    return _ALD_FINAL[preset](model, x, sigmas[:, -2]) if denoise else x
