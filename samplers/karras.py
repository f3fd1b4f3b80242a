"""Samplers that work on the noise level sigma directly: EDM's Heun samplers and DDIM."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Noise, bc, n_steps, noise_or_default, per_sample


def kar1(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, denoise: bool = True) -> Tensor:
    """Deterministic Heun sampler on dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Algorithm 1)."""
    sigmas = per_sample(sigmas, x, model)
    last = sigmas.shape[1] - 2
    for i in range(n_steps(sigmas, denoise)):
        sigma, sigma_next = sigmas[:, i], sigmas[:, i + 1]
        # Euler step
        d = (x - model(x, sigma)) / bc(sigma, x)
        x_next = x + bc(sigma_next - sigma, x) * d
        # second-order correction, except on the final step to sigma = 0 (which the Euler step makes exact Tweedie)
        if i < last:
            d_prime = (x_next - model(x_next, sigma_next)) / bc(sigma_next, x)
            x_next = x + bc(sigma_next - sigma, x) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def kar2(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    s_churn: float = 30.0,
    s_tmin: float = 0.01,
    s_tmax: float = 1.0,
    s_noise: float = 1.007,
    denoise: bool = True,
) -> Tensor:
    """Stochastic Heun sampler with churn (Karras et al. 2022, Algorithm 2; defaults of their CIFAR-10 VP setup)."""
    sigmas = per_sample(sigmas, x, model)
    noise = noise_or_default(noise, x)
    last = sigmas.shape[1] - 2
    gamma_max = min(s_churn / (sigmas.shape[1] - 1), math.sqrt(2) - 1)
    for i in range(n_steps(sigmas, denoise)):
        sigma, sigma_next = sigmas[:, i], sigmas[:, i + 1]
        # churn: raise the noise level to sigma_hat = (1 + gamma) sigma by adding fresh noise, inside [s_tmin, s_tmax]
        gamma = torch.where((sigma >= s_tmin) & (sigma <= s_tmax), gamma_max, 0.0)
        sigma_hat = sigma * (1 + gamma)
        eps = noise(sigma, sigma_hat)
        x_hat = x + bc(torch.sqrt(sigma_hat**2 - sigma**2) * s_noise, x) * eps
        # Euler step from sigma_hat
        d = (x_hat - model(x_hat, sigma_hat)) / bc(sigma_hat, x)
        x_next = x_hat + bc(sigma_next - sigma_hat, x) * d
        # second-order correction, except on the final step to sigma = 0
        if i < last:
            d_prime = (x_next - model(x_next, sigma_next)) / bc(sigma_next, x)
            x_next = x_hat + bc(sigma_next - sigma_hat, x) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def ddim(
    model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, eta: float = 0.0, denoise: bool = True
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) written in VE coordinates; eta=0 is Euler on the PF-ODE in sigma.

    Dividing DDIM's VP update by sqrt(alpha_bar_next) gives, exactly, x_next = D + sqrt(sigma_next^2 - c^2) eps_hat
    + c z with c = eta sigma_next sqrt(1 - sigma_next^2 / sigma^2); so one loop serves VE and VP models alike.
    """
    sigmas = per_sample(sigmas, x, model)
    noise = noise_or_default(noise, x) if eta > 0 else None
    for i in range(n_steps(sigmas, denoise)):
        sigma, sigma_next = sigmas[:, i], sigmas[:, i + 1]
        # predict x0 and the noise direction
        denoised = model(x, sigma)
        eps_hat = (x - denoised) / bc(sigma, x)
        # DDIM's stochasticity sigma_t(eta), in VE units
        c = eta * sigma_next * torch.sqrt((1 - sigma_next**2 / sigma**2).clamp(min=0))
        x = denoised + bc(torch.sqrt(sigma_next**2 - c**2), x) * eps_hat
        if noise is not None:
            x = x + bc(c, x) * noise(sigma, sigma_next)
    return x
