"""DLG (Kim & Ye 2023): hand-off at each sample's own sigma, honest NFE accounting, batch invariance, VE and VP."""

from __future__ import annotations

import math

import pytest
import torch

from models import MODELS, CountingDenoiser, Denoiser, load_model
from models.base import counting_as, tally
from models.noise_classifier import ExactNoiseClassifier, noise_grid
from samplers import SAMPLERS, SeededNoise, make_schedule, sample
from samplers.dlg import INTEGRATORS, default_steps, dlg, draw_level
from samplers.schedules import WARPS, karras, restart, uniform_t

DLG = [f"dlg+{name}" for name in INTEGRATORS]
BURN_IN_NFE = (2 * 20 - 1) + 10 + 10  # KAR2 at 20 levels, then 10 + 10 Langevin-Gibbs iterations, per chain
BURN_IN_CLASSIFIER = 1 + 10 + 10


class Recorder(Denoiser):
    """Logs every evaluation (x, sigma) of the model it wraps (not a counter: it sees burn-in too)."""

    def __init__(self, inner: Denoiser):
        super().__init__(shape=inner.shape, sde=inner.sde, data_range=inner.data_range, name=inner.name)
        self.inner = inner
        self.mixture = inner.mixture
        self.log: list[tuple[torch.Tensor, torch.Tensor]] = []

    def denoise(self, x, sigma):
        self.log.append((x.clone(), sigma.clone()))
        return self.inner(x, sigma)


class RecordingClassifier(ExactNoiseClassifier):
    """The exact posterior, logging every input it classifies."""

    def __init__(self, model, n_levels=1000):
        super().__init__(model.mixture, noise_grid(model.sigma_min, model.sigma_max, n_levels))
        self.seen: list[torch.Tensor] = []

    def log_posterior(self, x):
        self.seen.append(x.clone())
        return super().log_posterior(x)


def _run_recorded(name: str, integrator: str, *, batch=12, k=4, n_skip=3, steps=4):
    model = Recorder(load_model(name))
    clf = RecordingClassifier(model)
    x = SeededNoise(range(batch), model.shape, stream=0)() * model.sigma_max
    spec = SAMPLERS[integrator]
    template = make_schedule(spec.schedule, model, steps)
    out = dlg(
        model,
        x,
        template,
        SeededNoise(range(batch), model.shape),
        integrator=spec,
        n_skip=n_skip,
        outputs_per_chain=k,
        classifier=clf,
    )
    return model, clf, out


@pytest.mark.parametrize("name, integrator", [("gmm-2d-ve", "kar1"), ("gmm-2d-vp", "pf_euler")])
def test_handoff_starts_each_sample_at_its_own_smallest_visited_sigma(name, integrator):
    batch, k, n_skip = 12, 4, 3
    model, clf, out = _run_recorded(name, integrator, batch=batch, k=k, n_skip=n_skip)
    chains = batch // k
    # the classifier saw, per chain, the burn-in states and then k rounds of n_skip visited states
    visited = torch.stack(clf.seen[-k * n_skip :])  # [k * n_skip, chains, d]
    levels = torch.stack([clf(v).argmax(1) for v in visited]).view(k, n_skip, chains)
    sigmas = clf.sigmas[levels]  # the sigma of each visited state
    best = sigmas.argmin(1)  # first state of smallest sigma in each round [k, chains]
    expect_sigma = sigmas.gather(1, best[:, None]).squeeze(1).T.reshape(-1)  # rows: chain-major
    expect_x = visited.view(k, n_skip, chains, -1)[torch.arange(k)[:, None], best, torch.arange(chains)]
    expect_x = expect_x.transpose(0, 1).reshape(batch, -1)
    # the integrator's first model evaluation is the first one over the whole batch
    first = next(i for i, (x, _) in enumerate(model.log) if x.shape[0] == batch)
    x_in, sigma_in = model.log[first]
    assert len(set(expect_sigma.tolist())) > 3, "chains should hand off at different noise levels"
    assert bool((expect_sigma < model.sigma_max).all())
    if model.process == "ve":  # kar1 evaluates D(x, sigma_0) at each sample's own first level
        torch.testing.assert_close(sigma_in, expect_sigma, rtol=1e-12, atol=0)
        torch.testing.assert_close(x_in, expect_x.float(), rtol=0, atol=0)
    else:  # pf_euler on VP: to native time t(sigma) and back, exact up to rounding
        torch.testing.assert_close(sigma_in, expect_sigma, rtol=1e-9, atol=0)
        torch.testing.assert_close(x_in, expect_x.float(), rtol=1e-5, atol=1e-6)
    assert out.shape == (batch, *model.shape) and bool(out.isfinite().all())


