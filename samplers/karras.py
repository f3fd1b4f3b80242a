"""Samplers that work on the noise level sigma directly: EDM's Heun samplers and DDIM."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Noise, n_steps, noise_or_default, per_sample, per_step


def kar1(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, denoise: bool = True) -> Tensor:
    """Deterministic Heun sampler on dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Algorithm 1)."""
    sigmas = per_sample(sigmas, x, model)
    last = sigmas.shape[1] - 2
    sigma, sigma_next = sigmas[:, :-1], sigmas[:, 1:]
    h = sigma_next - sigma
    inv, inv_next, step, half_step = per_step(x, 1 / sigma, 1 / sigma_next.clamp(min=1e-300), h, h / 2)
    for i in range(n_steps(sigmas, denoise)):
        # Euler step
        d = (x - model(x, sigma[:, i])) * inv[i]
        x_next = torch.addcmul(x, step[i], d)
        # second-order correction, except on the final step to sigma = 0 (which the Euler step makes exact Tweedie)
        if i < last:
            d_prime = (x_next - model(x_next, sigma_next[:, i])) * inv_next[i]
            x_next = torch.addcmul(x, half_step[i], d + d_prime)
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
    # churn: each step first raises the noise level to sigma_hat = (1 + gamma) sigma, inside [s_tmin, s_tmax]
    sigma, sigma_next = sigmas[:, :-1], sigmas[:, 1:]
    # gamma in the schedule's dtype (float64): torch.where over two Python floats would round it to float32
    gamma = gamma_max * ((sigma >= s_tmin) & (sigma <= s_tmax)).to(sigma.dtype)
    sigma_hat = sigma * (1 + gamma)
    h = sigma_next - sigma_hat
    churn, inv_hat, inv_next, step, half_step = per_step(
        x, torch.sqrt(sigma_hat**2 - sigma**2) * s_noise, 1 / sigma_hat, 1 / sigma_next.clamp(min=1e-300), h, h / 2
    )
    for i in range(n_steps(sigmas, denoise)):
        # churn: add fresh noise to reach sigma_hat
        x_hat = torch.addcmul(x, churn[i], noise(sigma[:, i], sigma_hat[:, i]))
        # Euler step from sigma_hat
        d = (x_hat - model(x_hat, sigma_hat[:, i])) * inv_hat[i]
        x_next = torch.addcmul(x_hat, step[i], d)
        # second-order correction, except on the final step to sigma = 0
        if i < last:
            d_prime = (x_next - model(x_next, sigma_next[:, i])) * inv_next[i]
            x_next = torch.addcmul(x_hat, half_step[i], d + d_prime)
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
    sigma, sigma_next = sigmas[:, :-1], sigmas[:, 1:]
    # DDIM's stochasticity sigma_t(eta) in VE units, and the weight of eps_hat = (x - D) / sigma in the update
    c = eta * sigma_next * torch.sqrt((1 - sigma_next**2 / sigma**2).clamp(min=0))
    keep, push = per_step(x, torch.sqrt(sigma_next**2 - c**2) / sigma, c)
    for i in range(n_steps(sigmas, denoise)):
        # predict x0, then x_next = D + sqrt(sigma_next^2 - c^2) eps_hat (+ c z): a point between D and x
        denoised = model(x, sigma[:, i])
        x = torch.lerp(denoised, x, keep[i])
        if noise is not None:
            x = x.addcmul_(push[i], noise(sigma[:, i], sigma_next[:, i]))
    return x
