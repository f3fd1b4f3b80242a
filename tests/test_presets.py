"""Upstream presets against independent transcriptions of the upstream updates, kar2 against EDM's Algorithm 2, and
measured NFE within every budget.

Each transcription below is written from the upstream's code and paper (score_sde_pytorch sampling.py / sde_lib.py,
ncsnv2 anneal_Langevin_dynamics, DMCMC's Demo notebook, Karras et al. 2022 Algorithm 2) in its own structure: an SDE
object with sde / discretize / marginal_prob, predictor and corrector updates as upstream writes them, the score from
an eps prediction on VP. It never calls a sampler; it is fed the same noise the sampler drew (recorded, in order).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import solve_ivp

from models import Denoiser, load_model
from samplers import SAMPLERS, SeededNoise, make_schedule, sample
from samplers.dlg import default_steps

TIGHT = 1e-10
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gmm(name: str):
    """A float64 copy of a built-in mixture model (its buffers cast: the exact denoiser then runs in float64)."""
    return load_model(name).to(torch.float64)


class Logged(Denoiser):
    """A model that logs the noise level of every call (one entry per network call)."""

    def __init__(self, inner):
        super().__init__(shape=inner.shape, sde=inner.sde, data_range=inner.data_range, name=inner.name)
        self.inner = inner
        self.sigmas: list[torch.Tensor] = []

    def denoise(self, x, sigma):
        self.sigmas.append(sigma.clone())
        return self.inner(x, sigma)


class Recorded:
    """Per-sample seeded normals, every call's draw kept in order."""

    def __init__(self, batch: int, shape: tuple[int, ...]):
        self.source = SeededNoise(range(batch), shape, dtype=torch.float64)
        self.calls: list[torch.Tensor] = []

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        z = self.source()
        self.calls.append(z)
        return z


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().max() / ref.abs().max())


def start(model, spec_name: str, n_levels: int, batch: int):
    """The sampler's default schedule, a standard normal z and the harness's initial state z sigmas[0]."""
    sigmas = make_schedule(SAMPLERS[spec_name].schedule, model, n_levels)
    z = SeededNoise(range(batch), model.shape, stream=0, dtype=torch.float64)()
    return sigmas, z, z * sigmas[0]


