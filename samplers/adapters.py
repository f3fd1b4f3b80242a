"""Samplers of other libraries under scorebench's sampler contract: `diffusers:CLASSNAME` and `k-diffusion:FUNCTION`.

`samplers.get_sampler(name)` builds their SamplerSpec on demand (and keeps it); they are not listed in SAMPLERS. Like
every sampler they run through `sample()`, suites and reports, with measured NFE.

diffusers:CLASSNAME: any discrete-time diffusers scheduler defined by a beta schedule (DDIMScheduler,
DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler, ...), run as the
loop a diffusers pipeline runs,

    x = z * init_noise_sigma;  for t in timesteps:  x = step(net(scale_model_input(x, t), t), t, x).prev_sample

on a VP model: a DDPMProcess (its betas) or a VPProcess (read at T = 1000 timesteps, t_k = (k + 1) / T). The scheduler
gets the model's betas as `trained_betas`, and `net` is the model's denoiser presented as the prediction the scheduler's
`prediction_type` asks for. The net's input is the VP state at timestep t, whose VE noise level sigma(t) is the model's
log sigma at the integer timesteps interpolated linearly in t (the inverse of diffusers' own sigma -> t map, so the
fractional timesteps of Karras-type schedulers are met exactly):

    x_ve = x_in sqrt(1 + sigma^2),  D = model(x_ve, sigma),  eps = (x_ve - D) / sigma,
    "epsilon": eps,  "sample": D,  "v_prediction": alpha eps - alpha sigma D  with alpha = 1 / sqrt(1 + sigma^2).

A VE model, a flow-matching or continuous-sigma scheduler (no beta schedule), an inversion scheduler (timesteps
increasing) or one whose step() needs more inputs (RePaint) is a ValueError. Hyper-parameters: the scheduler's
constructor arguments except those that define the noise process (they come from the model), and its step()'s keyword
arguments (e.g. DDIM's eta). The schedule handed to the sampler sets only the step count N (set_timesteps(N)) and the
scale of the initial noise z = x / sigma_0: the timesteps are the scheduler's own (timestep_spacing, use_karras_sigmas,
... are hyper-parameters). Declared NFE: len(timesteps) after set_timesteps(N), one network call per timestep (N for
most, 2N - 1 for Heun and KDPM2, more for PNDM's Runge-Kutta warm-up). Per-sample seeds: step()'s variance_noise
gets the sampler's per-sample noise source where step() takes it; otherwise step()'s generator gets one
torch.Generator per sample, seeded from that sample's noise stream. The result is the scheduler's final state (at
sigma = 0 for most; schedulers that stop at the smallest trained level return the VP state there).

k-diffusion:FUNCTION: any k_diffusion.sampling.sample_* function that takes a sigma schedule, called as
FUNCTION(model, x, sigmas, disable=True, **hyper): k-diffusion's own convention is scorebench's (VE terms, a decreasing
schedule ending at 0, D(x, sigma)). Functions that take noise_sampler get the per-sample noise source. Declared NFE:
counted on a probe run (a one-sample Gaussian denoiser on a Karras schedule of N levels), as each function has its own.
k-diffusion is an optional extra (`pip install k-diffusion`).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .common import Noise, bc, noise_or_default, per_sample
from .registry import SamplerSpec
from .schedules import karras

__all__ = ["ADAPTERS", "adapter_spec", "DdpmTable"]

# constructor arguments that define the noise process: set from the model, never from hyper-parameters
PROCESS_KEYS = frozenset(
    {
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "rescale_betas_zero_snr",
        "use_flow_sigmas",
        "flow_shift",
        "use_dynamic_shifting",
        "time_shift_type",
        "shift_terminal",
        "solver_p",
    }
)
STEP_INPUTS = frozenset({"self", "model_output", "timestep", "sample", "generator", "variance_noise", "return_dict"})
PREDICTIONS = ("epsilon", "sample", "v_prediction")
VP_STEPS = 1000  # timesteps a continuous VP process is read at
MAX_MIN_STEPS = 16  # a scheduler that cannot run this few steps is refused
UNRUNNABLE = 2**31  # the NFE of a step count a scheduler refuses: over any budget
K_DIFFUSION_OWN = frozenset({"model", "x", "sigmas", "extra_args", "callback", "disable", "noise_sampler"})


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    return f"closest: {', '.join(close)}" if close else f"known: {', '.join(names)}"


def _keyword_signature(defaults: dict[str, Any]) -> inspect.Signature:
    """`fn(model, x, sigmas, noise=None, *, <defaults>)`: what SamplerSpec.defaults() and resolve() read."""
    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    head = [inspect.Parameter(n, plain) for n in ("model", "x", "sigmas")]
    head.append(inspect.Parameter("noise", plain, default=None))
    tail = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=v) for n, v in defaults.items()]
    return inspect.Signature(head + tail)


# --- diffusers --------------------------------------------------------------------------------------------------------
class DdpmTable:
    """A VP model's noise process on the discrete timesteps a diffusers scheduler counts: betas, and sigma(t) for any
    (fractional) timestep t in [0, T - 1] by linear interpolation of log sigma between integer timesteps."""

    def __init__(self, model):
        sde = model.sde
        if model.process != "vp" or not hasattr(sde, "log_alpha_bar"):
            label = model.name or type(model).__name__
            raise ValueError(
                f"diffusers schedulers drive VP (DDPM-type) noise schedules; model {label!r} has a "
                f"{model.process.upper()} process: use a scorebench sampler on it"
            )
        betas = getattr(sde, "betas", None)
        if betas is not None:
            log_alpha_bar = torch.cumsum(torch.log1p(-betas), 0)
        else:
            t = torch.arange(1, VP_STEPS + 1, dtype=torch.float64) / VP_STEPS
            log_alpha_bar = sde.log_alpha_bar(t)
            betas = -torch.expm1(torch.diff(log_alpha_bar, prepend=log_alpha_bar.new_zeros(1)))
        self.T = betas.numel()
        self.betas = betas.to(torch.float64)
        self.log_sigma = 0.5 * torch.log(torch.expm1(-log_alpha_bar))
        self._on: dict[torch.device, Tensor] = {}

    def sigma(self, t: Tensor) -> Tensor:
        """sigma at (possibly fractional) timesteps t, float64 on t's device."""
        table = self._on.get(t.device)
        if table is None:
            table = self._on[t.device] = self.log_sigma.to(t.device)
        u = t.to(torch.float64).clamp(0, self.T - 1)
        k = u.floor().clamp(max=self.T - 2).long()
        return torch.exp(torch.lerp(table[k], table[k + 1], u - k))


