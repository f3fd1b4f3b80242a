"""DLG: Denoising Langevin Gibbs (Kim & Ye 2023), MCMC over data x and noise level sigma, then a reverse-S/ODE
integrator from each sample's own noise level.

A batch of B outputs is laid out as persistent chains: rows [jK, (j+1)K) are the K = `outputs_per_chain`
consecutive outputs of chain j (the last chain may be cut short). Per chain:

1. burn-in from sigma_max (booked as extras "burn_in_nfe" / "burn_in_classifier_evals", not as NFE): KAR2 with
   `burn_in_steps` levels down to the data, re-noise with std `renoise`, classify, then `burn_in_iters` Gibbs
   iterations at step `burn_in_eta` and `settle_iters` at `eta` (reference: 20 levels, 0.5, 10 + 10);
2. per output, `n_skip` Gibbs iterations, each
       x | sigma:  x <- x + (eta / 2) score(x, sigma) + sqrt(eta) z      (one Langevin step, one NFE)
       sigma | x:  the classifier's most likely level (mode="argmax", as the reference) or a draw (mode="gibbs"),
   keeping the round's visited (x, sigma) with the smallest sigma (the reference also weighs the round's starting
   state, which can hand the same state off twice: we do not); the chain goes on from its last state;
3. hand-off: the integrator starts each output at its own sigma, on its usual schedule shape and step count
   (samplers.schedules.restart: the given schedule's spacing in the coordinate of the integrator's default schedule,
   e.g. sigma^(1/7) for kar1), down to the schedule's last level, and ends with the Tweedie step.

The noise-level classifier is found by models.noise_classifier.classifier_for: the exact posterior over `n_levels`
levels for analytic models, else `classifier=PATH`, the model's `noise_classifier`, or the one shipped for its
dataset (models/checkpoints/<dataset>-noise-classifier). Levels outside the model's sigma range are clamped to it.

So NFE per output = n_skip + the integrator's NFE; classifier evaluations ("classifier_evals": n_skip per output)
and the burn-in are booked apart through models.base.counting_as / tally.

Randomness: chain j draws from the noise stream of its first row (sample jK), and each output's integrator from the
output's own stream, after a number of draws fixed by the hyper-parameters. A sample therefore depends only on
(seed, its index, K), never on the rest of the batch, as long as batches hold whole chains (run_sampler sees to it).

Defaults: the reference's burn-in and step sizes; n_skip = 2 (the reference used 10 with a 37-NFE KAR2 hand-off):
on gmm-64d it is the best of 2..5 at 10 NFE and keeps the mode weights best; larger n_skip makes consecutive outputs
of a chain less alike (results/dlg).

Step sizes are in units of the data's variance: eta, burn_in_eta and renoise**2 default to the reference's values
for data in [0, 1] (0.8, 0.5 and 0.5**2) times (data range width)**2, e.g. 4x on data in [-1, 1].
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

from models.base import counting_as, tally
from models.noise_classifier import DEFAULT_LEVELS, NoiseClassifier, classifier_for

from .common import Noise, noise_or_default, per_sample
from .karras import kar2
from .schedules import WARPS, karras, restart

__all__ = ["dlg", "bind", "draw_level", "default_steps", "INTEGRATORS", "KIM_YE", "MODES"]

KIM_YE = "Kim & Ye 2023, Denoising MCMC for Accelerating Diffusion-Based Generative Models (ICML)"
INTEGRATORS = ("kar1", "pf_euler", "rk45", "kar2", "rd", "em")
MODES = ("argmax", "gibbs")
# reference step sizes for data in [0, 1] (Kim & Ye 2023, CIFAR-10), scaled by the squared data range width
ETA, BURN_IN_ETA, RENOISE = 0.8, 0.5, 0.5


def default_steps(model) -> dict[str, float]:
    """eta, burn_in_eta and renoise for `model`: the reference values scaled to its data range."""
    width = model.data_range[1] - model.data_range[0]
    return {"eta": ETA * width**2, "burn_in_eta": BURN_IN_ETA * width**2, "renoise": RENOISE * width}


def draw_level(log_post: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw of one level per row from log-probabilities [B, L], given uniforms u [B] in (0, 1)."""
    cdf = log_post.to(torch.float64).exp().cumsum(1)
    j = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1])[:, None]).squeeze(1)
    return j.clamp(max=cdf.shape[1] - 1)