# --- score_sde: sde_lib.py and sampling.py, transcribed ---------------------------------------------------------------
class RefVESDE:
    """sde_lib.VESDE (sigma_max per sample, as DMCMC's), with a continuous NCSN++-style score model."""

    def __init__(self, sigma_min: float, sigma_max: torch.Tensor, n: int):
        self.sigma_min, self.sigma_max, self.N = sigma_min, sigma_max, n
        self.discrete_sigmas = torch.stack(
            [torch.exp(torch.linspace(math.log(sigma_min), math.log(top), n, dtype=torch.float64)) for top in sigma_max]
        )

    def marginal_std(self, t: float) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t: float):
        diffusion = self.marginal_std(t) * torch.sqrt(2 * (torch.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.zeros_like(x), diffusion

    def discretize(self, x, t: float):
        timestep = int(t * (self.N - 1))
        sigma = self.discrete_sigmas[:, timestep]
        adjacent = torch.zeros_like(sigma) if timestep == 0 else self.discrete_sigmas[:, timestep - 1]
        return torch.zeros_like(x), torch.sqrt(sigma**2 - adjacent**2)

    def corrector_alpha(self, t: float, batch: int) -> torch.Tensor:
        return torch.ones_like(self.sigma_max)

    def prior(self, z):
        return z * self.sigma_max[:, None]

    def score(self, model, x, t: float):
        """The model's score at the marginal std (a VE score network is conditioned on it)."""
        std = self.marginal_std(t)
        return model.score(x, std)


class RefVPSDE:
    """sde_lib.VPSDE, with a continuous eps-prediction model: score = -eps / std."""

    def __init__(self, beta_min: float, beta_max: float, n: int):
        self.beta_0, self.beta_1, self.N = beta_min, beta_max, n
        self.discrete_betas = torch.linspace(beta_min / n, beta_max / n, n, dtype=torch.float64)
        self.alphas = 1.0 - self.discrete_betas

    def sde(self, x, t: float):
        beta_t = self.beta_0 + t * (self.beta_1 - self.beta_0)
        return -0.5 * beta_t * x, torch.full((x.shape[0],), math.sqrt(beta_t), dtype=torch.float64)

    def marginal_prob(self, t: float) -> tuple[float, float]:
        log_mean_coeff = -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        return math.exp(log_mean_coeff), math.sqrt(1.0 - math.exp(2.0 * log_mean_coeff))

    def discretize(self, x, t: float):
        timestep = int(t * (self.N - 1))
        beta, alpha = self.discrete_betas[timestep], self.alphas[timestep]
        return torch.sqrt(alpha) * x - x, torch.full((x.shape[0],), float(torch.sqrt(beta)), dtype=torch.float64)

    def corrector_alpha(self, t: float, batch: int) -> torch.Tensor:
        return self.alphas[int(t * (self.N - 1))].expand(batch)

    def prior(self, z):
        return z

    def score(self, model, x, t: float):
        mean, std = self.marginal_prob(t)
        sigma = std / mean  # the VE noise level of x / mean
        x_ve = x / mean
        eps = (x_ve - model(x_ve, torch.full((x.shape[0],), sigma, dtype=torch.float64))) / sigma
        return -eps / std


def reference_sde(model, first_sigma: torch.Tensor, n: int):
    if model.process == "ve":
        return RefVESDE(model.sigma_min, first_sigma, n)
    return RefVPSDE(model.sde.beta_min, model.sde.beta_max, n)


def reverse_sde(ref, model, x, t: float, probability_flow: bool):
    drift, diffusion = ref.sde(x, t)
    drift = drift - diffusion[:, None] ** 2 * ref.score(model, x, t) * (0.5 if probability_flow else 1.0)
    return drift, (torch.zeros_like(diffusion) if probability_flow else diffusion)


def reverse_discretize(ref, model, x, t: float, probability_flow: bool):
    f, big_g = ref.discretize(x, t)
    rev_f = f - big_g[:, None] ** 2 * ref.score(model, x, t) * (0.5 if probability_flow else 1.0)
    return rev_f, (torch.zeros_like(big_g) if probability_flow else big_g)


def euler_maruyama_update(ref, model, x, t, z):
    dt = -1.0 / ref.N
    drift, diffusion = reverse_sde(ref, model, x, t, False)
    x_mean = x + drift * dt
    return x_mean + diffusion[:, None] * math.sqrt(-dt) * z(), x_mean


def reverse_diffusion_update(ref, model, x, t, z, probability_flow=False):
    f, big_g = reverse_discretize(ref, model, x, t, probability_flow)
    x_mean = x - f
    if probability_flow:  # upstream draws z and adds G z = 0; the sampler draws nothing
        return x_mean, x_mean
    return x_mean + big_g[:, None] * z(), x_mean


def langevin_update(ref, model, x, t, z, snr: float, n_steps: int):
    alpha = ref.corrector_alpha(t, x.shape[0])
    x_mean = x
    for _ in range(n_steps):
        grad = ref.score(model, x, t)
        noise = z()
        grad_norm = torch.norm(grad.reshape(grad.shape[0], -1), dim=-1).mean()
        noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
        step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * alpha
        x_mean = x + step_size[:, None] * grad
        x = x_mean + torch.sqrt(step_size * 2)[:, None] * noise
    return x, x_mean


def pc_sampler(model, ref, x_init, z, *, predictor: str, eps: float, snr: float = 0.16, n_corrector: int = 0):
    """get_pc_sampler's loop: corrector then predictor at each t of linspace(T, eps, N); returns x_mean."""
    x = x_init
    x_mean = x
    for t in torch.linspace(1.0, eps, ref.N, dtype=torch.float64).tolist():
        if n_corrector:
            x, x_mean = langevin_update(ref, model, x, t, z, snr, n_corrector)
        if predictor == "euler_maruyama":
            x, x_mean = euler_maruyama_update(ref, model, x, t, z)
        else:
            x, x_mean = reverse_diffusion_update(ref, model, x, t, z, probability_flow=predictor == "probability_flow")
    return x_mean


SCORE_SDE = {  # sampler -> (pc_sampler predictor, corrector steps)
    "em": ("euler_maruyama", 0),
    "rd": ("reverse_diffusion", 0),
    "pf_euler": ("probability_flow", 0),
    "pc": ("reverse_diffusion", 1),
}


@pytest.mark.parametrize("name", ["gmm-64d-ve", "gmm-64d-vp"])
@pytest.mark.parametrize("sampler", list(SCORE_SDE))
def test_score_sde_preset_is_score_sde_pytorchs_pc_sampler(name, sampler):
    model, batch = gmm(name), 6
    n = 7 if model.process == "ve" else 24  # score_sde's VP betas linspace(b0 / N, b1 / N, N) pass 1 below N = 20
    sigmas, z, x = start(model, sampler, n, batch)
    noise = Recorded(batch, model.shape)
    out = SAMPLERS[sampler].fn(model, x, sigmas, noise, preset="score_sde")
    ref = reference_sde(model, sigmas[:1].expand(batch), n)
    draws = iter(noise.calls)
    predictor, n_corrector = SCORE_SDE[sampler]
    snr = 0.16 if model.process == "ve" else 0.01
    eps = 1e-5 if model.process == "ve" else 1e-3
    expect = pc_sampler(
        model, ref, ref.prior(z), lambda: next(draws), predictor=predictor, eps=eps, snr=snr, n_corrector=n_corrector
    )
    assert next(draws, None) is None, "the sampler drew noise the upstream loop does not"
    assert rel_err(out, expect) < TIGHT
    # the default is a different algorithm: the same comparison fails without the preset
    default = SAMPLERS[sampler].fn(model, x, sigmas, Recorded(batch, model.shape))
    assert rel_err(default, expect) > 1e-6


def test_score_sde_preset_takes_eps_and_the_corrector_norms_are_batch_means():
    model, n, batch = gmm("gmm-64d-vp"), 22, 6
    sigmas, z, x = start(model, "pc", n, batch)
    noise = Recorded(batch, model.shape)
    out = SAMPLERS["pc"].fn(model, x, sigmas, noise, preset="score_sde", eps=0.05, n_corrector=2, snr=0.05)
    draws = iter(noise.calls)
    ref = reference_sde(model, sigmas[:1].expand(batch), n)
    expect = pc_sampler(
        model, ref, z, lambda: next(draws), predictor="reverse_diffusion", eps=0.05, snr=0.05, n_corrector=2
    )
    assert rel_err(out, expect) < TIGHT
    # batch-mean norms: a sample depends on the rest of its batch (the default's does not)
    alone = SAMPLERS["pc"].fn(model, x[:3], sigmas, Recorded(3, model.shape), preset="score_sde")
    together = SAMPLERS["pc"].fn(model, x, sigmas, Recorded(batch, model.shape), preset="score_sde")
    assert rel_err(alone, together[:3]) > 1e-8
    alone = SAMPLERS["pc"].fn(model, x[:3], sigmas, Recorded(3, model.shape))
    together = SAMPLERS["pc"].fn(model, x, sigmas, Recorded(batch, model.shape))
    assert rel_err(alone, together[:3]) < 1e-12


@pytest.mark.parametrize("name", ["gmm-64d-ve", "gmm-64d-vp"])
def test_score_sde_preset_rk45_is_the_ode_sampler_with_its_denoise(name):
    model, batch = gmm(name), 4
    sigmas, z, x = start(model, "rk45", 2, batch)
    logged = Logged(model)
    out = SAMPLERS["rk45"].fn(logged, x, sigmas, preset="score_sde", rtol=1e-4, atol=1e-4)
    ref = reference_sde(model, sigmas[:1].expand(batch), 1000)
    eps = 1e-5 if model.process == "ve" else 1e-3
    shape = (batch, *model.shape)

    def ode_func(t, y):
        drift, _ = reverse_sde(ref, model, torch.from_numpy(y.reshape(shape)), t, True)
        return drift.numpy().reshape(-1)

    solution = solve_ivp(ode_func, (1.0, eps), ref.prior(z).numpy().reshape(-1), rtol=1e-4, atol=1e-4, method="RK45")
    y = torch.from_numpy(solution.y[:, -1].reshape(shape))
    rev_f, _ = reverse_discretize(ref, model, y, eps, False)
    expect = y - rev_f  # denoise_update_fn: the reverse-diffusion predictor's x_mean at eps
    assert rel_err(out, expect) < TIGHT
    assert len(logged.sigmas) == solution.nfev + 1  # scipy's evaluations, then the denoising step
    default = SAMPLERS["rk45"].fn(model, x, sigmas, rtol=1e-4, atol=1e-4)
    assert rel_err(default, expect) > 1e-6


# --- ncsnv2: models/__init__.py anneal_Langevin_dynamics, transcribed -------------------------------------------------
def anneal_langevin_dynamics(model, x_mod, sigmas, z, n_steps_each: int, step_lr: float):
    for sigma in sigmas.tolist():
        labels = torch.full((x_mod.shape[0],), sigma, dtype=torch.float64)  # scorenet(x, c) is the score at sigma_c
        step_size = step_lr * (sigma / float(sigmas[-1])) ** 2
        for _ in range(n_steps_each):
            grad = model.score(x_mod, labels)
            noise = z()
            x_mod = x_mod + step_size * grad + noise * math.sqrt(step_size * 2)
    last = torch.full((x_mod.shape[0],), float(sigmas[-1]), dtype=torch.float64)
    return x_mod + float(sigmas[-1]) ** 2 * model.score(x_mod, last)


@pytest.mark.parametrize("name", ["gmm-64d-ve", "gmm-64d-vp"])
def test_ncsnv2_preset_is_anneal_langevin_dynamics_on_geometric_levels(name):
    model, levels, batch = gmm(name), 6, 5
    sigmas, z, x = start(model, "ald", levels, batch)
    # get_sigmas (geometric): exp(linspace(log sigma_begin, log sigma_end, num_classes)); ald's default schedule
    ncsn_sigmas = torch.exp(
        torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), levels, dtype=torch.float64)
    )
    torch.testing.assert_close(sigmas[:-1], ncsn_sigmas, rtol=1e-13, atol=0)
    for hyper, step_lr in (({}, 6.2e-6), ({"step_lr": 3e-4, "n_steps_each": 3}, 3e-4)):
        noise = Recorded(batch, model.shape)
        out = SAMPLERS["ald"].fn(model, x, sigmas, noise, preset="ncsnv2", **hyper)
        draws = iter(noise.calls)
        expect = anneal_langevin_dynamics(
            model, x, ncsn_sigmas, lambda d=draws: next(d), hyper.get("n_steps_each", 5), step_lr
        )
        assert rel_err(out, expect) < TIGHT
    default = SAMPLERS["ald"].fn(model, x, sigmas, Recorded(batch, model.shape), n_steps_each=3)
    assert rel_err(default, expect) > 1e-6
    with pytest.raises(ValueError, match="step_lr"):
        SAMPLERS["ald"].fn(model, x, sigmas, preset="ncsnv2", eps=1e-5)
    with pytest.raises(ValueError, match="step_lr"):
        SAMPLERS["ald"].fn(model, x, sigmas, step_lr=1e-5)