def _presented(model, table: DdpmTable, prediction: str) -> Callable[[Tensor, Tensor], Tensor]:
    """net(x_in, t): the denoiser as the `prediction` a scheduler expects of a network at VP state x_in, timestep t."""

    def net(x_in: Tensor, t: Tensor) -> Tensor:
        sigma = table.sigma(torch.as_tensor(t, device=x_in.device).reshape(-1)).expand(x_in.shape[0])
        scale = bc(torch.sqrt(1 + sigma**2), x_in)  # x_ve = x_vp / alpha, alpha = 1 / sqrt(1 + sigma^2)
        x_ve = x_in * scale
        denoised = model(x_ve, sigma)
        if prediction == "sample":
            return denoised
        eps = (x_ve - denoised) / bc(sigma, x_in)
        if prediction == "epsilon":
            return eps
        return (eps - bc(sigma, x_in) * denoised) / scale  # v = alpha eps - sigma_vp D, sigma_vp = alpha sigma

    return net


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """diffusers' own warnings and log messages silenced (samplers do not print)."""
    log = logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _scheduler_class(name: str):
    try:
        import diffusers
    except ImportError:
        raise ValueError(f"sampler 'diffusers:{name}' needs diffusers: pip install diffusers") from None
    names = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
    if name not in names:
        raise ValueError(f"diffusers has no scheduler {name!r}; {_closest(name, names)}")
    cls = getattr(diffusers, name)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        needs = ", ".join(getattr(cls, "_backends", ())) or "a missing dependency"
        raise ValueError(f"diffusers:{name} is not available in this installation (it needs {needs})")
    return cls


def _probe_betas() -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, VP_STEPS, dtype=torch.float64)


