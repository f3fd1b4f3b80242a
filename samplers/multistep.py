"""Multistep solvers of the probability-flow ODE: DPM-Solver++ (2M, 3M), UniPC, DEIS (tAB) and iPNDM.

Each reuses the denoiser outputs of earlier steps instead of evaluating the network more than once per step, so every
positive noise level of the schedule costs one evaluation: NFE = N for a schedule of N levels (then 0) with the final
denoising step, N - 1 without it.

Notation (VE terms, x = x0 + sigma eps). sigma_i is the schedule, lambda_i = -log sigma_i (half the log-SNR), h_i =
lambda_{i+1} - lambda_i > 0 the step in lambda, D_i = D(x_i, sigma_i) the denoiser's output and eps_i = (x_i - D_i) /
sigma_i the noise estimate. The probability flow is dx/dsigma = eps(x, sigma), or in lambda the semi-linear
dx/dlambda = D - x, whose exact solution over one step is

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + int_{lambda_i}^{lambda_{i+1}} e^{lambda - lambda_{i+1}} D(lambda) dlambda.

The papers write their updates for a VP state x_vp = alpha x with sigma_vp = alpha sigma; divided by alpha_{i+1} they
become the updates here, so each sampler runs unchanged on VE and VP models.

- dpmpp_2m, dpmpp_3m: DPM-Solver++ (Lu et al. 2022): D extrapolated in lambda from the last 2 or 3 outputs; the second
  order step is the paper's Algorithm 2 (k-diffusion's sample_dpmpp_2m, diffusers' "midpoint"), the third order one
  DPM-Solver's multistep third-order update (diffusers' DPMSolverMultistepScheduler, solver_order=3).
- unipc: UniPC (Zhao et al. 2023): predictor UniP-p, then, once the network has been evaluated at its result, the
  corrector UniC-p on the same step, with B(h) = e^h - 1 ("bh2") or h ("bh1"); as diffusers' UniPCMultistepScheduler.
- deis: DEIS tAB (Zhang & Chen 2023): eps extrapolated by a Lagrange polynomial in log sigma, integrated exactly over
  sigma (diffusers' DEISMultistepScheduler, "logrho").
- ipndm: improved PNDM (Zhang & Chen 2023): Adams-Bashforth with the fixed-step coefficients 1; 3/2, -1/2;
  23/12, -16/12, 5/12; 55/24, -59/24, 37/24, -9/24 on eps in sigma, as zju-pi/diff-sampler's ipndm.

Warm-up and final steps. Step i uses at most i + 1 outputs. The step to sigma = 0 (the schedule's last interval, taken
when denoise=True) is always first order: x = D(x, sigma_N), the Tweedie step every scorebench sampler ends with. With
lower_order_final (default), DPM-Solver++ and DEIS take the last step first order and the one before it at most second
order when fewer than 15 steps are taken (DPM-Solver's stabilisation of few-step sampling, as diffusers does), and UniPC
takes step i at order at most (steps taken - i), diffusers' rule. With denoise=False the walk ends at the last positive
level and these rules apply to the last step taken.

All schedule arithmetic (steps, orders, weights, UniPC's small linear systems) is done once before the loop, in
float64 and for every step at once; the loop itself is one network call and a few multiply-adds per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Noise, n_steps, per_sample

__all__ = ["dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm", "step_orders"]

FEW_STEPS = 15  # below this many steps DPM-Solver++ and DEIS lower the order of their last two steps
# Adams-Bashforth coefficients of orders 1-4 for a constant step, newest derivative first (iPNDM)
ADAMS_BASHFORTH = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


# --- shared pieces ----------------------------------------------------------------------------------------------------
def step_orders(n: int, order: int, *, final: str, to_zero: bool) -> list[int]:
    """The order of each of n steps: warm-up min(order, i + 1), then the final-step rule.

    final: "few" (DPM-Solver++, DEIS: with fewer than 15 steps the last step is first order and the one before it at
    most second order), "each" (UniPC: step i at most order n - i) or "none". The step to sigma = 0 is first order.
    """
    orders = [min(order, i + 1) for i in range(n)]
    if final == "few" and n < FEW_STEPS:
        for back, cap in ((1, 1), (2, 2)):
            if n >= back:
                orders[-back] = min(orders[-back], cap)
    elif final == "each":
        orders = [min(o, n - i) for i, o in enumerate(orders)]
    if to_zero and n:
        orders[-1] = 1
    return orders


def _distinct_rows(sigmas: Tensor) -> Tensor:
    """The rows the coefficients must be computed for: one row when the batch shares an (expanded) schedule."""
    return sigmas[:1] if sigmas.shape[0] > 1 and sigmas.stride(0) == 0 else sigmas


def _lambda_steps(rows: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """h_i, h_{i-1}, h_{i-2} for the first n steps [R, n] (float64). The step to sigma = 0 (h infinite) and the steps
    before the schedule starts get a stand-in of 1: their coefficients are never used, but must stay finite."""
    h = torch.log(rows[:, :n] / rows[:, 1 : n + 1])
    h = torch.where(torch.isfinite(h), h, torch.ones_like(h))
    pad = h.new_ones(h.shape[0], 2)
    shifted = torch.cat([pad, h], 1)
    return h, shifted[:, 1:-1], shifted[:, :-2]


def _select(orders: list[int], by_order: dict[int, Tensor], width: int) -> Tensor:
    """Per step i the weights of its order: [R, n, width] from {order: [R, n, <= width]} (zero-padded)."""
    order = torch.tensor(orders, device=next(iter(by_order.values())).device)[None, :, None]
    out = None
    for p, weights in by_order.items():
        weights = torch.nn.functional.pad(weights, (0, width - weights.shape[-1]))
        out = weights if out is None else torch.where(order == p, weights, out)
    return out


def _per_step(x: Tensor, values: Tensor) -> Tensor:
    """[R, n] or [R, n, K] float64 coefficients as [n, R, (K,) 1, ..., 1] in x's dtype: entry i scales x at step i."""
    trailing = (1,) * (x.ndim - 1)
    values = values.to(x.dtype).transpose(0, 1).contiguous()
    return values.view(*values.shape, *trailing)


