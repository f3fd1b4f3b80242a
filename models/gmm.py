"""Gaussian mixtures: analytic models with an exact denoiser at every noise level.

Perturbing a mixture sum_k w_k N(mu_k, C_k) with N(0, sigma^2 I) gives the mixture sum_k w_k N(mu_k, C_k + sigma^2 I),
so the posterior mean E[x0 | x] (the ideal denoiser), the density at every sigma, exact samples, exact moments and the
exact posterior over a grid of noise levels are all closed-form. With C_k = U_k diag(lam_k) U_k^T:

    D(x, sigma) = sum_k r_k(x) [mu_k + U_k diag(lam_k / (lam_k + sigma^2)) U_k^T (x - mu_k)]

where r_k(x) are the component responsibilities under the perturbed mixture.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import Denoiser
from .processes import Process

__all__ = ["GaussianMixture", "GMMDenoiser", "gmm_2d", "gmm_64d"]


class GaussianMixture:
    """A mixture of full-covariance Gaussians in R^d; parameters kept in float64."""

    def __init__(self, weights, means, covs):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covs.shape != (k, d, d):
            raise ValueError(
                f"mixture shapes disagree: weights {tuple(self.weights.shape)}, "
                f"means {tuple(self.means.shape)}, covs {tuple(self.covs.shape)}"
            )
        if bool((self.weights <= 0).any()) or abs(float(self.weights.sum()) - 1) > 1e-9:
            raise ValueError("mixture weights must be positive and sum to 1")
        self.covs = 0.5 * (self.covs + self.covs.transpose(1, 2))
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)
        if bool((self.eigvals < 0).any()):
            raise ValueError("mixture covariances must be positive semi-definite")
        self.eigvals = self.eigvals.clamp(min=0)
        self.means_rot = torch.einsum("kd,kde->ke", self.means, self.eigvecs)  # each mean in its eigenbasis [K, d]
        self.group_member, self.group_values, self.group_sizes = _spectrum_groups(self.eigvals)

    @classmethod
    def single(cls, mean, cov) -> GaussianMixture:
        mean = torch.as_tensor(mean, dtype=torch.float64)
        return cls(torch.ones(1, dtype=torch.float64), mean[None], torch.as_tensor(cov, dtype=torch.float64)[None])

    def to(self, device: torch.device | str) -> GaussianMixture:
        """The same mixture with its tensors on `device` (self if already there)."""
        if self.means.device == torch.device(device):
            return self
        moved = GaussianMixture.__new__(GaussianMixture)
        for key, value in vars(self).items():
            setattr(moved, key, value.to(device))
        return moved

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    # --- exact moments and samples ------------------------------------------------------------------------------
    def mean(self) -> Tensor:
        return self.weights @ self.means

    def cov(self) -> Tensor:
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - m[:, None] * m[None, :]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n exact samples [n, d] (float64) and their component labels [n]."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        roots = self.eigvecs * self.eigvals.sqrt()[:, None, :]  # C_k^(1/2) = U_k diag(sqrt(lam_k))
        x = torch.empty_like(z)
        for k in range(self.n_components):
            rows = labels == k
            x[rows] = self.means[k] + z[rows] @ roots[k].T
        return x, labels

    # --- perturbed densities --------------------------------------------------------------------------------------
    def component_log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log N(x; mu_k, C_k + sigma^2 I) for every component: [B, K]; sigma a float or [B] tensor."""
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
        y = torch.einsum("bd,kde->bke", x, self.eigvecs) - self.means_rot
        var = self.eigvals[None] + sigma**2
        return -0.5 * ((y**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Exact log-density of the sigma-perturbed mixture at x: [B]."""
        return torch.logsumexp(torch.log(self.weights) + self.component_log_prob(x, sigma), dim=-1)

    def responsibilities(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Posterior component probabilities p(k | x) under the sigma-perturbed mixture: [B, K]."""
        return _softmax(torch.log(self.weights) + self.component_log_prob(x, sigma))

    def level_terms(self, sigmas: Tensor) -> Tensor:
        """What level_log_posterior needs of a grid of levels [L], independent of x: per level and component, the
        weights [L, K, G + 1] that map (squared eigen-coordinates summed per group, 1) to log w_k N(x; mu_k, C_k +
        sigma^2 I) + d/2 log(2 pi): -1/(2 var_g) per group and log w_k - log|C_k + sigma^2 I| / 2. Worth keeping for
        a fixed grid."""
        var = self.group_values[None] + sigmas.to(torch.float64)[:, None, None] ** 2  # [L, K, G]
        offset = torch.log(self.weights) - 0.5 * (self.group_sizes * torch.log(var)).sum(-1)  # [L, K]
        return torch.cat([-0.5 / var, offset[..., None]], -1)

    def level_log_posterior(
        self,
        x: Tensor,
        sigmas: Tensor,
        log_prior: Tensor | None = None,
        terms: Tensor | None = None,
    ) -> Tensor:
        """Exact log p(sigma_j | x) over a grid of noise levels [L] (uniform prior unless given): [B, L].

        `terms` = level_terms(sigmas), when the caller keeps them for its grid."""
        weights = self.level_terms(sigmas) if terms is None else terms
        x = x.to(torch.float64)
        y2 = (torch.einsum("bd,kde->bke", x, self.eigvecs) - self.means_rot) ** 2
        features = torch.cat(
            [
                torch.einsum("bke,keg->kbg", y2, self.group_member),
                y2.new_ones(x.shape[0])[None, :, None].expand(self.n_components, -1, 1),
            ],
            -1,
        )  # [K, B, G + 1]
        logn = torch.bmm(features, weights.permute(1, 2, 0))  # [K, B, L]: the 2*pi term cancels
        # log-sum-exp over the components: terms below exp(-700) of the largest cannot change a float64 sum, and
        # clamping them keeps exp out of the subnormal range, where it is ~10x slower on x86
        top = logn.amax(0)
        loglik = logn.sub_(top).clamp_(min=-700).exp_().sum(0).log_().add_(top)  # [B, L]
        if log_prior is not None:
            loglik = loglik + log_prior.to(loglik)
        return torch.log_softmax(loglik, dim=-1)

    def flow(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Exact probability-flow ODE map from sigma_from to sigma_to; closed-form for a single Gaussian only."""
        if self.n_components != 1:
            raise ValueError("the exact probability-flow map is closed-form only for a single Gaussian")
        lam, u, mu = self.eigvals[0], self.eigvecs[0], self.means[0]
        factor = torch.sqrt((lam + sigma_to**2) / (lam + sigma_from**2))
        return mu + ((x.to(torch.float64) - mu) @ u * factor) @ u.T


class GMMDenoiser(Denoiser):
    """The exact denoiser of a GaussianMixture, on flat samples of shape [d]."""

    def __init__(
        self,
        mixture: GaussianMixture,
        sde: Process,
        *,
        name: str = "",
        dtype=torch.float32,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ):
        super().__init__(
            shape=(mixture.dim,), sde=sde, data_range=(-1.0, 1.0), name=name, sigma_min=sigma_min, sigma_max=sigma_max
        )
        self.mixture = mixture
        self.register_buffer("log_w", torch.log(mixture.weights).to(dtype))
        self.register_buffer("means", mixture.means.to(dtype))
        self.register_buffer("eigvecs", mixture.eigvecs.to(dtype))
        self.register_buffer("eigvals", mixture.eigvals.to(dtype))
        self.register_buffer("means_rot", mixture.means_rot.to(dtype))

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        dtype = self.means.dtype
        xc = x.to(dtype)
        s2 = sigma.to(dtype).reshape(-1, 1, 1) ** 2
        y = torch.einsum("bd,kde->bke", xc, self.eigvecs) - self.means_rot  # x - mu_k in each eigenbasis [B, K, d]
        var = self.eigvals + s2
        log_r = self.log_w - 0.5 * ((y * y / var).sum(-1) + torch.log(var).sum(-1))
        r = _softmax(log_r)  # responsibilities [B, K]
        shrunk = r[..., None] * y * (self.eigvals / var)
        return (r @ self.means + torch.einsum("bke,kde->bd", shrunk, self.eigvecs)).to(x.dtype)


def _spectrum_groups(eigvals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each component's eigenvalues [K, d] (ascending) grouped by value, equal up to 1e-12 of the largest (e.g. the
    isotropic part of a low-rank-plus-isotropic covariance is one group): membership [K, d, G] (0/1), group values
    [K, G] and sizes [K, G], padded with empty groups. Quadratic forms and log-determinants over the eigenbasis only
    need per-group sums, so level posteriors cost G instead of d per component and level."""
    k, d = eigvals.shape
    found = []
    for lam in eigvals:
        tol = 1e-12 * max(float(lam[-1]), 1e-300)
        starts = torch.nonzero(torch.diff(lam) > tol).flatten() + 1
        found.append(torch.tensor_split(torch.arange(d), starts.tolist()))
    g = max(len(groups) for groups in found)
    member = torch.zeros(k, d, g, dtype=torch.float64)
    values, sizes = torch.ones(k, g, dtype=torch.float64), torch.zeros(k, g, dtype=torch.float64)
    for c, groups in enumerate(found):
        for j, idx in enumerate(groups):
            member[c, idx, j] = 1.0
            values[c, j], sizes[c, j] = eigvals[c, idx].mean(), len(idx)
    return member, values, sizes


def _softmax(logits: Tensor) -> Tensor:
    """Softmax over the last dim from element-wise ops: torch.softmax starts OpenMP threads even for a few rows, which
    costs ~10 ms per call on a busy machine (measured on 2 shared cores), more than the whole denoiser."""
    r = torch.exp(logits - logits.amax(-1, keepdim=True))
    return r / r.sum(-1, keepdim=True)


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def gmm_2d() -> GaussianMixture:
    """Six anisotropic Gaussians on a ring of radius 0.6 with unequal weights (data within about [-1, 1])."""
    weights = np.array([0.25, 0.2, 0.2, 0.15, 0.1, 0.1])
    angles = 2 * math.pi * np.arange(6) / 6
    means = 0.6 * np.stack([np.cos(angles), np.sin(angles)], 1)
    covs = np.stack([_rotation(a) @ np.diag([0.06**2, 0.025**2]) @ _rotation(a).T for a in angles])
    return GaussianMixture(weights, means, covs)


def gmm_64d(seed: int = 0) -> GaussianMixture:
    """Eight 64-d Gaussians with random means and low-rank-plus-isotropic covariances, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    k, d, rank = 8, 64, 6
    weights = np.exp(np.linspace(0, 1.5, k))
    weights /= weights.sum()
    means = rng.uniform(-0.5, 0.5, size=(k, d))
    factors = rng.normal(size=(k, d, rank)) * (0.25 / math.sqrt(rank))
    covs = factors @ factors.transpose(0, 2, 1) + 0.03**2 * np.eye(d)
    return GaussianMixture(weights, means, covs)
