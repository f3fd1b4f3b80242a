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
   state, which can hand the same state off twice: we do not, preset "dmcmc" does); the chain goes on from its last
   state;
3. hand-off: the integrator starts each output at its own sigma, on its usual schedule shape and step count
   (samplers.schedules.restart: the given schedule's spacing in the coordinate of the integrator's default schedule,
   e.g. sigma^(1/7) for kar1), down to the schedule's last level, and ends with the Tweedie step.

The noise-level classifier is found by models.noise_classifier.classifier_for: the exact posterior over `n_levels`
levels for analytic models, else `classifier=PATH`, the model's `noise_classifier`, or the one shipped for its
dataset (models/checkpoints/<dataset>-noise-classifier). Levels outside the model's sigma range are clamped to it.

So NFE per output = n_skip + the integrator's NFE; classifier evaluations ("classifier_evals": n_skip per output)
and the burn-in are booked apart through models.base.counting_as / tally. `wanted` (set by samplers.api.run_sampler,
not a hyper-parameter) marks the rows whose outputs are used: a chain stops after its last wanted output, only wanted
outputs are integrated (the others come back as NaN), and the Gibbs rounds of unwanted outputs before a wanted one
(a request that starts inside a chain) are that chain's warm-up, booked with the burn-in. So the NFE per wanted
output is exactly n_skip + the integrator's, whatever part of a chain is asked for.

Randomness: chain j draws from the noise stream of its first row (sample jK), and each output's integrator from the
output's own stream, after a number of draws fixed by the hyper-parameters (every round draws its noise, run or not).
A sample therefore depends only on (seed, its index, K), never on the rest of the batch, as long as batches hold
whole chains (run_sampler sees to it).

Defaults: the reference's burn-in and step sizes; n_skip = 2 (the reference used 10 with a 37-NFE KAR2 hand-off):
on gmm-64d it is the best of 2..5 at 10 NFE and keeps the mode weights best; larger n_skip makes consecutive outputs
of a chain less alike (results/dlg).

Step sizes are in units of the data's variance: eta, burn_in_eta and renoise**2 default to the reference's values
for data in [0, 1] (0.8, 0.5 and 0.5**2) times (data range width)**2, e.g. 4x on data in [-1, 1].

preset="dmcmc" runs DLG as 1202kbs/DMCMC's Demo notebook does (`PRESETS`, `_RECIPES`): n_skip 10 and 250 outputs per
chain (CIFAR-10: 50k samples from 200 chains); burn-in KAR2 over 19 levels (its N = 20 points, 0 included) with
S_churn 80, S_tmin 0.05, S_tmax 1, S_noise 1.007 and gamma = min(S_churn / 20, sqrt 2 - 1); each round's lowest-sigma
search starts from the round's first state; the hand-off integrators as it runs them (kar2 with the same churn and
gamma = min(S_churn / (L + 1), sqrt 2 - 1) for L levels; em, rd, pf_euler and rk45 as score_sde runs them on a VESDE
from the model's sigma_min to each output's own sigma, on a VP model through the VE reparametrisation; rk45 without
its own denoise); then its extra denoising step x + twd_eps^2 score(x, twd_eps) after every integrator (1 NFE,
counted; twd_eps defaults to the model's sigma_min, the notebook's 0.01 for CIFAR-10). Step sizes stay scaled to
the data range as above.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.base import Denoiser, counting_as, tally
from models.noise_classifier import DEFAULT_LEVELS, NoiseClassifier, classifier_for
from models.processes import VEProcess

from .common import Noise, noise_or_default, per_sample
from .karras import kar2
from .presets import check_preset
from .schedules import WARPS, karras, restart

__all__ = [
    "dlg",
    "bind",
    "draw_level",
    "default_steps",
    "presets_for",
    "handoff_hyper",
    "final_nfe",
    "INTEGRATORS",
    "KIM_YE",
    "MODES",
    "PRESETS",
]

KIM_YE = "Kim & Ye 2023, Denoising MCMC for Accelerating Diffusion-Based Generative Models (ICML)"
INTEGRATORS = ("kar1", "pf_euler", "rk45", "kar2", "rd", "em")
MODES = ("argmax", "gibbs")
# reference step sizes for data in [0, 1] (Kim & Ye 2023, CIFAR-10), scaled by the squared data range width
ETA, BURN_IN_ETA, RENOISE = 0.8, 0.5, 0.5