def _combine(x: Tensor, scale: Tensor | None, weights: Tensor, history: list[Tensor]) -> Tensor:
    """scale * x + sum_j weights[:, j] * history[j], history newest first (a new tensor; nothing is modified)."""
    out = x if scale is None else x * scale
    for j, y in enumerate(history):
        out = torch.addcmul(out, weights[:, j], y)
    return out


def _walk(
    model,
    x: Tensor,
    sigmas: Tensor,
    denoise: bool,
    orders: list[int],
    scale: Tensor | None,
    weights: Tensor,
    *,
    keep: str,
) -> Tensor:
    """One loop for the explicit multistep methods: x_{i+1} = scale_i x_i + sum_j weights_ij y_{i-j}, with y the
    denoiser's output (keep="denoised") or the noise estimate eps (keep="eps"); the step to sigma = 0 returns D."""
    n = len(orders)
    width = weights.shape[-1]
    scale = None if scale is None else _per_step(x, scale)
    weights = _per_step(x, weights)
    inv_sigma = _per_step(x, 1 / _distinct_rows(sigmas)[:, :n]) if keep == "eps" else None
    history: list[Tensor] = []
    for i in range(n):
        denoised = model(x, sigmas[:, i])
        if denoise and i == n - 1:
            return denoised  # the step to sigma = 0: Tweedie's estimate
        y = denoised if inv_sigma is None else (x - denoised) * inv_sigma[i]
        history = [y, *history[: width - 1]]
        x = _combine(x, None if scale is None else scale[i], weights[i], history[: orders[i]])
    return x


