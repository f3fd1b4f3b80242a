"""Adaptive probability-flow ODE solvers: torchdiffeq's Dormand-Prince 5(4) per sample, or score_sde's own.

Default: torchdiffeq `dopri5` in the model's native coordinates, each sample's interval mapped to [0, 1] and the step
controlled by the worst sample's RMS error, so per-sample start levels (DLG's hand-off) share one solve; then the
Tweedie step D(x, sigma_last).

preset="score_sde" (score_sde_pytorch get_ode_sampler): scipy's solve_ivp(method="RK45") on the whole batch flattened
into one system, from t = 1 to eps on score_sde's SDE (samplers.presets.ScoreSdeSDE), rtol = atol = 1e-5 by default;
its error norm is the RMS over the whole batch, so a sample depends on the rest of the batch. Then upstream's
`denoise`: one reverse-diffusion predictor mean at t = eps on the SDE's N = 1000 discretisation (1 NFE; VE:
x + sigma_min^2 score, VP: (2 - sqrt(1 - b0 / N)) x + (b0 / N) score), in the SDE's own coordinates.
NFE is scipy's nfev (its first-step selection included) plus that step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint

from .common import Noise, bc, per_sample
from .presets import SCORE_SDE_N, ScoreSdeSDE, check_preset


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
    preset: str | None = None,
    eps: float | None = None,
    denoise: bool = True,
) -> Tensor:
    """Probability-flow ODE dx/dt = f - g^2/2 score with adaptive RK45 (Song et al. 2021; Dormand & Prince 1980).

    Integrates in the model's native coordinates from each sample's first noise level to its last (only the end
    points of the schedule are used), then takes the Tweedie step. Each sample's interval [t0, t1] is mapped to
    u in [0, 1], so per-sample start levels (DLG's hand-off) share one solve.
    """
    check_preset("rk45", preset, ("score_sde",))
    sigmas = per_sample(sigmas, x, model)
    if preset == "score_sde":
        return _score_sde_ode(model, x, sigmas, rtol, atol, eps, denoise)
    if eps is not None:
        raise ValueError("rk45: eps is the end time of preset 'score_sde'; pass preset='score_sde' with it")
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


def _score_sde_ode(model, x: Tensor, sigmas: Tensor, rtol: float, atol: float, eps, denoise: bool) -> Tensor:
    """score_sde's ODE sampler: scipy RK45 on the flattened batch from t = 1 to eps, then its one-step denoise."""
    from scipy.integrate import solve_ivp

    batch, shape = x.shape[0], x.shape
    sde = ScoreSdeSDE(model, sigmas[:, 0], SCORE_SDE_N)
    t_end = float(sde.grid(eps, 1, x.device)[0, -1])

    def at(t: float) -> Tensor:
        return torch.full((batch, 1), t, dtype=torch.float64, device=x.device)

    def score(y: Tensor, t: Tensor) -> Tensor:
        """The native score (D(y/s, sigma) - y/s) / (sigma^2 s) at times t [B, 1]."""
        s, sigma = sde.scale(t)[:, 0], sde.sigma(t)[:, 0]
        y_ve = y * bc(1 / s, y)
        return (model(y_ve, sigma) - y_ve) * bc(1 / (sigma**2 * s), y)

    def drift(t: float, flat):
        # the probability-flow ODE's drift f - g^2 / 2 score, for scipy (float64 numpy in and out)
        y = torch.from_numpy(flat).to(device=x.device, dtype=x.dtype).view(shape)
        tt = at(t)
        v = y * bc(sde.drift_rate(tt)[:, 0], y) - bc(0.5 * sde.diffusion(tt)[:, 0] ** 2, y) * score(y, tt)
        return v.reshape(-1).to("cpu", torch.float64).numpy()

    y0 = x * bc(sde.prior_std / sigmas[:, 0], x)  # score_sde's prior from the harness's standard normal
    solution = solve_ivp(
        drift, (1.0, t_end), y0.reshape(-1).to("cpu", torch.float64).numpy(), rtol=rtol, atol=atol, method="RK45"
    )
    if not solution.success:
        raise RuntimeError(f"rk45 (preset score_sde): scipy's RK45 failed: {solution.message}")
    y = torch.from_numpy(solution.y[:, -1]).to(device=x.device, dtype=x.dtype).view(shape)
    if not denoise:
        return y
    # denoise: the reverse-diffusion predictor's mean at t = eps, (2 - m) y + G^2 score
    tt = at(t_end)
    m, big_g = sde.discrete_step(tt)
    return y * bc(2 - m[:, 0], y) + bc(big_g[:, 0] ** 2, y) * score(y, tt)
