"""Metrics: torch-fidelity FD/KD/PRC in the shipped classifier's, Inception's and the raw data's features, the
reference cache, exact mixture metrics, half-sample intervals."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import linalg

from bench import fidelity
from bench.data import load_dataset
from bench.features import checkpoint_dir, images_to_unit, load_classifier
from bench.fidelity import make_reference, to_uint8
from bench.metrics import _mixture_constants, compute_metrics, default_metrics, exact_metrics
from models import GaussianMixture, load_model

DIGITS = SimpleNamespace(name="digits-data", dataset="digits", data_range=(-1.0, 1.0), shape=(1, 8, 8))
FD_DIGITS = ("fd_digits", "kd_digits", "kd_digits_std", "precision_digits", "recall_digits")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def noise_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


# --- feature-space metrics on digits ----------------------------------------------------------------------------------
def test_fd_digits_small_between_real_halves_and_large_against_noise(digits, cache):
    a, b = digits.train[::2], digits.train[1::2]
    real = compute_metrics(DIGITS, a, FD_DIGITS, reference=b, cache_dir=cache)
    noise = compute_metrics(DIGITS, noise_images(len(a)), FD_DIGITS, reference=b, cache_dir=cache)
    assert real["n"] == len(a) and real["n_ref"] == len(b)
    assert 0 < real["fd_digits"] < 5 < 10 * real["fd_digits"] < noise["fd_digits"]
    assert abs(real["kd_digits"]) < 0.05 and noise["kd_digits"] > 1
    assert real["precision_digits"] > 0.8 and real["recall_digits"] > 0.8
    assert noise["precision_digits"] < 0.1 and noise["recall_digits"] < 0.1


def test_fd_digits_invariant_to_shuffling_and_matches_float64_numpy(digits, cache):
    x, ref = noise_images(300, seed=1) * 0.3 + digits.heldout[:300].repeat(1, 1, 1, 1) * 0.7, digits.train
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    names = ("fd_digits", "precision_digits", "recall_digits")
    plain = compute_metrics(DIGITS, x, names, cache_dir=cache)
    shuffled = compute_metrics(DIGITS, x[perm], names, cache_dir=cache)
    assert shuffled["fd_digits"] == pytest.approx(plain["fd_digits"], rel=1e-6)
    assert shuffled["precision_digits"] == plain["precision_digits"]
    assert shuffled["recall_digits"] == plain["recall_digits"]

    # independent float64 reference: the classifier's features, numpy moments, scipy's matrix square root
    net, config = load_classifier(checkpoint_dir("digits"))
    with torch.no_grad():
        f1, f2 = (
            net.features(images_to_unit(to_uint8(t, (-1, 1)), config["image_size"])).double().numpy() for t in (x, ref)
        )
    mu1, mu2, c1, c2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    fd = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert plain["fd_digits"] == pytest.approx(fd, rel=1e-6)


def test_reference_cache_hit_then_invalidated_by_a_data_change(digits, cache, monkeypatch):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    fidelity.register_extractors()
    cls = FEATURE_EXTRACTORS_REGISTRY["scorebench-digits"]
    rows = []
    forward = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, x: rows.append(len(x)) or forward(self, x))
    x, ref = digits.heldout, digits.train[:1000].clone()

    def extracted(reference):
        rows.clear()
        values = compute_metrics(DIGITS, x, FD_DIGITS, reference=reference, cache_dir=cache)
        return sum(rows), values

    first_rows, first = extracted(ref)
    second_rows, second = extracted(ref)
    assert first_rows == len(x) + len(ref)  # samples and reference extracted
    assert second_rows == len(x)  # reference read from the cache
    assert second == first
    ref[0, 0, 0, 0] = -ref[0, 0, 0, 0] + 0.5  # one pixel of the reference changes -> a different cache key
    changed_rows, _ = extracted(ref)
    assert changed_rows == len(x) + len(ref)
    assert len(list((cache / "fidelity").glob("*-scorebench-digits-features-features.pt"))) == 2


def test_shipped_dataset_is_the_default_reference(digits, cache):
    values = compute_metrics(DIGITS, digits.heldout, cache_dir=cache)
    assert tuple(values) == ("n", "fd_digits", "kd_digits", "precision_digits", "recall_digits", "n_ref")
    assert values["n_ref"] == len(digits.train)
    assert values["fd_digits"] < 5  # the real-data floor: held-out vs training digits


def test_folder_and_npz_references_equal_the_tensor(digits, cache, tmp_path):
    from PIL import Image

    ref = digits.train[:200]
    u8 = to_uint8(ref, (-1, 1))
    folder = tmp_path / "ref"
    folder.mkdir()
    for i, img in enumerate(u8[:, 0].numpy()):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    np.savez(tmp_path / "ref.npz", images=u8.permute(0, 2, 3, 1).numpy())  # [N, H, W, C]
    x = digits.heldout[:100]
    by = {
        name: compute_metrics(DIGITS, x, ("fd_digits",), reference=r, cache_dir=cache)["fd_digits"]
        for name, r in (("tensor", ref), ("folder", folder), ("npz", tmp_path / "ref.npz"))
    }
    assert by["folder"] == pytest.approx(by["tensor"], rel=1e-6)
    assert by["npz"] == pytest.approx(by["tensor"], rel=1e-6)
    assert make_reference(folder).n == 200


def test_to_uint8_quantises_and_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5)
    assert to_uint8(x, (-1, 1)).flatten().tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3), (0, 1)).flatten().tolist() == [0, 128, 255]


def test_user_errors_are_value_errors(digits, cache):
    with pytest.raises(ValueError, match="unknown metric 'fid_digits'"):
        compute_metrics(DIGITS, digits.heldout, ["fid_digits"])
    with pytest.raises(ValueError, match="need an analytic model"):
        compute_metrics(DIGITS, digits.heldout, ["fd_exact"])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(DIGITS, torch.full((10, 1, 8, 8), float("nan")), ["fd_digits"], cache_dir=cache)
    cifar = SimpleNamespace(name="cifar", dataset=None, data_range=(-1.0, 1.0), shape=(3, 32, 32))
    assert default_metrics(cifar) == ("fid", "kid", "precision", "recall")
    with pytest.raises(ValueError, match="--reference"):
        compute_metrics(cifar, torch.zeros(10, 3, 32, 32), ["fid"], cache_dir=cache)
    with pytest.raises(ValueError, match="neither a folder"):
        make_reference("/nonexistent/ref.npz")


# --- Inception (FID) path ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A torch-fidelity Inception-v3 weights file of the right layout with random weights (no network)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inc, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
        torch.manual_seed(0)
        net = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_path_runs_from_a_local_weights_file(digits, cache, inception_weights):
    names = ("fid", "kid", "kid_std", "precision", "recall")
    ref = digits.train[:5]
    same = compute_metrics(DIGITS, ref, names, reference=ref, inception_weights=inception_weights, cache_dir=cache)
    other = compute_metrics(
        DIGITS, noise_images(5), names, reference=ref, inception_weights=inception_weights, cache_dir=cache
    )
    assert all(math.isfinite(v) for v in [*same.values(), *other.values()])
    assert abs(same["fid"]) < 1e-3 * other["fid"]  # identical sets: FD 0 up to round-off
    assert same["precision"] == same["recall"] == 1.0
    assert len(list((cache / "fidelity").glob("*inception-v3-compat-features-2048.pt"))) == 1


def test_missing_or_wrong_inception_weights_say_how_to_provide_them(tmp_path, monkeypatch, digits, cache):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # empty hub cache
    monkeypatch.setattr(fidelity, "INCEPTION_URL", "http://127.0.0.1:9/weights.pth")  # refused at once: offline
    kwargs = dict(reference=digits.train[:6], cache_dir=cache)
    with pytest.raises(ValueError, match="cannot be downloaded.*--inception-weights PATH"):
        compute_metrics(DIGITS, digits.heldout[:6], ["fid"], **kwargs)
    with pytest.raises(ValueError, match="does not exist.*--inception-weights PATH"):
        compute_metrics(DIGITS, digits.heldout[:6], ["fid"], inception_weights=tmp_path / "nope.pth", **kwargs)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not an Inception-v3 state dict"):
        compute_metrics(DIGITS, digits.heldout[:6], ["fid"], inception_weights=tmp_path / "wrong.pth", **kwargs)


# --- analytic models --------------------------------------------------------------------------------------------------
def mis_weighted(mixture: GaussianMixture) -> GaussianMixture:
    k = mixture.n_components
    return GaussianMixture(torch.full((k,), 1 / k, dtype=torch.float64), mixture.means, mixture.covs)


@pytest.mark.parametrize("name", ["gmm-2d", "gmm-64d"])
def test_exact_metrics_vanish_for_exact_samples_and_not_for_a_mis_weighted_mixture(name):
    model = load_model(name)
    p = model.mixture
    gen = torch.Generator().manual_seed(7)
    samples = [p.sample(2000, gen)[0] for _ in range(3)]
    exact = [exact_metrics(p, x) for x in samples]
    wrong = exact_metrics(p, mis_weighted(p).sample(2000, gen)[0])
    for x, values in zip(samples, exact, strict=True):
        assert values["fd_exact"] < 0.1 * wrong["fd_exact"]
        assert values["weight_tv"] < 0.05 < 0.1 < wrong["weight_tv"]
        assert abs(values["mmd2_exact"]) < 1e-3 < 5e-3 < wrong["mmd2_exact"]
        assert abs(values["logp_gap"]) < 4 * float(p.log_prob(x).std()) / math.sqrt(len(x))  # 4 standard errors
    assert abs(np.mean([v["mmd2_exact"] for v in exact])) < 5e-4  # unbiased
    noise = 0.05 * torch.randn(2000, p.dim, generator=gen, dtype=torch.float64)
    assert exact_metrics(p, samples[0] + noise)["logp_gap"] > 0.3  # samples left in lower density than exact ones


def test_mmd_closed_form_matches_monte_carlo():
    p = load_model("gmm-2d").mixture
    ell2, kernel_pp, _ = _mixture_constants(p)
    gen = torch.Generator().manual_seed(11)
    x, y = p.sample(200_000, gen)[0], p.sample(200_000, gen)[0]
    k = torch.exp(-((x - y) ** 2).sum(1) / (2 * ell2))
    assert kernel_pp == pytest.approx(float(k.mean()), abs=4 * float(k.std()) / math.sqrt(len(k)))
    assert ell2 == pytest.approx(float(torch.trace(p.cov())))


def test_analytic_default_metrics_include_data_space_features(cache):
    model = load_model("gmm-2d")
    names = ("fd_exact", "weight_tv", "mmd2_exact", "fd_data", "kd_data", "precision_data", "recall_data")
    assert default_metrics(model) == names
    p = model.mixture
    gen = torch.Generator().manual_seed(3)
    good = compute_metrics(model, p.sample(1000, gen)[0].float(), [*names, "kd_data_std"], cache_dir=cache)
    bad = compute_metrics(model, mis_weighted(p).sample(1000, gen)[0].float(), cache_dir=cache)
    assert good["n"] == good["n_ref"] == 1000
    assert good["fd_data"] < 0.01 and bad["fd_data"] > 3 * good["fd_data"]
    assert bad["kd_data"] > good["kd_data"] + 3 * good["kd_data_std"]
    assert good["precision_data"] > 0.9 and good["recall_data"] > 0.9


def test_half_sample_intervals(cache, digits):
    model = load_model("gmm-2d")
    x = model.mixture.sample(600, torch.Generator().manual_seed(5))[0]
    values = compute_metrics(model, x, ["fd_exact", "mmd2_exact", "fd_data", "recall_data"], bootstrap=20)
    for name in ("fd_exact", "mmd2_exact", "fd_data", "recall_data"):
        assert values[f"{name}_lo"] < values[name] < values[f"{name}_hi"]
    again = compute_metrics(model, x, ["fd_exact"], bootstrap=20)
    assert again["fd_exact_lo"] == values["fd_exact_lo"]  # seeded
    img = compute_metrics(DIGITS, digits.heldout, FD_DIGITS, bootstrap=5, cache_dir=cache)
    assert {"fd_digits_lo", "kd_digits_hi", "precision_digits_lo", "recall_digits_hi"} <= set(img)
    assert "kd_digits_std_lo" not in img


# --- the shipped classifier and its trainer ---------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["digits", "mnist5k"])
def test_shipped_classifier_reports_its_true_heldout_accuracy(dataset):
    net, config = load_classifier(checkpoint_dir(dataset))
    data = load_dataset(dataset)
    with torch.no_grad():
        logits = net(images_to_unit(to_uint8(data.heldout, (-1, 1)), config["image_size"]))
    accuracy = float((logits.argmax(1) == data.heldout_labels).double().mean())
    assert accuracy == pytest.approx(config["heldout_accuracy"], abs=1e-9)
    assert accuracy > 0.95


def test_train_features_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "clf"
    assert main(["train", "features", "--data", "digits", "--epochs", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "digits" and 0 <= config["heldout_accuracy"] <= 1
    assert "held-out accuracy" in capsys.readouterr().out
    load_classifier(out)
    assert main(["train", "features", "--epochs", "0", "--out", str(out)]) == 2
    with pytest.raises(ValueError, match="no feature classifier"):
        load_classifier(tmp_path / "missing")
