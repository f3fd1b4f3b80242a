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

from .common import Noise, bc, noise_or_default, per_sample, per_step


def _native_walk(model, x: Tensor, sigmas: Tensor):
    """Native times of the noise levels [B, N], and x mapped to native coordinates at the first level."""
    ts = model.sde.t(sigmas[:, :-1])
    return ts, model.sde.to_native(x, ts[:, 0])


def _tweedie(model, x: Tensor, sigmas: Tensor, ts: Tensor, denoise: bool) -> Tensor:
    """Back to VE coordinates at the last level and, unless disabled, the final denoising step D(x, sigma_last)."""
    x = model.sde.to_ve(x, ts[:, -1])
    return model(x, sigmas[:, -2]) if denoise else x


def _pull(model, x: Tensor, unscale: Tensor, sigma: Tensor) -> Tensor:
    """D(x / s, sigma) - x / s for a native state x: the native score times sigma^2 s."""
    x_ve = x * unscale
    return model(x_ve, sigma) - x_ve


def em(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, denoise: bool = True) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE dx = [f - g^2 score] dt + g dw (Song et al. 2021, eq. 6)."""
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    sde = model.sde
    ts, x = _native_walk(model, x, sigmas)
    # reverse drift and diffusion at every step's t, with f = a x and score = (D(x/s) - x/s) / (sigma^2 s); dt > 0
    # as the reverse SDE runs backwards in time: x - [f - g^2 score] dt + g sqrt(dt) z
    #   = (1 - a dt) x + g^2 dt / (sigma^2 s) (D(x/s) - x/s) + g sqrt(dt) z
    t, dt = ts[:, :-1], ts[:, :-1] - ts[:, 1:]
    s, g = sde.scale(t), sde.diffusion(t)
    keep, pull, push, unscale = per_step(
        x, 1 - sde.drift_rate(t) * dt, g**2 * dt / (sigmas[:, :-2] ** 2 * s), g * torch.sqrt(dt), 1 / s
    )
    for i in range(ts.shape[1] - 1):
        # Euler-Maruyama step
        d = _pull(model, x, unscale[i], sigmas[:, i])
        x = (x * keep[i]).addcmul_(pull[i], d).addcmul_(push[i], noise(sigmas[:, i], sigmas[:, i + 1]))
    return _tweedie(model, x, sigmas, ts, denoise)


def _reverse_diffusion_steps(model, x: Tensor, sigmas: Tensor, ts: Tensor, probability_flow: bool):
    """score_sde's reverse-diffusion predictor for every step, as coefficients of x_mean = keep x + pull (D - x/s).

    With the discretised forward step x(t) = m x(t_next) + G z (f = (m - 1) x) and score = (D - x/s) / (sigma^2 s),
    the predictor mean x - f + w G^2 score (w = 1/2 for the probability flow) is (2 - m) x + w G^2 / (sigma^2 s)
    (D - x/s); the predictor then adds G z. Returns (keep, pull, G, 1/s), each [N-1, B, 1, ...].
    """
    sde = model.sde
    t = ts[:, :-1]
    m, big_g = sde.discrete_step(t, ts[:, 1:])
    s = sde.scale(t)
    weight = 0.5 if probability_flow else 1.0
    return per_step(x, 2 - m, weight * big_g**2 / (sigmas[:, :-2] ** 2 * s), big_g, 1 / s)


def rd(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, denoise: bool = True) -> Tensor:
    """Reverse-diffusion predictor x <- x - f + G^2 score + G z (Song et al. 2021, eq. 46), in native coordinates."""
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    ts, x = _native_walk(model, x, sigmas)
    keep, pull, push, unscale = _reverse_diffusion_steps(model, x, sigmas, ts, probability_flow=False)
    for i in range(ts.shape[1] - 1):
        # predictor mean, then fresh noise
        d = _pull(model, x, unscale[i], sigmas[:, i])
        x = (x * keep[i]).addcmul_(pull[i], d).addcmul_(push[i], noise(sigmas[:, i], sigmas[:, i + 1]))
    return _tweedie(model, x, sigmas, ts, denoise)


def pf_euler(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, denoise: bool = True) -> Tensor:
    """Probability-flow ODE with score_sde's reverse-diffusion predictor, probability_flow=True (Song et al. 2021)."""
    sigmas = per_sample(sigmas, x, model)
    ts, x = _native_walk(model, x, sigmas)
    keep, pull, _, unscale = _reverse_diffusion_steps(model, x, sigmas, ts, probability_flow=True)
    for i in range(ts.shape[1] - 1):
        # predictor mean x - f + G^2 / 2 score, no noise
        d = _pull(model, x, unscale[i], sigmas[:, i])
        x = (x * keep[i]).addcmul_(pull[i], d)
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
    return torch.addcmul(x, bc(step, x), grad).addcmul_(bc(torch.sqrt(2 * step), x), z)


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
    keep, pull, push, unscale = _reverse_diffusion_steps(model, x, sigmas, ts, probability_flow=False)
    for i in range(n_levels if denoise else n_levels - 1):
        t = ts[:, i]
        # corrector: Langevin MCMC at the current noise level
        for _ in range(n_corrector):
            x = _langevin_corrector(
                model, x, t, alpha[:, min(i, alpha.shape[1] - 1)], snr, noise(sigmas[:, i], sigmas[:, i])
            )
        # predictor: one reverse-diffusion step to the next level (the last level hands over to the Tweedie step)
        if i < n_levels - 1:
            d = _pull(model, x, unscale[i], sigmas[:, i])
            x = (x * keep[i]).addcmul_(pull[i], d).addcmul_(push[i], noise(sigmas[:, i], sigmas[:, i + 1]))
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
    sigma, sigma_last = sigmas[:, :-1], sigmas[:, -2:-1]
    eps_ = 0.2 * sigma_last**2 if eps is None else torch.full_like(sigma_last, eps)
    alpha = eps_ * (sigma / sigma_last) ** 2  # step size at every level [B, L]
    # with score = (D - x) / sigma^2 the Langevin step is x + alpha / (2 sigma^2) (D - x) + sqrt(alpha) z
    half, root = per_step(x, alpha / (2 * sigma**2), torch.sqrt(alpha))
    for i in range(sigma.shape[1]):
        for _ in range(n_steps_each):
            # Langevin step x <- x + alpha/2 score + sqrt(alpha) z at fixed sigma
            d = model(x, sigma[:, i]) - x
            x = torch.addcmul(x, half[i], d).addcmul_(root[i], noise(sigma[:, i], sigma[:, i]))
    return model(x, sigmas[:, -2]) if denoise else x
