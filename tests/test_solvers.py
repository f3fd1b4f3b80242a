"""The multistep solvers (dpmpp_2m, dpmpp_3m, unipc, deis, ipndm) against the implementations they follow and against
the exact flow of a Gaussian, and the `diffusers:` / `k-diffusion:` adapters through sample(), suites and reports."""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.metrics import exact_metrics
from models import CountingDenoiser, DDPMProcess, GMMDenoiser, VPProcess, load_model
from models.gmm import gmm_2d, gmm_64d
from samplers import SAMPLERS, SeededNoise, adapters, get_sampler, make_schedule, sample
from samplers.schedules import SCHEDULES, geometric

NEW = ["dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm"]

# k-diffusion's sampling functions as its users call them: fn(model, x, sigmas, extra_args, callback, disable, ...),
# model(x, sigma[B]) -> D, sigmas decreasing to 0; written here from the papers' equations (Euler; Karras et al. 2022
# Algorithm 1 with an Euler step to 0; the ancestral split of a step into sigma_down and sigma_up; linear multistep with
# Lagrange coefficients integrated numerically; DPM-Solver++(2M), Algorithm 2). The tests use the real module instead
# whenever k-diffusion is installed.
KDIFFUSION_STANDIN = """
import torch
from scipy import integrate


def _d(x, sigma, denoised):
    return (x - denoised) / sigma


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0):
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x = x + _d(x, sigmas[i], model(x, sigmas[i] * ones)) * (sigmas[i + 1] - sigmas[i])
    return x


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = _d(x, sigmas[i], model(x, sigmas[i] * ones))
        x_next = x + d * (sigmas[i + 1] - sigmas[i])
        if sigmas[i + 1] > 0:
            d_next = _d(x_next, sigmas[i + 1], model(x_next, sigmas[i + 1] * ones))
            x_next = x + (d + d_next) / 2 * (sigmas[i + 1] - sigmas[i])
        x = x_next
    return x


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, noise_sampler=None):
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        up = min(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
        down = (s_next**2 - up**2) ** 0.5
        x = x + _d(x, s, model(x, s * ones)) * (down - s)
        if s_next > 0:
            x = x + noise_sampler(s, s_next) * up
    return x


def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    ones = x.new_ones([x.shape[0]])
    levels = sigmas.double().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        ds = [_d(x, sigmas[i], model(x, sigmas[i] * ones)), *ds][:order]
        for j, d in enumerate(ds):
            others = [k for k in range(len(ds)) if k != j]

            def basis(tau, j=j, others=others):
                out = 1.0
                for k in others:
                    out *= (tau - levels[i - k]) / (levels[i - j] - levels[i - k])
                return out

            x = x + integrate.quad(basis, levels[i], levels[i + 1], epsrel=1e-4)[0] * d
    return x


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    ones = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones)
        h = torch.log(sigmas[i] / sigmas[i + 1])  # lambda = -log sigma
        if old_denoised is None or sigmas[i + 1] == 0:
            x = sigmas[i + 1] / sigmas[i] * x + (1 - sigmas[i + 1] / sigmas[i]) * denoised
        else:
            r = torch.log(sigmas[i - 1] / sigmas[i]) / h
            extrapolated = (1 + 1 / (2 * r)) * denoised - old_denoised / (2 * r)
            x = sigmas[i + 1] / sigmas[i] * x + (1 - sigmas[i + 1] / sigmas[i]) * extrapolated
        old_denoised = denoised
    return x
"""


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def float64(name: str) -> GMMDenoiser:
    """A built-in mixture model with its exact denoiser in float64."""
    base = load_model(name)
    return GMMDenoiser(base.mixture, base.sde, dtype=torch.float64, name=name)


@functools.cache
def shipped(name: str):
    """A built-in model, loaded once for the module (the digits checkpoints take a moment to load)."""
    return load_model(name)


