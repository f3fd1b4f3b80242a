"""The shipped checkpoints digits-ve and digits-vp: they load with their provenance, sample, and model the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.metrics import compute_metrics, frechet_distance
from models import MODELS, load_model
from models.registry import CHECKPOINTS
from samplers import sample

SHIPPED = ["digits-ve", "digits-vp"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_with_its_provenance(name):
    assert MODELS[name].kind == "checkpoint"
    model = load_model(name)
    assert model.name == name and model.dataset == "digits"
    assert model.shape == (1, 8, 8) and model.data_range == (-1.0, 1.0)
    training = model.config["training"]
    assert training["command"].startswith("scorebench train score --data digits --process " + name[-2:])
    assert training["steps"] > 0 and math.isfinite(training["final_loss"])
    assert sum(p.numel() for p in model.parameters()) == training["parameters"]
    size = sum(f.stat().st_size for f in (CHECKPOINTS / name).iterdir())
    assert size < 2_000_000  # small enough to ship inside the package


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("sampler, nfe", [("kar1", 9), ("ddim", 6), ("em", 6), ("pc", 8), ("ald", 11)])
def test_shipped_checkpoint_samples_with_measured_nfe(name, sampler, nfe):
    res = sample(name, sampler, nfe, seeds=range(6))
    assert res.x.shape == (6, 1, 8, 8) and torch.isfinite(res.x).all()
    assert res.nfe == res.declared_nfe <= nfe


def _pixel_fd(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.flatten(1).double().numpy(), y.flatten(1).double().numpy()
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # corner pixels are constant: singular covariances
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_samples_are_close_to_the_data(name, tmp_path):
    """fd_digits (and FD in pixel space) to the training digits: near the real-data floor, far below noise.

    The floor is the held-out split against the training split; samples and noise come in the same number.
    Measured (kar1 at 39 NFE, seeds 0..358): fd_digits floor 2.31, digits-ve 4.24, digits-vp 2.96, noise 70.6. At
    359 samples FD is noisy: the next three seed sets of 359 gave 3.68, 3.75, 5.51 (digits-ve) and 3.22, 2.90, 4.45
    (digits-vp), hence the bound of 3x the floor (an untrained network scores 80, noise 70).
    """
    data = load_dataset("digits")
    n = len(data.heldout)
    model = load_model(name)
    x = sample(model, "kar1", 39, seeds=range(n)).x
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)

    def fd_digits(images: torch.Tensor) -> float:
        return compute_metrics(model, images, ["fd_digits"], cache_dir=tmp_path)["fd_digits"]

    fd, floor, fd_noise = fd_digits(x), fd_digits(data.heldout), fd_digits(noise)
    assert fd < 3 * floor and fd < fd_noise / 10, (fd, floor, fd_noise)
    fd, floor, fd_noise = _pixel_fd(x, data.train), _pixel_fd(data.heldout, data.train), _pixel_fd(noise, data.train)
    assert fd < 3 * floor and fd < fd_noise / 10, (fd, floor, fd_noise)