def _diffusers_spec(name: str) -> SamplerSpec:
    cls = _scheduler_class(name)
    init = inspect.signature(cls.__init__).parameters
    if not {"num_train_timesteps", "trained_betas"} <= set(init):
        raise ValueError(
            f"diffusers:{name} is not a discrete-time scheduler on a beta schedule: scorebench drives only those "
            "(on VP/DDPM models)"
        )
    step = inspect.signature(cls.step).parameters
    required = [p for p, v in step.items() if p not in STEP_INPUTS and v.default is inspect.Parameter.empty]
    if required:
        raise ValueError(f"diffusers:{name}.step() needs {', '.join(required)}: it is not a sampling loop")
    init_defaults = {p: v.default for p, v in init.items() if p not in PROCESS_KEYS and p != "self"}
    init_defaults = {p: d for p, d in init_defaults.items() if d is not inspect.Parameter.empty}
    step_defaults = {p: v.default for p, v in step.items() if p not in STEP_INPUTS and p not in init_defaults}
    step_defaults = {p: d for p, d in step_defaults.items() if not p.startswith("_")}
    with _quiet():
        probe = cls(num_train_timesteps=VP_STEPS, trained_betas=_probe_betas().numpy())
        min_steps = _fewest_steps(probe)
    if min_steps is None:
        raise ValueError(f"diffusers:{name} cannot set up a schedule of 2 to {MAX_MIN_STEPS} steps")
    prediction = probe.config.get("prediction_type")
    if getattr(probe, "alphas_cumprod", None) is None or prediction not in PREDICTIONS:
        raise ValueError(f"diffusers:{name} does not sample a DDPM noise schedule from eps/x0/v predictions")
    if float(probe.timesteps[0]) < float(probe.timesteps[-1]):
        raise ValueError(f"diffusers:{name} runs its timesteps forward (an inversion scheduler), not a sampler")
    noise_kind = "variance_noise" if "variance_noise" in step else "generator" if "generator" in step else None
    timestep_counts: dict[tuple, int] = {}

    def build(table_betas: Tensor, hyper: dict[str, Any]):
        config = {k: v for k, v in hyper.items() if k in init_defaults}
        with _quiet():
            return cls(num_train_timesteps=table_betas.numel(), trained_betas=table_betas.numpy(), **config)

    def nfe(steps: int, **hyper) -> int:
        """Network calls of the loop: the scheduler's timesteps for `steps` inference steps (one call each); a step
        count the scheduler refuses (e.g. more than LCM's original steps) costs more than any budget."""
        key = (steps, *sorted((k, repr(v)) for k, v in hyper.items() if k in init_defaults))
        if key not in timestep_counts:
            scheduler = build(_probe_betas(), hyper)
            try:
                with _quiet():
                    scheduler.set_timesteps(steps)
                timestep_counts[key] = len(scheduler.timesteps)
            except Exception:  # any refusal means: this many steps cannot be run
                timestep_counts[key] = UNRUNNABLE
        return timestep_counts[key]

    def run(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, **hyper) -> Tensor:
        table = DdpmTable(model)
        sigmas = per_sample(sigmas, x, model)
        scheduler = build(table.betas.cpu(), hyper)
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in PREDICTIONS:
            raise ValueError(
                f"diffusers:{name} with prediction_type={prediction_type!r}: expected one of {PREDICTIONS}"
            )
        net = _presented(model, table, prediction_type)
        step_kwargs = {k: v for k, v in hyper.items() if k in step_defaults}
        noise = noise_or_default(noise, x) if noise_kind else None
        if noise_kind == "generator":
            step_kwargs["generator"] = _generators(noise, x, sigmas[:, 0])
        dtype = x.dtype
        with _quiet():
            scheduler.set_timesteps(sigmas.shape[1] - 1, device=x.device)
            x = x / bc(sigmas[:, 0], x) * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                out = net(scheduler.scale_model_input(x, t), t)
                if noise_kind == "variance_noise":
                    level = sigmas[:, 0]
                    step_kwargs["variance_noise"] = noise(level, level).to(out.dtype)
                x = scheduler.step(out, t, x, **step_kwargs).prev_sample
        return x.to(dtype)

    run.__signature__ = _keyword_signature({**init_defaults, **step_defaults})
    run.__name__ = run.__qualname__ = f"diffusers_{name}"
    run.__doc__ = f"diffusers' {name} driven by the model's denoiser (samplers.adapters)."
    return SamplerSpec(
        f"diffusers:{name}",
        run,
        "diffusers",
        noise_kind is not None,
        nfe,
        f"diffusers {name} (Hugging Face diffusers library)",
        f"diffusers' {name} loop on a VP model's denoiser, its own timesteps; NFE = its timesteps",
        schedule="native",
        min_steps=min_steps,
    )


def _fewest_steps(scheduler) -> int | None:
    """The smallest step count from 2 the scheduler sets up (PNDM needs 4); its timesteps are left set for that."""
    for steps in range(2, MAX_MIN_STEPS + 1):
        try:
            scheduler.set_timesteps(steps)
        except Exception:  # a scheduler that cannot run this few steps raises whatever it raises
            continue
        return steps
    return None


def _generators(noise: Noise, x: Tensor, level: Tensor) -> list[torch.Generator]:
    """One torch.Generator per sample, seeded from the first 64 bits of that sample's next noise draw, so that a
    scheduler drawing its own noise still gives each sample a stream that does not depend on the batch."""
    draw = noise(level, level).reshape(x.shape[0], -1)[:, :2].to(torch.float32).contiguous()
    words = draw.view(torch.int32).to(torch.int64).cpu() & 0xFFFFFFFF
    if words.shape[1] == 1:
        words = torch.cat([words, words], 1)
    seeds = ((words[:, 0] << 31) ^ words[:, 1]).tolist()
    return [torch.Generator(device=x.device).manual_seed(int(s)) for s in seeds]