def kdiffusion_sampling():
    try:
        import k_diffusion.sampling as real
    except ImportError:
        standin = types.ModuleType("k_diffusion_standin")
        exec(KDIFFUSION_STANDIN, standin.__dict__)
        return standin
    return real


@pytest.fixture
def kdiffusion(tmp_path, monkeypatch):
    """k-diffusion importable: the installed one, else the stand-in above as package `k_diffusion` on sys.path."""
    monkeypatch.setattr(adapters, "_BUILT", {})
    try:
        import k_diffusion.sampling  # noqa: F401
    except ImportError:
        package = tmp_path / "standin" / "k_diffusion"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "sampling.py").write_text(KDIFFUSION_STANDIN)
        monkeypatch.syspath_prepend(str(package.parent))
        for name in ("k_diffusion", "k_diffusion.sampling"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        yield
        for name in ("k_diffusion", "k_diffusion.sampling"):
            sys.modules.pop(name, None)
        return
    yield


# --- against the implementations they follow --------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["gmm-2d-ve", "gmm-2d-ddpm"])
@pytest.mark.parametrize("schedule", ["karras", "logsnr"])
def test_dpmpp_2m_equals_k_diffusion(model_name, schedule):
    model = float64(model_name)
    sigmas = make_schedule(schedule, model, 12)
    x = SeededNoise(range(64), model.shape, dtype=torch.float64)() * float(sigmas[0])
    ours = SAMPLERS["dpmpp_2m"].fn(model, x, sigmas)
    theirs = kdiffusion_sampling().sample_dpmpp_2m(
        lambda x_, s: model(x_, s.to(torch.float64)), x, sigmas, disable=True
    )
    assert rel(ours, theirs) < 1e-6


def diffusers_loop(
    scheduler, model, z: torch.Tensor, steps: int, float64_schedule: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The diffusers loop with the model's denoiser as the eps network at the scheduler's own noise levels; returns
    (final VP state, the scheduler's sigmas in float64). float64_schedule: the scheduler's levels as float64 tensors,
    so that its arithmetic runs in float64 (diffusers keeps them in float32)."""
    scheduler.set_timesteps(steps)
    if float64_schedule:
        scheduler.sigmas = scheduler.sigmas.double()
    sigmas = scheduler.sigmas.double()
    x = z.clone()
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigmas[i].expand(x.shape[0])
        x_ve = x.double() * torch.sqrt(1 + sigma[:, None] ** 2)
        eps = (x_ve - model(x_ve, sigma)) / sigma[:, None]
        x = scheduler.step(eps.to(x.dtype), t, x).prev_sample
    return x, sigmas


# (scheduler class, its arguments, our sampler and hyper-parameters, whether it ends at sigma = 0, float64 possible)
DIFFUSERS_TWINS = {
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "dpmsolver++"}, {}, True, False),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2, "algorithm_type": "dpmsolver++"}, {}, True, False),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2"}, {}, True, True),
    "unipc-order2": ("UniPCMultistepScheduler", {"solver_order": 2}, {"order": 2}, True, True),
    "unipc-bh1": (
        "UniPCMultistepScheduler",
        {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        {"variant": "bh1"},
        False,
        True,
    ),
    "deis": ("DEISMultistepScheduler", {"solver_order": 3}, {}, False, True),
}


@pytest.mark.parametrize("steps", [5, 10, 20, 40])
@pytest.mark.parametrize("case", list(DIFFUSERS_TWINS))
def test_multistep_solvers_equal_diffusers(case, steps):
    """Same timesteps, same initial noise, the same denoiser as eps: diffusers' scheduler in float32 and ours agree to
    1e-5 (on the 2-d mixture: diffusers' float32 eps -> x0 conversion at sigma ~ 157 alone costs ~1e-5 in 64-d); with
    its levels as float64 tensors (where its step keeps float64: UniPC, DEIS) they agree to 1e-10 on the 64-d mixture
    at 20 and 40 steps, where DEIS's float32 closed-form coefficients alone are 2e-5 off."""
    import diffusers

    name, kwargs, hyper, to_zero, exact = DIFFUSERS_TWINS[case]
    sampler = case.split("-")[0]
    precise = exact and steps >= 15
    model = GMMDenoiser(gmm_64d() if precise else gmm_2d(), DDPMProcess(), dtype=torch.float64)
    z = torch.randn(16, model.shape[0], generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    scheduler = getattr(diffusers, name)(**kwargs)
    theirs, sigmas = diffusers_loop(scheduler, model, z if precise else z.float(), steps, precise)
    if not to_zero:  # the scheduler stops at its smallest level: our schedule goes on to 0, without the final step
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    x = z * torch.sqrt(1 + sigmas[0] ** 2)  # VP state at the first level -> VE terms
    ours = SAMPLERS[sampler].fn(model, x, sigmas, denoise=to_zero, **hyper)
    ours = ours if to_zero else ours / torch.sqrt(1 + sigmas[-2] ** 2)
    assert rel(ours, theirs) < (1e-10 if precise else 1e-5)


def diff_sampler_ipndm(model, x, t_steps: torch.Tensor, max_order: int = 4, denoise_to_zero: bool = False):
    """zju-pi/diff-sampler's iPNDM loop, transcribed: over the positive levels t_steps, d = (x - D) / t and an Adams-
    Bashforth step of order min(max_order, i + 1) with the constant-step coefficients; then optionally D at the last."""
    ab = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    buffer = []  # earlier d's, oldest first
    for i in range(len(t_steps) - 1):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        d_cur = (x - model(x, t_cur.expand(x.shape[0]))) / t_cur
        coefficients = ab[min(max_order, i + 1)]
        slope = coefficients[0] * d_cur + sum(c * d for c, d in zip(coefficients[1:], reversed(buffer), strict=False))
        x = x + (t_next - t_cur) * slope
        buffer = (buffer + [d_cur])[-(max_order - 1) :] if max_order > 1 else []
    return model(x, t_steps[-1].expand(x.shape[0])) if denoise_to_zero else x


@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
@pytest.mark.parametrize("denoise", [False, True])
def test_ipndm_equals_diff_sampler(max_order, denoise):
    model = float64("gmm-64d-vp")
    t_steps = make_schedule("karras", model, 11)[:-1]  # diff-sampler's polynomial grid, without the final 0
    x = SeededNoise(range(16), model.shape, dtype=torch.float64)() * t_steps[0]
    theirs = diff_sampler_ipndm(model, x, t_steps, max_order, denoise_to_zero=denoise)
    ours = SAMPLERS["ipndm"].fn(model, x, torch.cat([t_steps, t_steps.new_zeros(1)]), order=max_order, denoise=denoise)
    assert rel(ours, theirs) < 1e-12


# --- against the truth ------------------------------------------------------------------------------------------------
def flow_error(model, sampler: str, sigmas: torch.Tensor, **hyper) -> float:
    """Max error of a sampler's end point (no final denoise) against the exact probability flow of a Gaussian."""
    x_init = SeededNoise(range(32), model.shape, dtype=torch.float64)() * float(sigmas[0])
    x = SAMPLERS[sampler].fn(model, x_init, sigmas, denoise=False, **hyper)
    return float((x - model.mixture.flow(x_init, float(sigmas[0]), float(sigmas[-2]))).abs().max())


def uniform_sigma(model, n: int) -> torch.Tensor:
    """n levels evenly spaced in sigma, 3 down to 0.1, then 0: the grid Adams-Bashforth's fixed coefficients assume."""
    return torch.cat([torch.linspace(3.0, 0.1, n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


# (sampler, hyper-parameters, schedule, measured order range). UniPC-p is order p + 1 (its corrector adds one; taken
# without the final-step order lowering, which caps the last steps at orders 1 and 2). DPM-Solver++(3M) as published
# and run by diffusers is second order (its D2 weight is half the Taylor one, see its docstring); "exact" restores it
# (and shows one order more on this Gaussian, as UniP-3 does). iPNDM's constant-step coefficients are fourth order on
# a grid uniform in sigma, second order on its default Karras grid.
ORDERS = [
    ("dpmpp_2m", {}, None, (1.5, 2.5)),
    ("dpmpp_3m", {}, None, (1.5, 2.5)),
    ("dpmpp_3m", {"third_order": "exact"}, None, (2.5, 4.5)),
    ("unipc", {"lower_order_final": False}, None, (3.5, 4.5)),
    ("unipc", {"order": 2, "lower_order_final": False}, None, (2.5, 3.5)),
    ("unipc", {"order": 1, "lower_order_final": False}, None, (1.5, 2.5)),
    ("deis", {}, None, (2.5, 3.5)),
    ("ipndm", {}, uniform_sigma, (3.5, 4.5)),
    ("ipndm", {}, None, (1.5, 2.5)),
]


@pytest.mark.parametrize(("sampler", "hyper", "grid", "order"), ORDERS)
def test_convergence_order_on_a_single_gaussian(gaussian_ve, sampler, hyper, grid, order):
    steps = (64, 256)
    errors = []
    for n in steps:
        sigmas = grid(gaussian_ve, n) if grid else make_schedule(SAMPLERS[sampler].schedule, gaussian_ve, n)
        errors.append(flow_error(gaussian_ve, sampler, sigmas, **hyper))
    measured = np.log(errors[0] / errors[1]) / np.log(steps[1] / steps[0])
    assert errors[1] < 1e-3
    assert order[0] < measured < order[1], f"{sampler} {hyper}: measured order {measured:.2f}, errors {errors}"


@pytest.mark.parametrize("sampler", NEW)
def test_ve_and_vp_models_follow_the_same_flow(gaussian_ve, sampler):
    """No process-specific code: on the VP form of the same Gaussian the end points are the VE ones (the exact flow)."""
    vp = GMMDenoiser(gaussian_ve.mixture, VPProcess(), dtype=torch.float64)
    sigmas = geometric(0.05, 20.0, 64)
    x_init = SeededNoise(range(32), (2,), dtype=torch.float64)() * 20.0
    ends = [SAMPLERS[sampler].fn(m, x_init, sigmas, denoise=False) for m in (gaussian_ve, vp)]
    assert torch.allclose(ends[0], ends[1], rtol=0, atol=1e-10)
    assert flow_error(vp, sampler, sigmas) < 1e-3


def test_time_quadratic_and_logsnr_schedules():
    ve, vp = load_model("gmm-2d-ve"), load_model("gmm-2d-vp")
    for model in (ve, vp):
        assert torch.allclose(SCHEDULES["logsnr"](model, 9), geometric(model.sigma_min, model.sigma_max, 9))
        levels = SCHEDULES["time_quadratic"](model, 9)
        t = model.sde.t(levels[:-1])
        assert torch.allclose(t.sqrt(), torch.linspace(model.sde.t_max**0.5, model.sde.t_min**0.5, 9, dtype=t.dtype))
        assert levels[-1] == 0 and bool((levels[1:] < levels[:-1]).all())


# --- NFE, batches, per-sample schedules, bad input --------------------------------------------------------------------
@pytest.mark.parametrize("sampler", NEW)
def test_measured_nfe_equals_the_declared_formula_and_fits_the_budget(sampler):
    model = load_model("gmm-2d-vp")
    spec = SAMPLERS[sampler]
    for steps in (spec.min_steps, 3, 7, 20):
        for denoise in (True, False):
            counter = CountingDenoiser(model)
            spec.fn(
                counter,
                torch.randn(5, 2) * model.sigma_max,
                make_schedule(spec.schedule, model, steps),
                denoise=denoise,
            )
            assert (
                counter.evals / 5 == counter.calls == spec.declared_nfe(steps, denoise=denoise) == steps - (not denoise)
            )
    for budget in (10, 33):
        result = sample(model, sampler, nfe=budget, seeds=range(4))
        assert result.nfe == result.declared_nfe == budget
        assert spec.declared_nfe(result.steps + 1) > budget


@pytest.mark.parametrize("sampler", NEW)
def test_samples_do_not_depend_on_the_batch_and_rows_keep_their_own_schedule(sampler):
    model = load_model("gmm-64d-ve")
    whole = sample(model, sampler, nfe=12, seeds=range(10)).x
    assert torch.allclose(whole, sample(model, sampler, nfe=12, seeds=range(10), batch_size=3).x, rtol=0, atol=1e-5)
    assert torch.allclose(whole[7:9], sample(model, sampler, nfe=12, seeds=[7, 8]).x, rtol=0, atol=1e-5)
    # a schedule per sample (as DLG hands over): each row as if sampled alone on its own schedule (float64: iPNDM's
    # fixed-step Adams-Bashforth on 12 Karras levels amplifies float32 rounding to 1e-4)
    model = float64("gmm-64d-ve")
    rows = torch.stack([geometric(0.02, 30.0, 9), geometric(0.05, 10.0, 9), make_schedule("karras", model, 9)])
    x = SeededNoise(range(3), model.shape, dtype=torch.float64)() * rows[:, :1]
    together = SAMPLERS[sampler].fn(model, x, rows)
    for i in range(3):
        assert torch.allclose(together[i], SAMPLERS[sampler].fn(model, x[i : i + 1], rows[i])[0], rtol=0, atol=1e-10)


def test_bad_hyper_parameters_are_value_errors():
    model = load_model("gmm-2d")
    sigmas = make_schedule("logsnr", model, 5)
    x = torch.zeros(2, 2)
    for sampler, hyper in [
        ("unipc", {"order": 4}),
        ("unipc", {"variant": "bh3"}),
        ("deis", {"order": 0}),
        ("ipndm", {"order": 5}),
        ("dpmpp_3m", {"third_order": "taylor"}),
    ]:
        with pytest.raises(ValueError, match=next(iter(hyper))):
            SAMPLERS[sampler].fn(model, x, sigmas, **hyper)


@pytest.mark.parametrize("sampler", NEW)
def test_new_samplers_run_on_the_shipped_networks(sampler):
    for name in ("digits-ve", "digits-vp"):
        result = sample(shipped(name), sampler, nfe=10, seeds=range(4))
        assert result.nfe == result.declared_nfe == 10 and bool(torch.isfinite(result.x).all())


# --- diffusers: adapter -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheduler", "hyper", "per_step"),
    [
        ("DDIMScheduler", {"clip_sample": False}, 1),
        ("EulerDiscreteScheduler", {}, 1),
        ("DPMSolverMultistepScheduler", {}, 1),
        ("UniPCMultistepScheduler", {}, 1),
        ("HeunDiscreteScheduler", {}, 2),
    ],
)
def test_diffusers_schedulers_sample_within_the_budget(scheduler, hyper, per_step):
    model = load_model("gmm-2d-ddpm")
    spec = get_sampler(f"diffusers:{scheduler}")
    fd = []
    for budget in (10, 25):
        result = sample(model, spec.name, nfe=budget, seeds=range(512), **hyper)
        assert result.nfe == result.declared_nfe <= budget < spec.declared_nfe(result.steps + 1, **hyper)
        assert result.declared_nfe == per_step * result.steps - (per_step - 1)  # Heun: 2N - 1, the others N
        fd.append(exact_metrics(model.mixture, result.x)["fd_exact"])
    assert fd[1] < min(fd[0], 0.01), fd  # measured at 512 samples: 0.0003 (DPM-Solver++, UniPC) to 0.0034 (Heun)


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
@pytest.mark.parametrize("model_name", ["gmm-64d-vp", "gmm-64d-ddpm", "digits-vp"])
def test_diffusers_schedulers_on_vp_models_and_networks(scheduler, model_name):
    result = sample(shipped(model_name), f"diffusers:{scheduler}", nfe=10, seeds=range(4))
    assert result.nfe == result.declared_nfe == 10 and bool(torch.isfinite(result.x).all())


def test_diffusers_adapter_presents_the_denoiser_as_each_prediction():
    """diffusers:DPMSolverMultistepScheduler (2M) is our dpmpp_2m on the scheduler's levels, whichever prediction the
    scheduler asks the network for (eps, x0, v)."""
    from diffusers import DPMSolverMultistepScheduler

    model = float64("gmm-2d-ddpm")
    scheduler = DPMSolverMultistepScheduler(trained_betas=model.sde.betas.numpy())
    scheduler.set_timesteps(12)
    levels = scheduler.sigmas.double()
    z = SeededNoise(range(64), model.shape, dtype=torch.float64)()
    reference = SAMPLERS["dpmpp_2m"].fn(model, z * torch.sqrt(1 + levels[0] ** 2), levels)
    spec = get_sampler("diffusers:DPMSolverMultistepScheduler")
    schedule = make_schedule("native", model, 12)  # only its length and first level count
    for prediction in ("epsilon", "sample", "v_prediction"):
        out = spec.fn(model, z * schedule[0], schedule, prediction_type=prediction)
        assert rel(out, reference) < 1e-5, prediction


@pytest.mark.parametrize(
    ("scheduler", "hyper"),
    [
        ("DDPMScheduler", {"clip_sample": False}),  # step() draws from per-sample generators
        ("DDIMScheduler", {"clip_sample": False, "eta": 1.0}),  # step() takes the per-sample noise as variance_noise
        ("EulerAncestralDiscreteScheduler", {}),
    ],
)
def test_stochastic_diffusers_schedulers_keep_per_sample_seeds(scheduler, hyper):
    model = load_model("gmm-2d-ddpm")
    name = f"diffusers:{scheduler}"
    whole = sample(model, name, nfe=10, seeds=range(6), **hyper).x
    alone = sample(model, name, nfe=10, seeds=[3, 4], **hyper).x
    assert torch.allclose(whole[3:5], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(whole, sample(model, name, nfe=10, seeds=range(6), seed=1, **hyper).x)


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    return message


def test_diffusers_refusals_are_one_line():
    one_line_error(lambda: sample("gmm-2d-ve", "diffusers:DDIMScheduler", nfe=10, seeds=range(2)), "VE process")
    one_line_error(lambda: get_sampler("diffusers:DDIMSchedular"), "closest", "DDIMScheduler")
    one_line_error(lambda: get_sampler("diffusers:DPMSolverMultistep"), "DPMSolverMultistepScheduler")
    one_line_error(lambda: get_sampler("diffusers:FlowMatchEulerDiscreteScheduler"), "beta schedule")
    one_line_error(lambda: get_sampler("diffusers:DDIMInverseScheduler"), "inversion")
    one_line_error(lambda: get_sampler("diffusers:RePaintScheduler"), "needs")
    one_line_error(lambda: get_sampler("diffusion:DDIMScheduler"), "diffusers:NAME", "k-diffusion:NAME")
    one_line_error(lambda: sample("gmm-2d-ddpm", "diffusers:DDIMScheduler", nfe=10, clip=False), "no hyper-parameter")


# --- k-diffusion: adapter --------------------------------------------------------------------------------------------
def test_k_diffusion_missing_is_one_line(monkeypatch):
    monkeypatch.setattr(adapters, "_BUILT", {})
    for name in ("k_diffusion", "k_diffusion.sampling"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    one_line_error(lambda: get_sampler("k-diffusion:sample_euler"), "pip install k-diffusion")
    one_line_error(lambda: sample("gmm-2d", "k-diffusion:sample_euler", nfe=10), "pip install k-diffusion")


@pytest.mark.parametrize(("function", "per_step"), [("sample_dpmpp_2m", 1), ("sample_lms", 1), ("sample_heun", 2)])
@pytest.mark.parametrize("model_name", ["gmm-64d", "digits-ve"])
def test_k_diffusion_samplers_through_sample(kdiffusion, function, per_step, model_name):
    model = shipped(model_name)
    spec = get_sampler(f"k-diffusion:{function}")
    result = sample(model, spec.name, nfe=12, seeds=range(4))
    assert result.nfe == result.declared_nfe == per_step * result.steps - (per_step - 1) <= 12
    assert spec.declared_nfe(result.steps + 1) > 12 and bool(torch.isfinite(result.x).all())
    if function == "sample_dpmpp_2m" and model_name == "gmm-64d":  # the same algorithm as ours, in float64
        model = float64("gmm-64d")
        sigmas = make_schedule("karras", model, 12)
        x = SeededNoise(range(4), model.shape, dtype=torch.float64)() * sigmas[0]
        assert rel(spec.fn(model, x, sigmas), SAMPLERS["dpmpp_2m"].fn(model, x, sigmas)) < 1e-10


def test_k_diffusion_noise_sampler_gets_per_sample_noise_and_unknown_names_are_one_line(kdiffusion):
    model = load_model("gmm-2d")
    name = "k-diffusion:sample_euler_ancestral"
    whole = sample(model, name, nfe=10, seeds=range(6)).x
    assert torch.allclose(whole[2:4], sample(model, name, nfe=10, seeds=[2, 3]).x, rtol=0, atol=1e-5)
    assert get_sampler(name).stochastic and not get_sampler("k-diffusion:sample_dpmpp_2m").stochastic
    one_line_error(lambda: get_sampler("k-diffusion:sample_dpmpp_2n"), "closest", "sample_dpmpp_2m")
    one_line_error(lambda: sample(model, name, nfe=10, etta=0.5), "no hyper-parameter", "eta")


# --- suites and reports -----------------------------------------------------------------------------------------------
ADAPTER_SUITE = """
[suite]
description = "scorebench's multistep solvers next to a diffusers scheduler"
seed = 3
n_samples = 32
batch_size = 16
budgets = [10]

[[models]]
spec = "gmm-2d-ddpm"

[[models]]
spec = "gmm-2d-ve"

[samplers.dpmpp_3m]
[samplers.unipc]
[samplers."diffusers:DDIMScheduler"]
clip_sample = false
models = ["gmm-2d-ddpm"]
[samplers.ddim-diffusers-eta1]
sampler = "diffusers:DDIMScheduler"
clip_sample = false
eta = 1.0
models = ["gmm-2d-ddpm"]
"""


def test_adapters_and_new_samplers_run_through_suites_and_reports(tmp_path):
    from bench.cli import main
    from bench.runner import read_records
    from bench.suite import load_suite

    path = tmp_path / "adapters.toml"
    path.write_text(ADAPTER_SUITE)
    suite = load_suite(path)
    suite.validate()
    assert [s.sampler for s in suite.samplers][-2:] == ["diffusers:DDIMScheduler"] * 2
    threads = torch.get_num_threads()
    try:
        assert main(["run", str(path), "--out", str(tmp_path / "run"), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    records = {(r["model"], r["sampler"]): r for r in read_records(tmp_path / "run")}
    assert len(records) == 6
    for r in records.values():
        assert r["status"] == "ok" and r["nfe"] == r["declared_nfe"] <= 10, r
    assert records[("gmm-2d-ddpm", "ddim-diffusers-eta1")]["hyper"]["eta"] == 1.0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "diffusers:DDIMScheduler" in report and "dpmpp_3m" in report


def test_shipped_suites_carry_the_new_samplers():
    from bench.suite import load_suite, shipped_suites

    for name in ["quick", "digits", *(n for n in shipped_suites() if n.startswith("cifar10-"))]:
        suite = load_suite(name)
        assert set(NEW) <= {s.sampler for s in suite.samplers}, name
        suite.select(samplers=[s.name for s in suite.samplers if s.sampler in NEW]).validate()


def test_adapter_module_stays_out_of_the_registry():
    get_sampler("diffusers:DDIMScheduler")
    assert not any(":" in name for name in SAMPLERS) and Path(adapters.__file__).name == "adapters.py"