def test_ald_walks_geometric_levels_on_every_model():
    assert SAMPLERS["ald"].schedule == "geometric"
    for name in ("gmm-64d-ve", "gmm-64d-vp", "gmm-64d-ddpm"):
        logged = Logged(load_model(name))
        sample(logged, "ald", nfe=16, seeds=range(2), n_steps_each=5)
        levels = sorted({float(s[0]) for s in logged.sigmas[1:]}, reverse=True)  # the harness's warm-up call first
        ratios = torch.tensor(levels[1:]) / torch.tensor(levels[:-1])
        assert len(levels) == 3 and torch.allclose(ratios, ratios[0].expand(len(ratios)), rtol=1e-9)


# --- DMCMC: the Demo notebook's DLG, transcribed ----------------------------------------------------------------------
def karras_alg1(model, x, sigma_max, n, sigma_min):
    rho = 7
    ls = torch.linspace(0.0, 1.0, n - 1, dtype=torch.float64)[None]
    root = ls * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))[:, None] + (sigma_max ** (1 / rho))[:, None]
    sigma = torch.cat([root**rho, torch.zeros(x.shape[0], 1, dtype=torch.float64)], 1)
    for i in range(n - 1):
        d1 = -sigma[:, i, None] * model.score(x, sigma[:, i])
        x_hat = x + (sigma[:, i + 1] - sigma[:, i])[:, None] * d1
        if i < n - 2:
            d2 = -sigma[:, i + 1, None] * model.score(x_hat, sigma[:, i + 1])
            x = x + 0.5 * (sigma[:, i + 1] - sigma[:, i])[:, None] * (d1 + d2)
        else:
            x = x_hat
    return x