# --- DPM-Solver++ -----------------------------------------------------------------------------------------------------
def _dpmpp_weights(rows: Tensor, orders: list[int], third_order: str = "published") -> tuple[Tensor, Tensor]:
    """(sigma_{i+1} / sigma_i, weights of D_i, D_{i-1}, D_{i-2}) of each step, [R, n] and [R, n, 3].

    With phi_1 = 1 - e^{-h}, phi_2 = 1 - phi_1 / h, phi_3 = (h - phi_1) / h^2 - 1/2 and r_k = h_{i-k} / h:
      first order   D_i
      second order  D_i + (D_i - D_{i-1}) / (2 r_1)                     (times phi_1, as all of the first two)
      third order   phi_1 D_i + phi_2 D1 - phi_3 D2 with the divided differences
                    d_0 = (D_i - D_{i-1}) / r_1, d_1 = (D_{i-1} - D_{i-2}) / r_2,
                    D1 = d_0 + r_1 (d_0 - d_1) / (r_1 + r_2), D2 = (d_0 - d_1) / (r_1 + r_2).
    With D1 ~ h D' and D2 ~ h^2 D''/2, the exact integral weighs D'' by h^2/2 - h + phi_1 = -h^2 phi_3, so D2 needs the
    weight 2 phi_3. "published" (DPM-Solver's multistep third-order update, as diffusers and k-diffusion run it) gives
    it phi_3: the step is exact only for linear D, and the method converges at second order. "exact" gives it 2 phi_3:
    exact for quadratic D, third order.
    """
    n = len(orders)
    h, h1, h2 = (v[..., None] for v in _lambda_steps(rows, n))
    e0, e1, e2 = torch.eye(3, dtype=rows.dtype, device=rows.device)  # "D_i", "D_{i-1}", "D_{i-2}" as weight vectors
    phi1 = -torch.expm1(-h)
    phi2 = 1 - phi1 / h
    phi3 = (h - phi1) / h**2 - 0.5
    d2_weight = 2 * phi3 if third_order == "exact" else phi3
    r1, r2 = h1 / h, h2 / h
    d0, d1 = (e0 - e1) / r1, (e1 - e2) / r2
    by_order = {
        1: phi1 * e0,
        2: phi1 * (e0 + d0 / 2),
        3: phi1 * e0 + phi2 * (d0 + r1 * (d0 - d1) / (r1 + r2)) - d2_weight * (d0 - d1) / (r1 + r2),
    }
    return rows[:, 1 : n + 1] / rows[:, :n], _select(orders, by_order, 3)


def _dpmpp(
    model, x: Tensor, sigmas: Tensor, order: int, lower_order_final: bool, denoise: bool, third_order: str = "published"
) -> Tensor:
    if third_order not in ("published", "exact"):
        raise ValueError(f"dpmpp_3m third_order must be 'published' or 'exact', got {third_order!r}")
    sigmas = per_sample(sigmas, x, model)
    n = n_steps(sigmas, denoise)
    orders = step_orders(n, order, final="few" if lower_order_final else "none", to_zero=denoise)
    if n == 0:
        return x
    scale, weights = _dpmpp_weights(_distinct_rows(sigmas), orders, third_order)
    return _walk(model, x, sigmas, denoise, orders, scale, weights, keep="denoised")