def test_handoff_schedules_keep_the_integrators_shape_from_each_start():
    model = load_model("gmm-2d-ve")
    start = torch.tensor([3.0, 0.5, 0.02], dtype=torch.float64)
    rows = restart(karras(model.sigma_min, model.sigma_max, 7), start, WARPS["karras"](model))
    for row, s in zip(rows, start, strict=True):
        torch.testing.assert_close(row, karras(model.sigma_min, float(s), 7), rtol=1e-12, atol=0)
    vp = load_model("gmm-2d-vp")
    rows = restart(uniform_t(vp.sde, 6), start, WARPS["native"](vp))
    t = vp.sde.t(rows[:, :-1])
    torch.testing.assert_close(t[:, 0], vp.sde.t(start))
    torch.testing.assert_close(t.diff(dim=1), t[:, 1:2] - t[:, :1] + 0 * t.diff(dim=1))  # uniform in t per row
    assert torch.isclose(rows[:, -2], torch.tensor(vp.sigma_min, dtype=torch.float64)).all()
    low = restart(karras(0.01, 50, 5), torch.tensor([0.005]), WARPS["karras"](model))
    assert bool((low[0, 1:] < low[0, :-1]).all()) and low[0, -1] == 0


@pytest.mark.parametrize("name", ["gmm-2d-ve", "gmm-2d-vp"])
@pytest.mark.parametrize("sampler", DLG)
def test_every_dlg_runs_and_its_measured_nfe_is_n_skip_plus_the_integrators(name, sampler):
    model = load_model(name)
    spec = SAMPLERS[sampler]
    n_skip, k, n = 3, 4, 8
    budget, tol = (200, {"rtol": 1e-3, "atol": 1e-3}) if spec.adaptive else (12, {})
    recorder = Recorder(model)
    res = sample(recorder, sampler, nfe=budget, seeds=range(n), n_skip=n_skip, outputs_per_chain=k, **tol)
    assert res.x.shape == (n, 2) and bool(res.x.isfinite().all())
    assert res.nfe <= budget
    # every row the network evaluated, by phase (the runner's 2-row warm-up excluded); chains are the small batches
    rows = [x.shape[0] for x, _ in recorder.log[1:]]
    total = sum(rows)
    assert total == n * (res.nfe + res.extras["burn_in_nfe"])
    assert res.extras["burn_in_nfe"] == pytest.approx(BURN_IN_NFE / k)
    assert res.extras["burn_in_classifier_evals"] == pytest.approx(BURN_IN_CLASSIFIER / k)
    assert res.extras["classifier_evals"] == n_skip
    integrator_rows = sum(r for r in rows if r == n)
    assert res.nfe == n_skip + integrator_rows / n
    if not spec.adaptive:
        integrator = SAMPLERS[sampler.removeprefix("dlg+")]
        assert res.nfe == res.declared_nfe == n_skip + integrator.nfe(res.steps, **res.hyper)


def test_budget_picks_integrator_steps_and_rk45_sweeps_tolerances():
    model = load_model("gmm-2d-ve")
    res = sample(model, "dlg+kar1", nfe=20, seeds=range(8))
    assert res.steps == 9 and res.nfe == 2 + (2 * 9 - 1) == 19  # default n_skip = 2; Heun NFE is odd
    res = sample(model, "dlg+rk45", nfe=60, seeds=range(8))
    assert res.steps is None and res.nfe <= 60 and "rtol" in res.hyper
    with pytest.raises(ValueError, match="below the minimum"):
        sample(model, "dlg+kar1", nfe=4, seeds=range(8))  # n_skip 2 + Heun's 3 at least


def test_samples_do_not_depend_on_the_batch_and_partial_chains_keep_the_budget():
    model = load_model("gmm-2d-ve")
    full = sample(model, "dlg+kar2", nfe=20, seeds=range(24), batch_size=24)
    for batch_size in (8, 5):  # 5 is rounded to one whole chain of 8
        part = sample(model, "dlg+kar2", nfe=20, seeds=range(24), batch_size=batch_size)
        torch.testing.assert_close(part.x, full.x, rtol=1e-5, atol=1e-6)
    some = sample(model, "dlg+kar2", nfe=20, seeds=[17, 5, 6])
    torch.testing.assert_close(some.x, full.x[[17, 5, 6]], rtol=1e-5, atol=1e-6)
    # chain 0 stops after output 6 and chain 2 after output 1; only the three requested outputs are integrated, and
    # the Gibbs rounds of the outputs before them (0-4 of chain 0, 0 of chain 2) are those chains' warm-up
    assert some.nfe == full.nfe == some.declared_nfe
    warm_up = (5 + 1) * 2  # rounds times n_skip
    assert some.extras["burn_in_nfe"] * 3 == pytest.approx(2 * BURN_IN_NFE + warm_up)
    assert some.extras["burn_in_classifier_evals"] * 3 == pytest.approx(2 * BURN_IN_CLASSIFIER + warm_up)
    assert some.extras["classifier_evals"] == 2
    other = sample(model, "dlg+kar2", nfe=20, seeds=range(24), seed=1)
    assert not torch.allclose(other.x, full.x)
    # chains differ, and a chain's consecutive outputs are distinct samples
    assert len({tuple(r.tolist()) for r in full.x}) == 24