def karras_alg2(model, x, sigma_max, n, sigma_min, z, noise=0.007):
    rho = 7
    ls = torch.linspace(0.0, 1.0, n - 1, dtype=torch.float64)[None]
    root = ls * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))[:, None] + (sigma_max ** (1 / rho))[:, None]
    sigma = torch.cat([root**rho, torch.zeros(x.shape[0], 1, dtype=torch.float64)], 1)
    s_churn, s_tmin, s_tmax, s_noise = 80, 0.05, 1.0, 1 + noise
    for i in range(n - 1):
        eps = s_noise * z()
        cond = (sigma[:, i] >= s_tmin) * (sigma[:, i] <= s_tmax)
        gamma = min(s_churn / n, math.sqrt(2) - 1) * cond.double()  # float64 (a Python float times a bool tensor
        # would be float32, as in the notebook, whose whole computation is float32)
        sigma_hat = (1 + gamma) * sigma[:, i]
        x_hat = x + (sigma_hat**2 - sigma[:, i] ** 2).sqrt()[:, None] * eps
        d1 = -sigma_hat[:, None] * model.score(x_hat, sigma_hat)
        x_next = x_hat + (sigma[:, i + 1] - sigma_hat)[:, None] * d1
        if i < n - 2:
            d2 = -sigma[:, i + 1, None] * model.score(x_next, sigma[:, i + 1])
            x = x_hat + 0.5 * (sigma[:, i + 1] - sigma_hat)[:, None] * (d1 + d2)
        else:
            x = x_next
    return x