# --- k-diffusion ------------------------------------------------------------------------------------------------------
def _kdiffusion_module():
    try:
        import k_diffusion.sampling as sampling
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] == "k_diffusion":
            message = "k-diffusion samplers need the optional k-diffusion package: pip install k-diffusion"
            raise ValueError(message) from None
        raise ValueError(f"k-diffusion is installed but cannot be imported: {err}") from None
    return sampling


def _kdiffusion_spec(name: str) -> SamplerSpec:
    sampling = _kdiffusion_module()
    names = sorted(n for n in dir(sampling) if n.startswith("sample_") and callable(getattr(sampling, n)))
    if name not in names:
        raise ValueError(f"k_diffusion.sampling has no sampler {name!r}; {_closest(name, names)}")
    fn = getattr(sampling, name)
    params = inspect.signature(fn).parameters
    if "sigmas" not in params:
        raise ValueError(f"k-diffusion:{name} takes no sigma schedule (an adaptive or range sampler): not supported")
    defaults = {p: v.default for p, v in params.items() if p not in K_DIFFUSION_OWN}
    required = [p for p, d in defaults.items() if d is inspect.Parameter.empty]
    if required:
        raise ValueError(f"k-diffusion:{name} needs {', '.join(required)}: not supported")
    takes_noise = "noise_sampler" in params
    counts: dict[tuple, int] = {}

    def call(model, x: Tensor, sigmas: Tensor, noise, hyper: dict[str, Any]) -> Tensor:
        kwargs = {k: v for k, v in hyper.items() if k in defaults}
        if takes_noise:
            kwargs["noise_sampler"] = noise
        if "disable" in params:
            kwargs["disable"] = True
        return fn(model, x, sigmas, **kwargs)

    def nfe(steps: int, **hyper) -> int:
        """Denoiser calls per sample, counted on a probe: one sample of a unit Gaussian, Karras schedule of `steps`."""
        key = (steps, *sorted((k, repr(v)) for k, v in hyper.items()))
        if key not in counts:
            calls = []

            def gaussian(x: Tensor, sigma: Tensor, **_) -> Tensor:
                calls.append(x.shape[0])
                return x / (1 + bc(sigma, x) ** 2)

            x = torch.ones(1, 2, dtype=torch.float64)
            with torch.random.fork_rng(devices=[]):
                call(gaussian, x * 10, karras(0.01, 10.0, steps), lambda *_: torch.zeros_like(x), hyper)
            counts[key] = sum(calls)
        return counts[key]

    def run(model, x: Tensor, sigmas: Tensor, noise: Noise | None = None, **hyper) -> Tensor:
        sigmas = per_sample(sigmas, x, model)
        if not bool((sigmas == sigmas[:1]).all()):
            raise ValueError(f"k-diffusion:{name} takes one schedule for the whole batch, not one per sample")
        schedule = sigmas[0]

        def denoiser(x_: Tensor, sigma: Tensor, **_) -> Tensor:
            return model(x_, sigma.to(torch.float64).expand(x_.shape[0]))

        return call(denoiser, x, schedule, noise_or_default(noise, x), hyper)

    run.__signature__ = _keyword_signature(defaults)
    run.__name__ = run.__qualname__ = f"k_diffusion_{name}"
    run.__doc__ = f"k-diffusion's {name} on the model's denoiser (samplers.adapters)."
    return SamplerSpec(
        f"k-diffusion:{name}",
        run,
        "k-diffusion",
        takes_noise or "s_churn" in params,
        nfe,
        f"k-diffusion {name} (Crowson, k-diffusion library)",
        f"k-diffusion's {name} on the denoiser; NFE counted on a probe run",
        schedule="karras",
    )


ADAPTERS: dict[str, Callable[[str], SamplerSpec]] = {"diffusers": _diffusers_spec, "k-diffusion": _kdiffusion_spec}
_BUILT: dict[str, SamplerSpec] = {}


def adapter_spec(name: str) -> SamplerSpec:
    """The SamplerSpec of `PREFIX:TARGET` (diffusers:CLASSNAME, k-diffusion:FUNCTION), built once; ValueError (one line,
    naming the closest names) for an unknown prefix, class or function, or a missing optional library."""
    prefix, _, target = name.partition(":")
    if prefix not in ADAPTERS or not target:
        raise ValueError(f"unknown sampler {name!r}: adapter samplers are {', '.join(p + ':NAME' for p in ADAPTERS)}")
    if name not in _BUILT:
        _BUILT[name] = ADAPTERS[prefix](target)
    return _BUILT[name]