def dlg(
    model,
    x: Tensor,
    sigmas: Tensor,
    noise: Noise | None = None,
    *,
    integrator,
    integrator_hyper: dict | None = None,
    n_skip: int = 2,
    eta: float | None = None,
    outputs_per_chain: int = 8,
    burn_in_steps: int = 20,
    renoise: float | None = None,
    burn_in_iters: int = 10,
    burn_in_eta: float | None = None,
    settle_iters: int = 10,
    classifier: str | NoiseClassifier | None = None,
    mode: str = "argmax",
    n_levels: int = DEFAULT_LEVELS,
) -> Tensor:
    """Denoising Langevin Gibbs with hand-off to `integrator` (a SamplerSpec) (Kim & Ye 2023, Section 4)."""
    _check(n_skip, outputs_per_chain, burn_in_steps, burn_in_iters, settle_iters, mode)
    sigmas, noise = per_sample(sigmas, x, model), noise_or_default(noise, x)
    template = sigmas[0]
    if not bool((sigmas == template).all()):
        raise ValueError("dlg takes one schedule shared by the batch: each output restarts it at its own sigma")
    scaled = default_steps(model)
    eta = scaled["eta"] if eta is None else float(eta)
    burn_in_eta = scaled["burn_in_eta"] if burn_in_eta is None else float(burn_in_eta)
    renoise = scaled["renoise"] if renoise is None else float(renoise)
    if eta <= 0 or burn_in_eta <= 0 or renoise < 0:
        raise ValueError(f"dlg needs eta > 0, burn_in_eta > 0, renoise >= 0; got {eta}, {burn_in_eta}, {renoise}")
    clf = classifier_for(model, classifier, n_levels)
    batch, k_out = x.shape[0], outputs_per_chain
    heads = torch.arange(0, batch, k_out, device=x.device)

    def chain_noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """Draws for the chains [C, *shape]: each from its first row's stream."""
        return noise(sigma.repeat_interleave(k_out)[:batch], sigma_next.repeat_interleave(k_out)[:batch])[heads]

    def level(xc: Tensor, sc: Tensor, key: str) -> Tensor:
        """sigma | x: the classifier's argmax level, or a draw by inverse CDF from one standard normal per chain."""
        log_post = clf(xc).to(torch.float64)
        tally(model, key, xc.shape[0])
        if mode == "argmax":
            j = log_post.argmax(1)
        else:
            u = 0.5 * (1 + torch.erf(chain_noise(sc, sc).flatten(1)[:, 0].to(torch.float64) / math.sqrt(2)))
            j = draw_level(log_post, u)
        return clf.sigmas.to(x.device)[j].clamp(model.sigma_min, model.sigma_max)

    def langevin(xc: Tensor, sc: Tensor, step: float) -> Tensor:
        """x | sigma: one unadjusted Langevin step with constant step size."""
        return xc + (step / 2) * model.score(xc, sc) + math.sqrt(step) * chain_noise(sc, sc)

    # 1. burn-in from sigma_max: KAR2 to the data, re-noise, then Langevin-Gibbs iterations (booked apart)
    xc = x[heads]
    with counting_as(model, "burn_in_nfe"):
        if burn_in_steps > 0:
            xc = kar2(model, xc, karras(model.sigma_min, float(template[0]), burn_in_steps), chain_noise)
            top = template[:1].expand(len(heads))
            xc = xc + renoise * chain_noise(top, top)
        sc = level(xc, template[:1].expand(len(heads)), "burn_in_classifier_evals")
        for step in [burn_in_eta] * burn_in_iters + [eta] * settle_iters:
            xc = langevin(xc, sc, step)
            sc = level(xc, sc, "burn_in_classifier_evals")

    # 2. per output: n_skip Gibbs iterations, keeping the visited state of smallest sigma
    handoff_x, handoff_sigma = [], []
    for _ in range(k_out):
        x_min, s_min = xc, torch.full_like(sc, math.inf)
        for _ in range(n_skip):
            xc = langevin(xc, sc, eta)
            sc = level(xc, sc, "classifier_evals")
            lower = sc < s_min
            x_min = torch.where(lower.view(-1, *([1] * (xc.ndim - 1))), xc, x_min)
            s_min = torch.where(lower, sc, s_min)
        handoff_x.append(x_min)
        handoff_sigma.append(s_min)
    x = torch.stack(handoff_x, 1).flatten(0, 1)[:batch]
    start = torch.stack(handoff_sigma, 1).flatten()[:batch]

    # 3. hand-off: the integrator from each output's own sigma, with its usual schedule shape and step count
    schedule = restart(template, start, WARPS[integrator.schedule](model))
    return integrator.fn(model, x, schedule, noise, **(integrator_hyper or {}))


def _check(n_skip: int, outputs_per_chain: int, burn_in_steps: int, burn_in_iters: int, settle_iters: int, mode: str):
    if n_skip < 1 or outputs_per_chain < 1:
        raise ValueError(f"dlg needs n_skip >= 1 and outputs_per_chain >= 1, got {n_skip}, {outputs_per_chain}")
    if min(burn_in_steps, burn_in_iters, settle_iters) < 0:
        raise ValueError("dlg's burn_in_steps, burn_in_iters and settle_iters must be >= 0")
    if mode not in MODES:
        raise ValueError(f"unknown dlg mode {mode!r}; expected one of {', '.join(MODES)}")


_DLG_PARAMS = [
    p
    for p in inspect.signature(dlg).parameters.values()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("integrator", "integrator_hyper")
]


def bind(integrator) -> Callable[..., Tensor]:
    """`dlg+<integrator>` as a registry function: DLG's hyper-parameters and the integrator's, in one signature."""
    own = {p.name for p in _DLG_PARAMS}
    theirs = [p for p in inspect.signature(integrator.fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert not own & {p.name for p in theirs}, f"hyper-parameter names of dlg and {integrator.name} collide"

    def fn(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, **hyper) -> Tensor:
        mine = {k: v for k, v in hyper.items() if k in own}
        rest = {k: v for k, v in hyper.items() if k not in own}
        return dlg(model, x, sigmas, noise, integrator=integrator, integrator_hyper=rest, **mine)

    positional = list(inspect.signature(dlg).parameters.values())[:4]
    fn.__signature__ = inspect.Signature([*positional, *_DLG_PARAMS, *theirs])
    fn.__name__ = fn.__qualname__ = f"dlg_{integrator.name}"
    fn.__doc__ = f"DLG (Kim & Ye 2023) handing off to {integrator.name}: {integrator.summary}."
    return fn
