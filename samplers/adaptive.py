"""Adaptive probability-flow ODE solver (torchdiffeq's Dormand-Prince 5(4)), as score_sde's black-box ODE sampler."""

from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint

from .common import Noise, bc, per_sample


def _worst_sample_rms(error_ratio: Tensor) -> Tensor:
    """Error norm for step control: the RMS per sample, worst sample; every sample must meet the tolerance."""
    return error_ratio.reshape(error_ratio.shape[0], -1).pow(2).mean(1).sqrt().max()


def rk45(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    denoise: bool = True,
) -> Tensor:
    """Probability-flow ODE dx/dt = f - g^2/2 score with adaptive RK45 (Song et al. 2021; Dormand & Prince 1980).

    Integrates in the model's native coordinates from each sample's first noise level to its last (only the end
    points of the schedule are used), then takes the Tweedie step. Each sample's interval [t0, t1] is mapped to
    u in [0, 1], so per-sample start levels (DLG's hand-off) share one solve.
    """
    sigmas = per_sample(sigmas, x, model)
    sde = model.sde
    t0, t1 = sde.t(sigmas[:, 0]), sde.t(sigmas[:, -2])
    span = t1 - t0

    def velocity(u: Tensor, y: Tensor) -> Tensor:
        t = t0 + u.to(torch.float64) * span
        return sde.pf_ode_drift(model, y, t) * bc(span, y)

    y0 = sde.to_native(x, t0)
    u = torch.tensor([0.0, 1.0], dtype=torch.float64, device=x.device)
    y1 = odeint(
        velocity, y0, u, rtol=rtol, atol=atol, method="dopri5", options={"norm": _worst_sample_rms, "step_t": u[1:]}
    )[-1]
    x = sde.to_ve(y1, t1)
    return model(x, sigmas[:, -2]) if denoise else x
