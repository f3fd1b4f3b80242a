"""Processes, the exact mixture denoiser and the network wrappers, checked against closed forms and diffusers."""

import math

import pytest
import torch

from models import (
    MODELS,
    CountingDenoiser,
    DDPMProcess,
    GaussianMixture,
    GMMDenoiser,
    NetworkDenoiser,
    VEProcess,
    VPProcess,
    load_model,
)
from models.gmm import gmm_2d, gmm_64d

PROCESSES = [VEProcess(0.01, 50.0), VPProcess(), DDPMProcess()]


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda p: p.describe())
def test_sigma_and_time_are_inverse(sde):
    t = torch.linspace(sde.t_min, sde.t_max, 257, dtype=torch.float64)
    assert torch.allclose(sde.t(sde.sigma(t)), t, rtol=0, atol=1e-12)
    sigma = torch.logspace(math.log10(sde.sigma_min), math.log10(sde.sigma_max), 101, dtype=torch.float64)
    assert torch.allclose(sde.sigma(sde.t(sigma)), sigma, rtol=1e-10)
    assert bool((sde.sigma(t)[1:] > sde.sigma(t)[:-1]).all()), "sigma(t) must increase"


def test_vp_processes_match_their_definitions():
    vp = VPProcess()
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    # score_sde: mean coefficient exp(-t^2 (b1 - b0) / 4 - t b0 / 2) = sqrt(alpha_bar)
    expected = torch.exp(-0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1)
    assert torch.allclose(vp.scale(t), expected, rtol=1e-12)
    assert torch.allclose(vp.beta(t), 0.1 + t * 19.9)
    # beta = -d log alpha_bar / dt, checked by finite differences on the discrete process too
    for sde in (vp, DDPMProcess()):
        tm = torch.tensor([0.3101, 0.7203], dtype=torch.float64)
        h = 1e-7
        fd = -(sde.log_alpha_bar(tm + h) - sde.log_alpha_bar(tm - h)) / (2 * h)
        assert torch.allclose(fd, sde.beta(tm), rtol=1e-5)


def test_ddpm_alpha_bar_matches_diffusers():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    ddpm = DDPMProcess()
    k = torch.arange(1000)
    ours = torch.exp(ddpm.log_alpha_bar((k + 1) / 1000.0))
    assert torch.allclose(ours, sched.alphas_cumprod.double(), rtol=2e-5)
    assert torch.allclose(ddpm.index(ddpm.t(ddpm.sigma((k + 1) / 1000.0))), k.double(), atol=1e-9)


def test_mixture_denoiser_is_the_exact_score():
    mixture = gmm_2d()
    model = GMMDenoiser(mixture, VEProcess(), dtype=torch.float64)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for s in (0.02, 0.3, 4.0):
        sigma = torch.full((64,), s, dtype=torch.float64)
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mixture.log_prob(xr, sigma).sum(), xr)
        assert torch.allclose(model.score(x, sigma), grad, rtol=1e-9, atol=1e-9)


def test_mixture_samples_have_the_exact_moments():
    mixture = gmm_64d()
    x, labels = mixture.sample(200_000, torch.Generator().manual_seed(1))
    assert torch.allclose(x.mean(0), mixture.mean(), atol=0.01)
    assert torch.allclose(torch.cov(x.T), mixture.cov(), atol=0.01)
    counts = torch.bincount(labels, minlength=mixture.n_components).double() / labels.numel()
    assert torch.allclose(counts, mixture.weights, atol=0.005)


@pytest.mark.parametrize("make", [gmm_2d, gmm_64d], ids=["gmm-2d", "gmm-64d"])
def test_level_posterior_matches_bayes_rule_and_finds_the_level(make):
    """gmm-2d's components have distinct eigenvalues; gmm-64d's share a 58-fold isotropic one, which the posterior
    sums over as one group: both must equal Bayes' rule over the per-level log-densities."""
    mixture = make()
    if make is gmm_64d:
        assert mixture.group_member.shape[-1] == 7  # rank 6 + the isotropic part
    grid = torch.logspace(-2, 1, 60, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x0, _ = mixture.sample(500, gen)
    true_level = torch.randint(0, 60, (500,), generator=gen)
    x = x0 + grid[true_level, None] * torch.randn(500, mixture.dim, dtype=torch.float64, generator=gen)
    post = mixture.level_log_posterior(x, grid)
    brute = torch.log_softmax(torch.stack([mixture.log_prob(x, s) for s in grid], 1), 1)
    assert torch.allclose(post, brute, rtol=1e-9, atol=1e-9)
    # the posterior mean level tracks the truth (2-d carries little information per sample: a loose check)
    mean_level = (post.exp() * torch.arange(60)).sum(1)
    assert torch.corrcoef(torch.stack([mean_level, true_level.double()]))[0, 1] > 0.9


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda p: p.describe())
@pytest.mark.parametrize("prediction", ["eps", "score", "x0", "v"])
def test_wrappers_convert_every_prediction_to_the_denoiser(sde, prediction):
    """A 'network' built from the exact denoiser, in native coordinates, must come back as that denoiser."""
    if prediction == "v" and sde.name != "vp":
        pytest.skip("v-prediction is VP-only")
    exact = GMMDenoiser(gmm_2d(), sde, dtype=torch.float64)
    conditioning = "index" if isinstance(sde, DDPMProcess) else ("sigma" if sde.name == "ve" else "t999")

    def net(x_native, cond):
        t = {"index": lambda: (cond + 1) / sde.T, "t999": lambda: cond / 999, "sigma": lambda: sde.t(cond)}[
            conditioning
        ]()
        s, sigma = sde.scale(t)[:, None], sde.sigma(t)[:, None]
        x_ve = x_native / s
        d = exact(x_ve, sigma[:, 0])
        eps = (x_ve - d) / sigma
        return {
            "eps": eps,
            "score": (d - x_ve) / sigma**2 / s,
            "x0": d,
            "v": s * eps - torch.sqrt(1 - s**2) * d,
        }[prediction]

    wrapped = NetworkDenoiser(net, sde, prediction=prediction, conditioning=conditioning, shape=(2,))
    x = torch.randn(16, 2, dtype=torch.float64)
    sigma = torch.logspace(-1.5, 1.5, 16, dtype=torch.float64)
    assert torch.allclose(wrapped(x, sigma), exact(x, sigma), rtol=1e-7, atol=1e-8)


def test_counting_denoiser_counts_rows_and_calls():
    model = CountingDenoiser(load_model("gmm-2d"))
    sigma = torch.ones(5, dtype=torch.float64)
    model(torch.zeros(5, 2), sigma)
    model(torch.zeros(3, 2), sigma[:3])
    assert (model.calls, model.evals) == (2, 8)
    assert model.mixture is model.inner.mixture and model.process == "ve"


def test_every_builtin_model_loads_and_denoises():
    for name in MODELS:
        model = load_model(name)
        x = torch.randn(4, *model.shape)
        out = model(x, torch.full((4,), model.sigma_max, dtype=torch.float64))
        assert out.shape == x.shape and bool(torch.isfinite(out).all()), name


@pytest.mark.parametrize("spec", ["no-such-model", "diffusers", ""])
def test_unknown_model_is_a_value_error(spec):
    with pytest.raises(ValueError, match="model"):
        load_model(spec)


def test_invalid_mixture_and_process_parameters_are_value_errors():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.5, 0.6], [[0.0], [1.0]], [[[1.0]], [[1.0]]])
    with pytest.raises(ValueError, match="shapes"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0]]])
    with pytest.raises(ValueError, match="sigma_min"):
        VEProcess(1.0, 0.5)