def dmcmc_integrate(integrator: str, ve_model, x_min, s_min, levels: int, z):
    """The notebook's integrator cell on each output from its own sigma (VESDE(sigma_min, s_min, N) for score_sde's)."""
    sigma_min = ve_model.sigma_min
    if integrator == "kar1":
        return karras_alg1(ve_model, x_min, s_min, levels + 1, sigma_min)
    if integrator == "kar2":
        return karras_alg2(ve_model, x_min, s_min, levels + 1, sigma_min, z)
    ref = RefVESDE(sigma_min, s_min, levels)
    if integrator == "rk45":
        shape = x_min.shape

        def ode_func(t, y):
            drift, _ = reverse_sde(ref, ve_model, torch.from_numpy(y.reshape(shape)), t, True)
            return drift.numpy().reshape(-1)

        solution = solve_ivp(ode_func, (1.0, 1e-5), x_min.numpy().reshape(-1), rtol=1e-5, atol=1e-5, method="RK45")
        return torch.from_numpy(solution.y[:, -1].reshape(shape))  # get_ode_sampler(denoise=False)
    predictor = {"em": "euler_maruyama", "rd": "reverse_diffusion", "pf_euler": "probability_flow"}[integrator]
    return pc_sampler(ve_model, ref, x_min, z, predictor=predictor, eps=1e-5)


