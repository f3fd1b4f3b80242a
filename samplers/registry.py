"""The sampler registry: fixed public names mapped to small frozen specs."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .adaptive import rk45
from .dlg import INTEGRATORS, KIM_YE, bind, final_nfe, handoff_hyper, presets_for
from .karras import ddim, kar1, kar2
from .multistep import deis, dpmpp_2m, dpmpp_3m, ipndm, unipc
from .score_sde import ald, em, pc, pf_euler, rd

__all__ = ["SamplerSpec", "SAMPLERS", "register_sampler", "get_sampler"]


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler: `fn(model, x, sigmas, noise=None, **hyper) -> x`, its NFE as a function of steps, and provenance.

    `nfe(steps, **hyper)` is the declared number of network evaluations per sample for a schedule of `steps` noise
    levels (None for adaptive samplers, whose NFE is whatever the tolerance costs). `steps` is the number of
    positive noise levels in the schedule; `schedule` names the default one (samplers.schedules).
    `presets` maps each value of the `preset` hyper-parameter (samplers.presets) to the hyper-parameter defaults it
    changes. Keyword arguments in RUNTIME (set by the harness, e.g. DLG's `wanted`) are not hyper-parameters.
    """

    name: str
    fn: Callable[..., Any]
    family: str
    stochastic: bool
    nfe: Callable[..., int] | None
    citation: str
    summary: str
    schedule: str = "native"
    min_steps: int = 2
    chains: bool = False
    presets: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)

    @property
    def adaptive(self) -> bool:
        return self.nfe is None

    def defaults(self) -> dict[str, Any]:
        """Hyper-parameters and their defaults, read from the function's keyword-only arguments."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in RUNTIME}

    def resolve(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults, then the preset's defaults, overridden by `hyper`; ValueError naming any key the sampler does
        not take, or a preset it does not have."""
        defaults = self.defaults()
        preset = hyper.get("preset")
        if preset is not None and preset not in self.presets:
            has = ", ".join(map(repr, self.presets)) or "none"
            raise ValueError(f"sampler {self.name!r} has no preset {preset!r}; its presets: {has}")
        unknown = sorted(set(hyper) - set(defaults))
        if unknown:
            raise ValueError(
                f"sampler {self.name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(defaults) or 'none'}"
            )
        for key, value in hyper.items():
            check_domain(self.name, key, value)
        return {**defaults, **self.presets.get(preset, {}), **hyper}

    def declared_nfe(self, steps: int, **hyper) -> int:
        assert self.nfe is not None, "adaptive samplers have no declared NFE"
        return self.nfe(steps, **self.resolve(hyper))


@dataclass(frozen=True)
class Domain:
    """The values a hyper-parameter may take: a kind ("int", "float", "bool", "choice") and, for numbers, a lower
    bound (`low`, excluded when `strict`); None is allowed where the default is None (the sampler's own choice)."""

    kind: str
    low: float | None = None
    strict: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(repr, self.choices))
        if self.kind == "bool":
            return "true or false"
        bound = "" if self.low is None else f" {'>' if self.strict else '>='} {self.low:g}"
        return f"{'an integer' if self.kind == 'int' else 'a number'}{bound}"


# the domain of every hyper-parameter name the samplers share (one meaning per name across samplers)
HYPER_DOMAINS: dict[str, Domain] = {
    "n_steps_each": Domain("int", 1),
    "n_corrector": Domain("int", 0),
    "n_skip": Domain("int", 0),
    "outputs_per_chain": Domain("int", 1),
    "burn_in_steps": Domain("int", 2),
    "burn_in_iters": Domain("int", 0),
    "settle_iters": Domain("int", 0),
    "n_levels": Domain("int", 2),
    "order": Domain("int", 1),
    "eta": Domain("float", 0),
    "s_churn": Domain("float", 0),
    "s_noise": Domain("float", 0),
    "s_tmin": Domain("float", 0),
    "s_tmax": Domain("float", 0),
    "snr": Domain("float", 0, strict=True),
    "eps": Domain("float", 0, strict=True),
    "step_lr": Domain("float", 0, strict=True),
    "twd_eps": Domain("float", 0, strict=True),
    "burn_in_eta": Domain("float", 0, strict=True),
    "renoise": Domain("float", 0),
    "rtol": Domain("float", 0, strict=True),
    "atol": Domain("float", 0, strict=True),
    "rho": Domain("float", 0, strict=True),
    "denoise": Domain("bool"),
    "corrector": Domain("bool"),
    "lower_order_final": Domain("bool"),
    "mode": Domain("choice", choices=("argmax", "gibbs")),
    "variant": Domain("choice", choices=("bh1", "bh2")),
    "third_order": Domain("choice", choices=("published", "exact")),
}