# DMCMC's Demo notebook: hyper-parameter defaults of preset "dmcmc", and those of the integrators it hands off to
DMCMC_CHURN = {"s_churn": 80.0, "s_tmin": 0.05, "s_tmax": 1.0, "s_noise": 1.007}  # its karras_alg2
PRESETS: dict[str, dict[str, Any]] = {"dmcmc": {"n_skip": 10, "outputs_per_chain": 250, "burn_in_steps": 19}}
_INTEGRATOR_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "dmcmc": {"kar2": dict(DMCMC_CHURN), "rk45": {"denoise": False}}  # get_ode_sampler(denoise=False)
}


@dataclass(frozen=True)
class _Recipe:
    """What a preset changes in DLG's stages."""

    burn_in_churn: dict[str, float]  # the burn-in KAR2's churn hyper-parameters (kar2's defaults if empty)
    churn_per_level: Callable[[float, int], float]  # (S_churn, L levels) -> kar2's s_churn, which it divides by L
    keep_round_start: bool  # the round's first state competes for the lowest sigma
    integrator_preset: dict[str, str]  # integrator name -> the preset it runs with
    as_ve: bool  # integrators see the model through the VE reparametrisation
    final_denoise: bool  # x + twd_eps^2 score(x, twd_eps) after the integrator


_RECIPES = {
    None: _Recipe({}, lambda s_churn, levels: s_churn, False, {}, False, False),
    "dmcmc": _Recipe(
        DMCMC_CHURN,
        # karras_alg2 divides S_churn by N, the number of its schedule points (0 included): L + 1 for L levels
        lambda s_churn, levels: s_churn * levels / (levels + 1),
        True,
        {name: "score_sde" for name in ("pf_euler", "rk45", "rd", "em")},
        True,
        True,
    ),
}


def _churn(recipe: _Recipe, hyper: dict[str, Any], levels: int) -> dict[str, Any]:
    """kar2's hyper-parameters for a schedule of `levels` levels, its s_churn as the preset divides it."""
    if "s_churn" not in hyper:
        return hyper
    return {**hyper, "s_churn": recipe.churn_per_level(hyper["s_churn"], levels)}


def presets_for(integrator: str) -> dict[str, dict[str, Any]]:
    """dlg+<integrator>'s presets: each one's hyper-parameter defaults (DLG's and the integrator's)."""
    return {name: {**table, **_INTEGRATOR_DEFAULTS[name].get(integrator, {})} for name, table in PRESETS.items()}