def test_gibbs_mode_draws_levels_from_the_posterior():
    log_post = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)).expand(10_000, -1)
    u = (torch.arange(10_000, dtype=torch.float64) + 0.5) / 10_000
    counts = torch.bincount(draw_level(log_post, u), minlength=4)
    assert counts.tolist() == [1000, 2000, 3000, 4000]
    model = load_model("gmm-2d-ve")
    a = sample(model, "dlg+kar1", nfe=20, seeds=range(16), mode="gibbs")
    b = sample(model, "dlg+kar1", nfe=20, seeds=range(16), mode="gibbs", batch_size=8)
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)
    assert a.extras["classifier_evals"] == 2


def test_step_sizes_scale_with_the_data_range_and_bad_hyper_parameters_are_rejected():
    model = load_model("gmm-2d-ve")
    assert default_steps(model) == pytest.approx({"eta": 3.2, "burn_in_eta": 2.0, "renoise": 1.0})
    model.data_range = (0.0, 1.0)
    assert default_steps(model) == pytest.approx({"eta": 0.8, "burn_in_eta": 0.5, "renoise": 0.5})
    for bad in ({"n_skip": 0}, {"mode": "mean"}, {"eta": -1.0}, {"outputs_per_chain": 0}):
        with pytest.raises(ValueError):
            sample("gmm-2d-ve", "dlg+kar1", nfe=20, seeds=range(8), **bad)
    with pytest.raises(ValueError, match="classifier"):
        sample("gmm-2d-ve", "dlg+kar1", nfe=20, seeds=range(8), classifier="/nonexistent")


def test_dlg_beats_plain_heun_at_ten_nfe_on_gmm_64d():
    """Not a property of DLG in general; a regression check of a measured finding (results/dlg)."""
    from bench.metrics import compute_metrics

    model = load_model("gmm-64d-ve")
    plain = compute_metrics(model, sample(model, "kar1", nfe=10, seeds=range(256)).x)["fd_exact"]
    chain = compute_metrics(model, sample(model, "dlg+kar1", nfe=10, seeds=range(256)).x)["fd_exact"]
    assert chain < plain / 2


def test_counting_as_and_tally_book_work_apart_on_every_counter():
    inner = CountingDenoiser(load_model("gmm-2d-ve"))
    outer = CountingDenoiser(inner)
    x, s = torch.zeros(3, 2), torch.ones(3, dtype=torch.float64)
    outer(x, s)
    with counting_as(outer, "burn_in_nfe"):
        outer(x, s)
        tally(outer, "classifier_evals", 3)
    outer(x, s)
    for c in (outer, inner):
        assert c.evals == 6 and c.calls == 3
        assert c.extras == {"burn_in_nfe": 3, "classifier_evals": 3}
    plain = load_model("gmm-2d-ve")
    with counting_as(plain, "x"):
        tally(plain, "y", 1)  # no counter: nothing to book, nothing breaks


@pytest.mark.parametrize("name", [m for m in ("digits-ve", "digits-vp") if m in MODELS])
@pytest.mark.parametrize("sampler", DLG)
def test_every_dlg_runs_on_the_digits_checkpoints(name, sampler):
    model = load_model(name)
    budget, tol = (200, {"rtol": 1e-2, "atol": 1e-2}) if SAMPLERS[sampler].adaptive else (15, {})
    res = sample(model, sampler, nfe=budget, seeds=range(8), n_skip=2, **tol)
    assert res.x.shape == (8, *model.shape) and bool(res.x.isfinite().all())
    assert res.nfe <= budget and res.extras["classifier_evals"] == 2
    if not SAMPLERS[sampler].adaptive:
        assert res.nfe == res.declared_nfe
    assert math.isfinite(res.extras["burn_in_nfe"])