def check_domain(sampler: str, key: str, value: Any) -> None:
    """ValueError naming the sampler, the hyper-parameter and its domain when `value` is outside it."""
    domain = HYPER_DOMAINS.get(key)
    if domain is None or value is None:
        return
    if domain.kind == "bool":
        ok = isinstance(value, bool)
    elif domain.kind == "choice":
        ok = value in domain.choices
    else:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = number and not math.isnan(value) and (domain.kind == "float" or float(value).is_integer())
        if ok and domain.low is not None:
            ok = value > domain.low if domain.strict else value >= domain.low
    if not ok:
        raise ValueError(f"sampler {sampler!r}: {key} must be {domain.describe()}, got {value!r}")


RUNTIME = ("wanted",)
SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(spec: SamplerSpec) -> SamplerSpec:
    SAMPLERS[spec.name] = spec
    return spec


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler `name`, or the adapter spec of `diffusers:CLASSNAME` / `k-diffusion:FUNCTION` (built on
    demand by samplers.adapters); ValueError for an unknown name."""
    if name in SAMPLERS:
        return SAMPLERS[name]
    if ":" in name:
        from .adapters import adapter_spec

        return adapter_spec(name)
    raise ValueError(
        f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}, and diffusers:CLASSNAME, k-diffusion:FUNCTION"
    )


def _one_per_level(steps: int, denoise: bool = True, preset: str | None = None, **_) -> int:
    # preset score_sde: a predictor step at each of the N times, the last one's mean being the sample
    return steps if denoise or preset == "score_sde" else steps - 1


def _heun(steps: int, denoise: bool = True, **_) -> int:
    return 2 * steps - 1 if denoise else 2 * (steps - 1)


def _pc(steps: int, n_corrector: int = 1, denoise: bool = True, preset: str | None = None, **_) -> int:
    # default: correctors at every level, predictors between levels, then Tweedie; score_sde: N (corrector, predictor)
    return (steps if denoise or preset == "score_sde" else steps - 1) * (1 + n_corrector)


def _ald(steps: int, n_steps_each: int = 5, denoise: bool = True, **_) -> int:
    return steps * n_steps_each + (1 if denoise else 0)


DPM_SOLVER_PP = "Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
UNIPC = (
    "Zhao et al. 2023, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models (NeurIPS)"
)
DEIS = "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator (ICLR)"
SCORE_SDE = "Song et al. 2021, Score-Based Generative Modeling through SDEs (ICLR)"
UPSTREAM_SCORE_SDE = {"score_sde": {}}  # yang-song/score_sde_pytorch sampling.py (samplers.presets)
EDM = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models (NeurIPS)"

for _spec in [
    SamplerSpec(
        "ald",
        ald,
        "langevin",
        True,
        _ald,
        "Song & Ermon 2019, Generative Modeling by Estimating Gradients of the Data Distribution (NeurIPS)",
        "annealed Langevin dynamics, n_steps_each steps per level",
        schedule="geometric",  # NCSN's levels, whatever the model's process
        min_steps=1,
        presets={"ncsnv2": {}},  # ermongroup/ncsnv2 anneal_Langevin_dynamics
    ),
    SamplerSpec(
        "em",
        em,
        "sde",
        True,
        _one_per_level,
        SCORE_SDE,
        "Euler-Maruyama on the reverse SDE, native time",
        presets=UPSTREAM_SCORE_SDE,
    ),
    SamplerSpec(
        "rd",
        rd,
        "sde",
        True,
        _one_per_level,
        SCORE_SDE,
        "reverse-diffusion predictor, native coordinates",
        presets=UPSTREAM_SCORE_SDE,
    ),
    SamplerSpec(
        "pc",
        pc,
        "sde",
        True,
        _pc,
        SCORE_SDE,
        "reverse-diffusion predictor + Langevin corrector (snr)",
        presets=UPSTREAM_SCORE_SDE,
    ),
    SamplerSpec(
        "pf_euler",
        pf_euler,
        "ode",
        False,
        _one_per_level,
        SCORE_SDE,
        "probability-flow ODE, reverse-diffusion discretisation",
        presets=UPSTREAM_SCORE_SDE,
    ),
    SamplerSpec(
        "rk45",
        rk45,
        "ode",
        False,
        None,
        SCORE_SDE + "; Dormand & Prince 1980 (torchdiffeq dopri5)",
        "probability-flow ODE, adaptive Dormand-Prince 5(4); NFE set by rtol/atol",
        presets=UPSTREAM_SCORE_SDE,
    ),
    SamplerSpec(
        "ddim",
        ddim,
        "ode",
        False,
        _one_per_level,
        "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models (ICLR)",
        "DDIM with eta (default 0: Euler on the PF-ODE in sigma)",
    ),
    SamplerSpec(
        "kar1",
        kar1,
        "ode",
        False,
        _heun,
        EDM + ", Algorithm 1",
        "deterministic Heun, rho=7 schedule",
        schedule="karras",
    ),
    SamplerSpec(
        "kar2",
        kar2,
        "sde",
        True,
        _heun,
        EDM + ", Algorithm 2",
        "stochastic Heun with churn (S_churn...)",
        schedule="karras",
    ),
    # multistep solvers: one evaluation per noise level, the step to sigma = 0 is the Tweedie step (samplers.multistep)
    SamplerSpec(
        "dpmpp_2m",
        dpmpp_2m,
        "ode",
        False,
        _one_per_level,
        DPM_SOLVER_PP + ", Algorithm 2",
        "DPM-Solver++(2M): second-order multistep, data prediction in log-sigma",
        schedule="logsnr",
    ),
    SamplerSpec(
        "dpmpp_3m",
        dpmpp_3m,
        "ode",
        False,
        _one_per_level,
        DPM_SOLVER_PP,
        'DPM-Solver++(3M) multistep, data prediction in log-sigma (third_order="exact": Taylor-consistent D2 weight)',
        schedule="logsnr",
    ),
    SamplerSpec(
        "unipc",
        unipc,
        "ode",
        False,
        _one_per_level,
        UNIPC,
        "UniPC: UniP-p predictor + UniC-p corrector at no extra NFE, B(h) = e^h - 1 (bh2), order 3",
        schedule="logsnr",
    ),
    SamplerSpec(
        "deis",
        deis,
        "ode",
        False,
        _one_per_level,
        DEIS + ", tAB-DEIS",
        "DEIS tAB: eps extrapolated in log-sigma, integrated exactly, order 3",
        schedule="time_quadratic",
    ),
    SamplerSpec(
        "ipndm",
        ipndm,
        "ode",
        False,
        _one_per_level,
        DEIS + ", iPNDM; as zju-pi/diff-sampler",
        "improved PNDM: fixed-step Adams-Bashforth on eps in sigma, order 4",
        schedule="karras",
    ),
]:
    register_sampler(_spec)


def _dlg_spec(integrator: SamplerSpec) -> SamplerSpec:
    """`dlg+X`: DLG's Gibbs chain, then X from each sample's own noise level; NFE = n_skip + X's NFE (+ 1 for preset
    dmcmc's final denoising step)."""
    nfe = None
    if integrator.nfe is not None:

        def nfe(steps: int, **hyper) -> int:
            preset = hyper.get("preset")
            return (
                hyper["n_skip"]
                + integrator.nfe(steps, **handoff_hyper(preset, integrator.name, hyper))
                + final_nfe(preset)
            )

    return SamplerSpec(
        f"dlg+{integrator.name}",
        bind(integrator),
        "mcmc",
        True,
        nfe,
        f"{KIM_YE}; integrator: {integrator.citation}",
        f"Denoising Langevin Gibbs (n_skip Gibbs steps per sample), then {integrator.name} from its own sigma",
        schedule=integrator.schedule,
        min_steps=integrator.min_steps,
        chains=True,
        presets=presets_for(integrator.name),
    )


for _name in INTEGRATORS:
    register_sampler(_dlg_spec(SAMPLERS[_name]))