def handoff_hyper(preset: str | None, integrator: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """The integrator's hyper-parameters under DLG's `preset`, its own preset set accordingly."""
    return {**hyper, "preset": _RECIPES[preset].integrator_preset.get(integrator)}


def final_nfe(preset: str | None) -> int:
    """Network evaluations after the integrator (DMCMC's extra denoising step)."""
    return 1 if _RECIPES[preset].final_denoise else 0


def default_steps(model) -> dict[str, float]:
    """eta, burn_in_eta and renoise for `model`: the reference values scaled to its data range."""
    width = model.data_range[1] - model.data_range[0]
    return {"eta": ETA * width**2, "burn_in_eta": BURN_IN_ETA * width**2, "renoise": RENOISE * width}


def draw_level(log_post: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw of one level per row from log-probabilities [B, L], given uniforms u [B] in (0, 1)."""
    cdf = log_post.to(torch.float64).exp().cumsum(1)
    j = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1])[:, None]).squeeze(1)
    return j.clamp(max=cdf.shape[1] - 1)


class _AsVE(Denoiser):
    """A model seen as a VE model: the same denoiser over sigma with a VE process (DLG is VE by construction)."""

    def __init__(self, inner: Denoiser):
        super().__init__(
            shape=inner.shape,
            sde=VEProcess(inner.sigma_min, inner.sigma_max),
            data_range=inner.data_range,
            name=inner.name,
            dataset=inner.dataset,
        )
        self.inner = inner

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.inner(x, sigma)


def _on_rows(rows: Tensor, fn: Callable[[Tensor | slice], Tensor], x: Tensor) -> Tensor:
    """x with its rows in `rows` (a bool mask) replaced by fn(index of those rows); the others are not evaluated."""
    if bool(rows.all()):
        return fn(slice(None))
    out = x.clone()
    idx = rows.nonzero().squeeze(1)
    if idx.numel():
        out[idx] = fn(idx)
    return out


def _rows_noise(noise: Noise, idx: Tensor, batch: int) -> Noise:
    """The noise source of the rows idx of a batch of `batch` rows (the source still draws for the whole batch)."""

    def draw(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        full, full_next = sigma.new_zeros(batch), sigma_next.new_zeros(batch)
        full[idx], full_next[idx] = sigma, sigma_next
        return noise(full, full_next)[idx]

    return draw


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
    preset: str | None = None,
    twd_eps: float | None = None,
    wanted: Tensor | None = None,
) -> Tensor:
    """Denoising Langevin Gibbs with hand-off to `integrator` (a SamplerSpec) (Kim & Ye 2023, Section 4)."""
    check_preset(f"dlg+{integrator.name}", preset, PRESETS)
    _check(n_skip, outputs_per_chain, burn_in_steps, burn_in_iters, settle_iters, mode)
    recipe = _RECIPES[preset]
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
    if twd_eps is not None and not recipe.final_denoise:
        raise ValueError("dlg: twd_eps is preset 'dmcmc''s final denoising level; pass preset='dmcmc' with it")
    twd_eps = model.sigma_min if twd_eps is None else float(twd_eps)
    if twd_eps <= 0:
        raise ValueError(f"dlg needs twd_eps > 0, got {twd_eps}")
    clf = classifier_for(model, classifier, n_levels)
    batch, k_out = x.shape[0], outputs_per_chain
    heads = torch.arange(0, batch, k_out, device=x.device)
    n_chains = len(heads)
    # outputs wanted per chain and round [C, K], and the rounds each chain runs (through its last wanted output)
    want = torch.ones(batch, dtype=torch.bool, device=x.device) if wanted is None else _wanted(wanted, batch, x)
    by_round = torch.zeros(n_chains * k_out, dtype=torch.bool, device=x.device)
    by_round[:batch] = want
    by_round = by_round.view(n_chains, k_out)
    rounds = torch.where(by_round.any(1), k_out - by_round.flip(1).int().argmax(1), 0)
    everyone = torch.ones(n_chains, dtype=torch.bool, device=x.device)

    def chain_noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """Draws for the chains [C, *shape]: each from its first row's stream."""
        return noise(sigma.repeat_interleave(k_out)[:batch], sigma_next.repeat_interleave(k_out)[:batch])[heads]

    def level(xc: Tensor, sc: Tensor, paid: Tensor, warm: Tensor, key: str = "classifier_evals") -> Tensor:
        """sigma | x on the running chains: the classifier's argmax level, or a draw by inverse CDF from one standard
        normal per chain. Evaluations of `paid` chains count as `key`, of `warm` ones as burn-in."""
        if mode == "gibbs":
            u = 0.5 * (1 + torch.erf(chain_noise(sc, sc).flatten(1)[:, 0].to(torch.float64) / math.sqrt(2)))
        for rows, booked in ((paid, key), (warm, "burn_in_classifier_evals")):
            if bool(rows.any()):
                tally(model, booked, int(rows.sum()))

        def pick(idx: Tensor | slice) -> Tensor:
            log_post = clf(xc[idx]).to(torch.float64)
            j = log_post.argmax(1) if mode == "argmax" else draw_level(log_post, u[idx])
            return clf.sigmas.to(x.device)[j].clamp(model.sigma_min, model.sigma_max)

        return _on_rows(paid | warm, pick, sc)

    def langevin(xc: Tensor, sc: Tensor, step: float, paid: Tensor, warm: Tensor) -> Tensor:
        """x | sigma on the running chains: one unadjusted Langevin step with constant step size; evaluations of
        `paid` chains count as NFE, of `warm` ones as burn-in."""
        z, before = chain_noise(sc, sc), xc

        def move(idx: Tensor | slice) -> Tensor:
            return before[idx] + (step / 2) * model.score(before[idx], sc[idx]) + math.sqrt(step) * z[idx]

        if bool(paid.any()):
            xc = _on_rows(paid, move, xc)
        if bool(warm.any()):
            with counting_as(model, "burn_in_nfe"):
                xc = _on_rows(warm, move, xc)
        return xc

    # 1. burn-in from sigma_max: KAR2 to the data, re-noise, then Langevin-Gibbs iterations (booked apart)
    xc, nobody = x[heads], ~everyone
    with counting_as(model, "burn_in_nfe"):
        if burn_in_steps > 0:
            churn = _churn(recipe, recipe.burn_in_churn, burn_in_steps)
            xc = kar2(model, xc, karras(model.sigma_min, float(template[0]), burn_in_steps), chain_noise, **churn)
            top = template[:1].expand(n_chains)
            xc = xc + renoise * chain_noise(top, top)
        sc = template[:1].expand(n_chains).clone()
        sc = level(xc, sc, nobody, everyone, "burn_in_classifier_evals")
        for step in [burn_in_eta] * burn_in_iters + [eta] * settle_iters:
            xc = langevin(xc, sc, step, nobody, everyone)
            sc = level(xc, sc, nobody, everyone, "burn_in_classifier_evals")

    # 2. per output: n_skip Gibbs iterations, keeping the visited state of smallest sigma
    handoff_x, handoff_sigma = [], []
    for k in range(k_out):
        running = rounds > k
        paid, warm = running & by_round[:, k], running & ~by_round[:, k]
        x_min, s_min = xc, (sc if recipe.keep_round_start else torch.full_like(sc, math.inf))
        if not bool(running.any()):  # no chain needs this round: only its draws are passed over
            _skip(noise, n_skip * (2 if mode == "gibbs" else 1), template.new_zeros(batch))
            handoff_x.append(x_min)
            handoff_sigma.append(s_min)
            continue
        for _ in range(n_skip):
            xc = langevin(xc, sc, eta, paid, warm)
            sc = level(xc, sc, paid, warm)
            lower = sc < s_min
            x_min = torch.where(lower.view(-1, *([1] * (xc.ndim - 1))), xc, x_min)
            s_min = torch.where(lower, sc, s_min)
        handoff_x.append(x_min)
        handoff_sigma.append(s_min)
    x = torch.stack(handoff_x, 1).flatten(0, 1)[:batch]
    start = torch.stack(handoff_sigma, 1).flatten()[:batch]

    # 3. hand-off: the integrator from each wanted output's own sigma, with its usual schedule shape and step count
    every = wanted is None or bool(want.all())
    idx = slice(None) if every else want.nonzero().squeeze(1)
    schedule = restart(template, start[idx], WARPS[integrator.schedule](model))
    hyper = handoff_hyper(preset, integrator.name, integrator_hyper or {})
    if integrator.name == "kar2":
        hyper = _churn(recipe, hyper, len(template) - 1)
    if hyper["preset"] is None:
        del hyper["preset"]
    seen = _AsVE(model) if recipe.as_ve and model.process != "ve" else model
    out = integrator.fn(seen, x[idx], schedule, noise if every else _rows_noise(noise, idx, batch), **hyper)
    # 4. DMCMC's extra denoising step
    if recipe.final_denoise:
        level_twd = torch.full((out.shape[0],), twd_eps, dtype=torch.float64, device=x.device)
        out = out + twd_eps**2 * model.score(out, level_twd)
    if every:
        return out
    full = torch.full_like(x, math.nan)
    full[idx] = out.to(full.dtype)
    return full


def _skip(noise: Noise, calls: int, sigma: Tensor) -> None:
    """Pass over `calls` draws of a noise source (SeededNoise.skip, else draw at `sigma` and discard)."""
    if hasattr(noise, "skip"):
        noise.skip(calls)
    else:
        for _ in range(calls):
            noise(sigma, sigma)


def _wanted(wanted: Tensor, batch: int, x: Tensor) -> Tensor:
    wanted = torch.as_tensor(wanted, device=x.device).to(torch.bool)
    if wanted.shape != (batch,):
        raise ValueError(f"dlg's wanted must be a mask of the batch's {batch} rows, got shape {list(wanted.shape)}")
    if not bool(wanted.any()):
        raise ValueError("dlg's wanted marks no row: nothing to sample")
    return wanted


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
    """`dlg+<integrator>` as a registry function: DLG's hyper-parameters and the integrator's, in one signature.

    The integrator's own `preset` is not among them: DLG's preset sets it (dmcmc: score_sde for em, rd, pf_euler and
    rk45). A preset's hyper-parameter defaults (presets_for) apply to those not given.
    """
    own = {p.name for p in _DLG_PARAMS}
    theirs = [p for p in inspect.signature(integrator.fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    theirs = [p for p in theirs if p.name != "preset"]
    assert not own & {p.name for p in theirs}, f"hyper-parameter names of dlg and {integrator.name} collide"
    tables = presets_for(integrator.name)

    def fn(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, **hyper) -> Tensor:
        check_preset(f"dlg+{integrator.name}", hyper.get("preset"), tables)
        hyper = {**tables.get(hyper.get("preset"), {}), **hyper}
        mine = {k: v for k, v in hyper.items() if k in own}
        rest = {k: v for k, v in hyper.items() if k not in own}
        return dlg(model, x, sigmas, noise, integrator=integrator, integrator_hyper=rest, **mine)

    positional = list(inspect.signature(dlg).parameters.values())[:4]
    fn.__signature__ = inspect.Signature([*positional, *_DLG_PARAMS, *theirs])
    fn.__name__ = fn.__qualname__ = f"dlg_{integrator.name}"
    fn.__doc__ = f"DLG (Kim & Ye 2023) handing off to {integrator.name}: {integrator.summary}."
    return fn
