"""score_sde's samplers in the model's own process coordinates, and NCSN's annealed Langevin dynamics.

The sigma schedule is mapped to the model's native times t_i = sde.t(sigma_i); the state is carried as
x_native = scale(t) x_ve between the first and the last noise level, and the final jump to sigma = 0 is the
explicit Tweedie step D(x, sigma_last). The process (models.processes) supplies f, g, the discretised step and the
native score, so these loops are the same for VE, VP-SDE and DDPM models.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Noise, bc, noise_or_default, per_sample


def _native_walk(model, x: Tensor, sigmas: Tensor):
    """Native times of the noise levels [B, N], and x mapped to native coordinates at the first level."""
    ts = model.sde.t(sigmas[:, :-1])
    return ts, model.sde.to_native(x, ts[:, 0])


def _tweedie(model, x: Tensor, sigmas: Tensor, ts: Tensor, denoise: bool) -> Tensor:
    """Back to VE coordinates at the last level and, unless disabled, the final denoising step D(x, sigma_last)."""
    x = model.sde.to_ve(x, ts[:, -1])
    return model(x, sigmas[:, -2]) if denoise else x


def em(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, denoise: bool = True) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE dx = [f - g^2 score] dt + g dw (Song et al. 2021, eq. 6)."""
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    sde = model.sde
    ts, x = _native_walk(model, x, sigmas)
    for i in range(ts.shape[1] - 1):
        t, t_next = ts[:, i], ts[:, i + 1]
        dt = t - t_next  # > 0: the reverse SDE runs backwards in time
        # reverse drift and diffusion at t
        f, g = sde.sde(x, t)
        drift = f - bc(g**2, x) * sde.native_score(model, x, t)
        # Euler-Maruyama step
        x = x - bc(dt, x) * drift + bc(g * torch.sqrt(dt), x) * noise(sigmas[:, i], sigmas[:, i + 1])
    return _tweedie(model, x, sigmas, ts, denoise)


def _reverse_diffusion(model, x: Tensor, t: Tensor, t_next: Tensor, probability_flow: bool) -> tuple[Tensor, Tensor]:
    """score_sde's reverse-diffusion predictor mean x - f + G^2 score (G^2 / 2 for the probability flow), and G."""
    f, big_g = model.sde.discretize(x, t, t_next)
    weight = 0.5 if probability_flow else 1.0
    return x - f + bc(weight * big_g**2, x) * model.sde.native_score(model, x, t), big_g


def rd(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, denoise: bool = True) -> Tensor:
    """Reverse-diffusion predictor x <- x - f + G^2 score + G z (Song et al. 2021, eq. 46), in native coordinates."""
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    ts, x = _native_walk(model, x, sigmas)
    for i in range(ts.shape[1] - 1):
        # predictor mean, then fresh noise
        x_mean, big_g = _reverse_diffusion(model, x, ts[:, i], ts[:, i + 1], probability_flow=False)
        x = x_mean + bc(big_g, x) * noise(sigmas[:, i], sigmas[:, i + 1])
    return _tweedie(model, x, sigmas, ts, denoise)


def pf_euler(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, denoise: bool = True) -> Tensor:
    """Probability-flow ODE with score_sde's reverse-diffusion predictor, probability_flow=True (Song et al. 2021)."""
    sigmas = per_sample(sigmas, x, model)
    ts, x = _native_walk(model, x, sigmas)
    for i in range(ts.shape[1] - 1):
        x, _ = _reverse_diffusion(model, x, ts[:, i], ts[:, i + 1], probability_flow=True)
    return _tweedie(model, x, sigmas, ts, denoise)


def _langevin_corrector(model, x: Tensor, t: Tensor, alpha: Tensor, snr: float, z: Tensor) -> Tensor:
    """score_sde's Langevin corrector step, its size set by the signal-to-noise ratio snr = ||step * grad|| / ||noise||.

    The noise norm is its expectation sqrt(d): score_sde uses the drawn z's norm averaged over the batch, Algorithm 4
    the drawn z's own norm, which in low dimension correlates the step with the noise and biases the chain.
    """
    grad = model.sde.native_score(model, x, t)
    grad_norm = grad.flatten(1).norm(dim=1)
    noise_norm = math.sqrt(z[0].numel())
    step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
    return x + bc(step, x) * grad + bc(torch.sqrt(2 * step), x) * z


def pc(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    snr: float | None = None,
    n_corrector: int = 1,
    denoise: bool = True,
) -> Tensor:
    """Predictor-corrector: Langevin corrector, then reverse-diffusion predictor (Song et al. 2021, Algorithm 1).

    snr defaults to score_sde's 0.16 on VE and 0.01 on VP models. The corrector's step uses per-sample norms
    (score_sde averages them over the batch), so that a sample does not depend on its batch.
    """
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    snr = (0.16 if model.process == "ve" else 0.01) if snr is None else snr
    sde = model.sde
    ts, x = _native_walk(model, x, sigmas)
    n_levels = ts.shape[1]
    alpha = sde.step_alpha(ts[:, :-1], ts[:, 1:]) if n_levels > 1 else torch.ones_like(ts)
    for i in range(n_levels if denoise else n_levels - 1):
        t = ts[:, i]
        # corrector: Langevin MCMC at the current noise level
        for _ in range(n_corrector):
            x = _langevin_corrector(
                model, x, t, alpha[:, min(i, alpha.shape[1] - 1)], snr, noise(sigmas[:, i], sigmas[:, i])
            )
        # predictor: one reverse-diffusion step to the next level (the last level hands over to the Tweedie step)
        if i < n_levels - 1:
            x_mean, big_g = _reverse_diffusion(model, x, t, ts[:, i + 1], probability_flow=False)
            x = x_mean + bc(big_g, x) * noise(sigmas[:, i], sigmas[:, i + 1])
    return _tweedie(model, x, sigmas, ts, denoise)


def ald(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    n_steps_each: int = 5,
    eps: float | None = None,
    denoise: bool = True,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): T steps of size eps sigma_i^2 / sigma_L^2 per level.

    eps defaults to NCSN's 2e-5 at sigma_L = 0.01, i.e. eps = 0.2 sigma_L^2 (a step of 0.2 sigma_i^2 at every level).
    """
    if n_steps_each < 1:
        raise ValueError(f"ald needs n_steps_each >= 1, got {n_steps_each}")
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    sigma_last = sigmas[:, -2]
    eps_ = 0.2 * sigma_last**2 if eps is None else torch.full_like(sigma_last, eps)
    for i in range(sigmas.shape[1] - 1):
        sigma = sigmas[:, i]
        alpha = eps_ * (sigma / sigma_last) ** 2
        for _ in range(n_steps_each):
            # Langevin step x <- x + alpha/2 score + sqrt(alpha) z at fixed sigma
            score = (model(x, sigma) - x) / bc(sigma, x) ** 2
            x = x + bc(alpha / 2, x) * score + bc(torch.sqrt(alpha), x) * noise(sigma, sigma)
    return model(x, sigma_last) if denoise else x