def dmcmc_reference(model, clf, x_init, draws, *, integrator, levels, k, n_skip, eta, burn_in_eta, renoise, twd_eps):
    heads = torch.arange(0, x_init.shape[0], k)

    def chain_z():
        return next(draws)[heads]

    sigma_min, sigma_max = model.sigma_min, model.sigma_max
    ss = sigma_min * (sigma_max / sigma_min) ** torch.linspace(1.0, 1e-3, 1000, dtype=torch.float64)

    def get_sigma(x):
        return ss[clf(x).argmax(dim=1)]

    # chain initialisation: KAR2 with N = 20 from sigma_max, re-noise, Langevin-Gibbs at 0.5 then eta
    x = x_init[heads]
    s = torch.full((len(heads),), sigma_max, dtype=torch.float64)
    x = karras_alg2(model, x, s, 20, sigma_min, chain_z)
    x = x + renoise * chain_z()
    s = get_sigma(x)
    for step in [burn_in_eta] * 10 + [eta] * 10:
        x = x + 0.5 * step * model.score(x, s) + math.sqrt(step) * chain_z()
        s = get_sigma(x)
    # sampling rounds: n_skip Gibbs steps, keeping the smallest-noise state from the round's first one on
    outputs_x, outputs_s = [], []
    for _ in range(k):
        x_min, s_min = x.clone(), s.clone()
        for _ in range(n_skip):
            x = x + 0.5 * eta * model.score(x, s) + math.sqrt(eta) * chain_z()
            s = get_sigma(x)
            cond = s < s_min
            x_min = cond[:, None] * x + (~cond)[:, None] * x_min
            s_min = cond * s + (~cond) * s_min
        outputs_x.append(x_min)
        outputs_s.append(s_min)
    x_min = torch.stack(outputs_x, 1).flatten(0, 1)  # output j of chain c is row c k + j
    s_min = torch.stack(outputs_s, 1).flatten()
    x_den = dmcmc_integrate(integrator, model, x_min, s_min, levels, lambda: next(draws))
    # Tweedie's denoising formula
    return x_den + twd_eps**2 * model.score(x_den, torch.full_like(s_min, twd_eps))