def dpmpp_2m(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    lower_order_final: bool = True,
    denoise: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep in lambda = -log sigma on the denoiser.

    Args:
        lower_order_final: with fewer than 15 steps, take the last step first order (no effect when denoise=True:
            the last step, to sigma = 0, is first order anyway).
        denoise: take the schedule's final interval to sigma = 0 (x = D(x, sigma_N)); NFE = N, else N - 1.
    """
    return _dpmpp(model, x, sigmas, 2, lower_order_final, denoise)


def dpmpp_3m(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    lower_order_final: bool = True,
    third_order: str = "published",
    denoise: bool = True,
) -> Tensor:
    """DPM-Solver++(3M): third-order multistep in lambda = -log sigma on the denoiser (first and second order while
    the history fills).

    Args:
        lower_order_final: with fewer than 15 steps, take the last step first order and the one before it second
            order (as diffusers' DPMSolverMultistepScheduler does).
        third_order: "published": the third-order update of DPM-Solver's code, diffusers and k-diffusion, whose
            second divided difference carries half the weight a quadratic extrapolation needs, so that it converges
            at second order (measured on a Gaussian: tests/test_solvers.py); "exact": that weight doubled, third order.
        denoise: take the schedule's final interval to sigma = 0 (x = D(x, sigma_N)); NFE = N, else N - 1.
    """
    return _dpmpp(model, x, sigmas, 3, lower_order_final, denoise, third_order)


# --- UniPC ------------------------------------------------------------------------------------------------------------
def _unipc_weights(rows: Tensor, orders: list[int], variant: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Predictor and corrector of each step i: sigma_{i+1} / sigma_i [R, n], the predictor's weights of D_i, D_{i-1},
    D_{i-2} [R, n, 3], the corrector's weights of the same [R, n, 3] and its weight of D_{i+1} [R, n].

    With hh = -h, B(h) = e^hh - 1 (bh2) or hh (bh1), r_k = (lambda_{i-k} - lambda_i) / h and D1_k = (D_{i-k} - D_i) /
    r_k, a step of order p is x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^hh - 1) D_i - B(h) sum_k rho_k D1_k over
    k < p, the corrector's with one more term rho_p (D_{i+1} - D_i). rho solves R rho = b with R_jk = r_k^j (r_p = 1)
    and b_j = j! phi_{j+1} / B(h), phi_1 = (e^hh - 1) / hh - 1, phi_{j+1} = phi_j / hh - 1 / (j+1)!: the predictor
    UniP-p uses the first p - 1 rows and columns (rho = 1/2 at p = 2), the corrector UniC-p all p (rho = 1/2 at p = 1),
    as diffusers' UniPCMultistepScheduler.
    """
    n = len(orders)
    h, h1, h2 = (v[..., None] for v in _lambda_steps(rows, n))
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_of_h = h_phi_1 if variant == "bh2" else hh
    b, phi, factorial = [], h_phi_1 / hh - 1, 1
    for j in range(1, 4):
        b.append(phi * factorial / b_of_h)
        factorial *= j + 1
        phi = phi / hh - 1 / factorial
    b = torch.cat(b, -1)  # [R, n, 3]
    r = torch.cat([-h1 / h, -(h1 + h2) / h], -1)  # r_1, r_2

    def solve(nodes: Tensor) -> Tensor:
        """rho [R, n, k] of the Vandermonde system sum_m nodes_m^j rho_m = b_j, j < k."""
        k = nodes.shape[-1]
        return torch.linalg.solve(torch.stack([nodes**j for j in range(k)], -2), b[..., :k])

    def weights(rho: Tensor) -> Tensor:
        """Weights of D_i, D_{i-1}, ... in -(e^hh - 1) D_i - B(h) sum_k rho_k (D_{i-k} - D_i) / r_k."""
        older = -b_of_h * rho / r[..., : rho.shape[-1]]
        return torch.cat([-h_phi_1 - older.sum(-1, keepdim=True), older], -1)

    half = torch.full_like(h, 0.5)
    predictor, corrector, fresh = {}, {}, {}
    for p in (1, 2, 3):
        rho_p = {1: h[..., :0], 2: half}.get(p)
        predictor[p] = weights(solve(r[..., : p - 1]) if rho_p is None else rho_p)
        rho_c = half if p == 1 else solve(torch.cat([r[..., : p - 1], torch.ones_like(h)], -1))
        last = -b_of_h * rho_c[..., -1:]  # weight of D_{i+1}; D_i's weight loses as much (D1 = D_{i+1} - D_i)
        corrector[p] = weights(rho_c[..., :-1]) - torch.nn.functional.pad(last, (0, p - 1))
        fresh[p] = last
    scale = rows[:, 1 : n + 1] / rows[:, :n]
    return scale, _select(orders, predictor, 3), _select(orders, corrector, 3), _select(orders, fresh, 1)[..., 0]


def unipc(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    order: int = 3,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    denoise: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023): UniP-p predictor and UniC-p corrector in lambda = -log sigma on the denoiser.

    The corrector re-uses the network evaluation at the predicted point that the next step needs anyway, so it costs
    no evaluation: NFE = N (N - 1 without the final denoising step). Its correction of a point whose next step goes to
    sigma = 0 would be discarded by that first-order step, so it is skipped there, as its value never matters.

    Args:
        order: p of UniP-p / UniC-p, 1..3 (UniPC-p is accurate to order p + 1 where the corrector runs).
        variant: "bh2" (B(h) = e^h - 1, the paper's choice for unconditional sampling) or "bh1" (B(h) = h).
        corrector: apply UniC after each predictor step (False: UniP alone).
        lower_order_final: step i at order at most (steps taken - i), as diffusers' UniPCMultistepScheduler.
        denoise: take the schedule's final interval to sigma = 0 (x = D(x, sigma_N)); NFE = N, else N - 1.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order!r}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    sigmas = per_sample(sigmas, x, model)
    n = n_steps(sigmas, denoise)
    orders = step_orders(n, order, final="each" if lower_order_final else "none", to_zero=denoise)
    if n == 0:
        return x
    scale, predict, correct, fresh = (_per_step(x, v) for v in _unipc_weights(_distinct_rows(sigmas), orders, variant))
    history: list[Tensor] = []
    x_start = x  # x_i, the start of the step just taken (corrected)
    for i in range(n):
        denoised = model(x, sigmas[:, i])
        if denoise and i == n - 1:
            return denoised  # the step to sigma = 0: Tweedie's estimate
        if corrector and i > 0:
            # UniC: redo step i - 1 from x_{i-1} with the new output D_i as one more interpolation point
            x = torch.addcmul(
                _combine(x_start, scale[i - 1], correct[i - 1], history[: orders[i - 1]]), fresh[i - 1], denoised
            )
        history = [denoised, *history[:2]]
        x_start = x
        # UniP: extrapolate D from the last orders[i] outputs
        x = _combine(x, scale[i], predict[i], history[: orders[i]])
    return x


# --- DEIS and iPNDM: multistep on eps in sigma ------------------------------------------------------------------------
def _monomial_integrals(delta: Tensor, degree: int) -> list[Tensor]:
    """I_m = int_0^delta v^m e^v dv for m = 0..degree: I_0 = e^delta - 1, I_m = delta^m e^delta - m I_{m-1}."""
    integrals = [torch.expm1(delta)]
    for m in range(1, degree + 1):
        integrals.append(delta**m * torch.exp(delta) - m * integrals[-1])
    return integrals


def _lagrange_integrals(sigma: Tensor, delta: Tensor, nodes: list[Tensor]) -> Tensor:
    """c_j = sigma int_0^delta l_j(v) e^v dv for the Lagrange basis l_j over `nodes` (v = log sigma' - log sigma_i,
    so that c_j = int_{sigma_i}^{sigma_{i+1}} l_j(log rho / sigma_i) d rho): [R, n, len(nodes)]."""
    integrals = _monomial_integrals(delta, len(nodes) - 1)
    out = []
    for j, v_j in enumerate(nodes):
        poly = [torch.ones_like(delta)]  # monomial coefficients of prod_{k != j} (v - v_k) / (v_j - v_k)
        for k, v_k in enumerate(nodes):
            if k != j:
                shifted = [torch.zeros_like(delta), *poly]
                poly = [
                    (s - v_k * c) / (v_j - v_k) for s, c in zip(shifted, [*poly, torch.zeros_like(delta)], strict=True)
                ]
        out.append(sigma * sum(c * i_m for c, i_m in zip(poly, integrals, strict=True)))
    return torch.stack(out, -1)


def _deis_weights(rows: Tensor, orders: list[int]) -> Tensor:
    """Weights of eps_i, eps_{i-1}, eps_{i-2} in x_{i+1} = x_i + sum_j c_j eps_{i-j}: c_j = int_{sigma_i}^{sigma_{i+1}}
    l_j(log rho) d rho, l_j the Lagrange basis in log sigma over the nodes log sigma_i, log sigma_{i-1}, ..."""
    n = len(orders)
    h, h1, h2 = _lambda_steps(rows, n)
    sigma = rows[:, :n]
    nodes = [torch.zeros_like(h), h1, h1 + h2]  # log sigma_{i-k} - log sigma_i
    by_order = {p: _lagrange_integrals(sigma, -h, nodes[:p]) for p in (1, 2, 3)}
    by_order[1] = rows[:, 1 : n + 1, None] - sigma[..., None]  # exact Euler/DDIM weight, also for the step to 0
    return _select(orders, by_order, 3)


def deis(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    order: int = 3,
    lower_order_final: bool = True,
    denoise: bool = True,
) -> Tensor:
    """DEIS tAB (Zhang & Chen 2023): eps from the last `order` steps extrapolated by a polynomial in log sigma and
    integrated exactly over sigma, x_{i+1} = x_i + sum_j c_ij eps_{i-j} (the exponential integrator in VE terms).

    Args:
        order: 1..3 (1 is DDIM).
        lower_order_final: with fewer than 15 steps, take the last step first order and the one before it at most
            second order (as diffusers' DEISMultistepScheduler does).
        denoise: take the schedule's final interval to sigma = 0 (x = D(x, sigma_N)); NFE = N, else N - 1.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"deis order must be 1, 2 or 3, got {order!r}")
    sigmas = per_sample(sigmas, x, model)
    n = n_steps(sigmas, denoise)
    orders = step_orders(n, order, final="few" if lower_order_final else "none", to_zero=denoise)
    if n == 0:
        return x
    weights = _deis_weights(_distinct_rows(sigmas), orders)
    return _walk(model, x, sigmas, denoise, orders, None, weights, keep="eps")


def ipndm(
    model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, *, order: int = 4, denoise: bool = True
) -> Tensor:
    """Improved PNDM (Zhang & Chen 2023) as zju-pi/diff-sampler runs it: Adams-Bashforth in sigma on eps, with the
    constant-step coefficients whatever the spacing, order min(order, i + 1) at step i; the step to sigma = 0 is
    Euler (x = D), diff-sampler's denoise_to_zero.

    Args:
        order: the largest Adams-Bashforth order, 1..4.
        denoise: take the schedule's final interval to sigma = 0 (x = D(x, sigma_N)); NFE = N, else N - 1.
    """
    if order not in (1, 2, 3, 4):
        raise ValueError(f"ipndm order must be 1, 2, 3 or 4, got {order!r}")
    sigmas = per_sample(sigmas, x, model)
    n = n_steps(sigmas, denoise)
    orders = step_orders(n, order, final="none", to_zero=denoise)
    if n == 0:
        return x
    rows = _distinct_rows(sigmas)
    step = (rows[:, 1 : n + 1] - rows[:, :n])[..., None]
    by_order = {
        p: step * torch.tensor(c, dtype=rows.dtype, device=rows.device) for p, c in enumerate(ADAMS_BASHFORTH, 1)
    }
    return _walk(model, x, sigmas, denoise, orders, None, _select(orders, by_order, 4), keep="eps")
