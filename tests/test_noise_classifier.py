"""Noise-level classifiers: the grid, the exact posterior, a learned classifier's accuracy, files and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.train_classifier import data_source, level_errors, train_noise_classifier
from models import load_model
from models.noise_classifier import (
    ExactNoiseClassifier,
    LearnedNoiseClassifier,
    build_classifier_net,
    classifier_for,
    load_noise_classifier,
    noise_grid,
)
from samplers import sample


def test_grid_is_the_reference_geometric_grid():
    grid = noise_grid(0.01, 50.0)
    t = torch.linspace(1.0, 1e-3, 1000, dtype=torch.float64)
    torch.testing.assert_close(grid, 0.01 * 5000.0**t)
    assert grid[0] == 50.0 and bool((grid.diff() < 0).all()) and grid[-1] > 0.01
    with pytest.raises(ValueError):
        noise_grid(1.0, 0.5)


@pytest.mark.parametrize("name", ["gmm-2d-ve", "gmm-64d-vp"])
def test_exact_classifier_is_bayes_rule_over_the_perturbed_densities(name):
    model = load_model(name)
    grid = noise_grid(model.sigma_min, model.sigma_max, 40)
    clf = classifier_for(model, n_levels=40)
    assert isinstance(clf, ExactNoiseClassifier) and torch.equal(clf.sigmas, grid)
    x0, _ = model.mixture.sample(16, torch.Generator().manual_seed(0))
    x = x0 + grid[torch.arange(16) * 2][:, None] * torch.randn(x0.shape, dtype=torch.float64)
    log_lik = torch.stack([model.mixture.log_prob(x, float(s)) for s in grid], 1)
    torch.testing.assert_close(clf(x), torch.log_softmax(log_lik, 1))


def test_learned_classifier_trained_on_mixture_samples_finds_the_noise_level():
    """An MLP trained on gmm-64d samples (100 levels over sigma 0.01..50) against the exact posterior (Bayes)."""
    model = load_model("gmm-64d-ve")
    draw, shape, heldout = data_source("gmm-64d")
    clf = LearnedNoiseClassifier.create("mlp", shape, model.sigma_min, model.sigma_max, 100, width=128)
    train_noise_classifier(clf, draw, steps=800, batch_size=256)
    exact = classifier_for(model, "exact", n_levels=100)
    learned_all, bayes_all = level_errors(clf, heldout), level_errors(exact, heldout)
    learned, bayes = level_errors(clf, heldout, sigma_low=0.1), level_errors(exact, heldout, sigma_low=0.1)
    print(
        f"\nlevel error at held-out sigmas, 100 levels: learned median {learned_all.float().median():g}, "
        f"within 3 levels {(learned_all <= 3).float().mean():.1%} (exact {(bayes_all <= 3).float().mean():.1%}); "
        f"sigma >= 0.1: learned within 3 {(learned <= 3).float().mean():.1%}, "
        f"mean {learned.float().mean():.2f} (exact {(bayes <= 3).float().mean():.1%}, {bayes.float().mean():.2f})"
    )
    assert learned_all.float().median() <= 2
    assert (learned <= 3).float().mean() >= 0.85
    assert learned.float().mean() <= 2.5 * bayes.float().mean()


def test_cli_trains_saves_and_dlg_loads_a_classifier(tmp_path, capsys):
    out = tmp_path / "clf"
    args = "--data gmm-2d --model gmm-2d-ve --levels 50 --steps 30 --width 32 --out".split()
    code = main(["train", "classifier", *args, str(out)])
    assert code == 0 and "saved" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["levels"] == 50 and config["sigma_max"] == 50.0 and config["training"]["steps"] == 30
    clf = load_noise_classifier(out)
    assert clf.n_levels == 50 and clf(torch.zeros(3, 2)).shape == (3, 50)
    res = sample("gmm-2d-ve", "dlg+kar1", nfe=20, seeds=range(8), classifier=str(out))
    assert bool(res.x.isfinite().all()) and res.extras["classifier_evals"] == 2
    with pytest.raises(ValueError, match="shape"):
        sample("gmm-64d-ve", "dlg+kar1", nfe=20, seeds=range(8), classifier=str(out))
    # user errors: one line, exit 2, nothing written
    (out / "notes.txt").write_text("mine")  # a classifier directory may be replaced, but not with a user's file in it
    assert main(["train", "classifier", "--data", "gmm-2d", "--steps", "1", "--out", str(out)]) == 2
    assert (out / "notes.txt").read_text() == "mine" and json.loads((out / "config.json").read_text()) == config
    assert main(["train", "classifier", "--data", "cifar", "--out", str(tmp_path / "x")]) == 2
    assert "unknown training data" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="not a noise-classifier directory"):
        load_noise_classifier(tmp_path)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_cnn_classifier_takes_images(shape):
    net = build_classifier_net("cnn", shape, 1000)
    assert net(torch.randn(2, *shape)).shape == (2, 1000)
    with pytest.raises(ValueError, match="image"):
        build_classifier_net("cnn", (64,), 10)


def test_the_shipped_digits_classifier_is_found_for_digits_models_and_reads_the_noise_level():
    from models import NetworkDenoiser, VEProcess

    model = NetworkDenoiser(
        lambda x, c: torch.zeros_like(x), VEProcess(0.01, 10.0), prediction="x0", conditioning="sigma", shape=(1, 8, 8)
    )
    model.dataset = "digits"
    clf = classifier_for(model)
    assert isinstance(clf, LearnedNoiseClassifier) and clf.config["dataset"] == "digits" and clf.n_levels == 1000
    _, _, heldout = data_source("digits")
    errors = level_errors(clf, heldout, sigma_low=0.3).float()  # where DLG's chains live on data in [-1, 1]
    assert errors.median() <= 10 and (errors <= 20).float().mean() >= 0.85
    res = sample(model, "dlg+kar1", nfe=15, seeds=range(8), n_skip=2)  # the plumbing, on a trivial denoiser
    assert res.x.shape == (8, 1, 8, 8) and res.extras["classifier_evals"] == 2