class _AsVE(torch.nn.Module):
    """The VE view of a model, for the transcription (DMCMC is VE only)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.sigma_min, self.sigma_max = inner, inner.sigma_min, inner.sigma_max

    def forward(self, x, sigma):
        return self.inner(x, sigma)

    def score(self, x, sigma):
        return self.inner.score(x, sigma)


@pytest.mark.parametrize("name", ["gmm-64d-ve", "gmm-64d-vp"])
@pytest.mark.parametrize("integrator", ["kar1", "kar2", "rd", "em", "pf_euler", "rk45"])
def test_dmcmc_preset_is_the_notebooks_dlg(name, integrator):
    from models.noise_classifier import classifier_for

    model, k, chains, levels, n_skip = gmm(name), 3, 2, 4, 2
    batch = k * chains
    spec = SAMPLERS[f"dlg+{integrator}"]
    sigmas, _, x = start(model, f"dlg+{integrator}", levels, batch)
    clf = classifier_for(model)
    noise = Recorded(batch, model.shape)
    out = spec.fn(
        model, x, sigmas, noise, preset="dmcmc", n_skip=n_skip, outputs_per_chain=k, classifier=clf, **_rk45(integrator)
    )
    steps = default_steps(model)
    draws = iter(noise.calls)
    expect = dmcmc_reference(
        _AsVE(model),
        clf,
        x,
        draws,
        integrator=integrator,
        levels=levels,
        k=k,
        n_skip=n_skip,
        eta=steps["eta"],
        burn_in_eta=steps["burn_in_eta"],
        renoise=steps["renoise"],
        twd_eps=model.sigma_min,
    )
    assert next(draws, None) is None, "the sampler drew noise the notebook does not"
    assert rel_err(out, expect) < TIGHT
    plain = {"n_skip": n_skip, "outputs_per_chain": k, "classifier": clf}
    default = spec.fn(model, x, sigmas, Recorded(batch, model.shape), **plain)
    assert rel_err(default, expect) > 1e-6


def _rk45(integrator: str) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5} if integrator == "rk45" else {}


def test_dmcmc_preset_defaults_and_its_nfe():
    spec = SAMPLERS["dlg+kar2"]
    resolved = spec.resolve({"preset": "dmcmc"})
    assert (resolved["n_skip"], resolved["outputs_per_chain"], resolved["burn_in_steps"]) == (10, 250, 19)
    churn = (resolved["s_churn"], resolved["s_tmin"], resolved["s_tmax"], resolved["s_noise"])
    assert churn == (80.0, 0.05, 1.0, 1.007)
    assert SAMPLERS["dlg+rk45"].resolve({"preset": "dmcmc"})["denoise"] is False
    assert spec.resolve({"preset": "dmcmc", "n_skip": 3})["n_skip"] == 3  # what is given wins
    model = load_model("gmm-64d-ve")
    res = sample(model, "dlg+kar1", nfe=30, seeds=range(7), preset="dmcmc")
    # n_skip 10 + Heun's 2 L - 1 + the final denoising step, L = 10; one chain of 250 ran 7 rounds
    assert res.steps == 10 and res.nfe == res.declared_nfe == 10 + 19 + 1 == 30
    assert res.extras["classifier_evals"] == 10
    assert res.extras["burn_in_nfe"] == pytest.approx((2 * 19 - 1 + 20) / 7)


# --- kar2: Karras et al. 2022, Algorithm 2, in float64 ----------------------------------------------------------------
def edm_algorithm_2(model, x, n, z, s_churn, s_tmin, s_tmax, s_noise, sigma_min, sigma_max, rho=7.0):
    i = torch.arange(n, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, t.new_zeros(1)]).tolist()
    for i in range(n):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t[i] <= s_tmax else 0.0
        eps = s_noise * z()
        t_hat = t[i] + gamma * t[i]
        x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * eps
        d = (x_hat - model(x_hat, torch.full((x.shape[0],), t_hat, dtype=torch.float64))) / t_hat
        x_next = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x_next - model(x_next, torch.full((x.shape[0],), t[i + 1], dtype=torch.float64))) / t[i + 1]
            x_next = x_hat + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


@pytest.mark.parametrize("name", ["gmm-64d-ve", "gmm-64d-vp"])
def test_kar2_is_edm_algorithm_2_in_float64(name):
    model, n, batch = gmm(name), 12, 5
    sigmas, _, x = start(model, "kar2", n, batch)
    for hyper in ({}, {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.0}):
        noise = Recorded(batch, model.shape)
        out = SAMPLERS["kar2"].fn(model, x, sigmas, noise, **hyper)
        draws = iter(noise.calls)
        churn = {"s_churn": 30.0, "s_tmin": 0.01, "s_tmax": 1.0, "s_noise": 1.007, **hyper}
        expect = edm_algorithm_2(
            model, x, n, lambda d=draws: next(d), **churn, sigma_min=model.sigma_min, sigma_max=model.sigma_max
        )
        assert rel_err(out, expect) < 1e-12


# --- budgets: measured NFE never exceeds the budget -------------------------------------------------------------------
CASES = [(name, preset) for name, spec in SAMPLERS.items() for preset in (None, *spec.presets)]


@pytest.mark.parametrize(("sampler", "preset"), CASES)
def test_measured_nfe_never_exceeds_the_budget(sampler, preset):
    model = load_model("gmm-64d-vp")
    spec = SAMPLERS[sampler]
    hyper = {} if preset is None else {"preset": preset}
    for n in (1, 7, 30):
        for budget in (11, 20):
            try:
                res = sample(model, sampler, nfe=budget, seeds=range(n), **hyper)
            except ValueError as err:
                assert "below the minimum" in str(err), str(err)
                continue
            assert res.nfe <= budget, f"{sampler} preset={preset}: {res.nfe} NFE with {n} samples, budget {budget}"
            if not spec.adaptive:
                assert res.nfe == res.declared_nfe


def test_dlg_with_a_partial_last_chain_keeps_its_budget():
    """30 samples in chains of 8: the last chain stops after its sixth output instead of paying for eight."""
    model = load_model("gmm-64d-ve")
    res = sample(model, "dlg+kar1", nfe=11, seeds=range(30))
    assert res.nfe == res.declared_nfe == 2 + (2 * 5 - 1) == 11
    assert res.extras["classifier_evals"] == 2


def test_presets_a_sampler_does_not_have_are_one_value_error():
    model = load_model("gmm-64d-ve")
    with pytest.raises(ValueError, match="no preset 'score_sde'; its presets: none"):
        sample(model, "kar1", nfe=10, seeds=range(2), preset="score_sde")
    with pytest.raises(ValueError, match="no preset 'ncsnv2'; its presets: 'score_sde'"):
        sample(model, "em", nfe=10, seeds=range(2), preset="ncsnv2")
    with pytest.raises(ValueError, match="its presets: 'dmcmc'"):
        sample(model, "dlg+em", nfe=10, seeds=range(2), preset="score_sde")
    sigmas, _, x = start(model, "em", 4, 2)
    for name, bad in (("em", "dmcmc"), ("rk45", "x"), ("ald", "score_sde"), ("dlg+kar1", "ncsnv2")):
        with pytest.raises(ValueError, match="its presets"):
            SAMPLERS[name].fn(model, x, sigmas, preset=bad)
    with pytest.raises(ValueError, match="eps"):
        SAMPLERS["em"].fn(model, x, sigmas, eps=1e-3)
    with pytest.raises(ValueError, match="twd_eps"):
        SAMPLERS["dlg+kar1"].fn(model, x, sigmas, twd_eps=1e-2)


def test_the_cli_passes_a_preset_through(tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "grid.png"
    args = ["sample", "digits-ve", "--sampler", "pc", "--nfe", "12", "--n", "4", "--out", str(out)]
    assert main([*args, "--threads", "1", "--hyper", "preset=score_sde"]) == 0
    assert out.is_file() and "12 NFE per sample" in capsys.readouterr().out
    assert main([*args, "--hyper", "preset=ncsnv2"]) == 2
    assert "its presets: 'score_sde'" in capsys.readouterr().err


def test_seeded_noise_skip_passes_over_draws_exactly():
    drawn, skipped = SeededNoise(range(3), (5,)), SeededNoise(range(3), (5,))
    for n in (1, 3, 40, 0, 31, 2):
        for _ in range(n):
            drawn()
        skipped.skip(n)
        torch.testing.assert_close(skipped(), drawn(), rtol=0, atol=0)


SUITE = """
[suite]
seed = 3
n_samples = 24
batch_size = 24
budgets = [50]  # pc: 25 levels (score_sde's VP discretisation needs more than 20)

[[models]]
spec = "gmm-2d-vp"

[samplers.pc-upstream]
sampler = "pc"
preset = "score_sde"

[samplers.dlg-dmcmc]
sampler = "dlg+kar1"
preset = "dmcmc"
"""


def test_a_suite_passes_presets_through(tmp_path, capsys):
    import json

    from bench.cli import main

    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "run"), "--no-report", "--threads", "1"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert {r["sampler"]: r["hyper"]["preset"] for r in records} == {"pc-upstream": "score_sde", "dlg-dmcmc": "dmcmc"}
    for r in records:
        assert r["status"] == "ok" and r["nfe"] <= 50, r
    suite.write_text(SUITE.replace('preset = "dmcmc"', 'preset = "score_sde"'))
    assert main(["run", str(suite), "--out", str(tmp_path / "bad"), "--no-report"]) == 2
    assert "its presets: 'dmcmc'" in capsys.readouterr().err
