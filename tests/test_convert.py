"""`scorebench convert`: a checkpoint as a native directory that computes the same denoiser without its format."""

from __future__ import annotations

import pytest
import torch

from bench.cli import main
from bench.loader_speed import CHECKPOINTS as CHECKPOINTS_BY_FIXTURE
from models import load_model
from models.registry import CHECKPOINTS


def assert_same_denoiser(a, b) -> None:
    assert (a.shape, a.process, a.data_range, a.sigma_min, a.sigma_max) == (
        b.shape,
        b.process,
        b.data_range,
        b.sigma_min,
        b.sigma_max,
    )
    gen = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.02, 0.3, 2.0, a.sigma_max], dtype=torch.float64)
    x = torch.randn(4, *a.shape, generator=gen) * (1 + sigma.float().reshape(-1, *[1] * len(a.shape)))
    torch.testing.assert_close(a(x, sigma), b(x, sigma), rtol=0, atol=0)


def test_convert_round_trips_a_native_checkpoint(tmp_path, capsys):
    out = tmp_path / "digits-vp"
    assert main(["convert", str(CHECKPOINTS / "digits-vp"), str(out)]) == 0
    assert "converted" in capsys.readouterr().out
    assert_same_denoiser(load_model(str(CHECKPOINTS / "digits-vp")), load_model(str(out)))


def test_convert_refuses_bad_input_in_one_line(tmp_path, capsys):
    occupied = tmp_path / "mine"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    for args in (
        ["gmm-2d-ve", str(tmp_path / "a")],  # an analytic model has no network to write
        [str(CHECKPOINTS / "digits-ve"), str(occupied)],  # never over a user's files
        [str(CHECKPOINTS / "digits-ve"), str(tmp_path / "b"), "--config", "x"],  # an option for upstream formats
    ):
        assert main(["convert", *args]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (occupied / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


UPSTREAM = CHECKPOINTS_BY_FIXTURE  # fixture folder -> spec template, one per upstream format


@pytest.mark.parametrize("fixture", list(UPSTREAM))
def test_convert_round_trips_upstream_checkpoints(fixture, upstream_fixture, tmp_path):
    """The native copy computes the upstream's reference outputs bit for bit like the original, with nothing of the
    original format left: the source directory is deleted before the copy is loaded."""
    import shutil

    import numpy as np

    source = upstream_fixture(fixture)
    spec = UPSTREAM[fixture].format(source)
    reference = np.load(source / "reference.npz")
    x = torch.from_numpy(reference["x"]).float()
    sigma = torch.from_numpy(reference["sigma"]).double()
    original = load_model(spec)
    expected = original(x, sigma)
    out = tmp_path / "native"
    assert main(["convert", spec, str(out)]) == 0
    shutil.rmtree(source)
    native = load_model(str(out))
    assert (native.shape, native.process, native.data_range) == (original.shape, original.process, original.data_range)
    assert (native.levels is None) == (original.levels is None)
    torch.testing.assert_close(native(x, sigma), expected, rtol=0, atol=0)
    if getattr(original, "sampler_defaults", None):
        assert native.sampler_defaults == original.sampler_defaults
