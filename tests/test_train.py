"""`scorebench train score`: reproducible training, a checkpoint that reloads as the trained EMA model, figures."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.train import ScoreTraining, dsm_loss, train_score
from models import load_model
from models.processes import DDPMProcess, VEProcess
from models.unet import UNet
from models.wrappers import NetworkDenoiser

TINY = {"channels": 8, "emb_dim": 16, "attention": False}


def _train(tmp_path, name, **kw):
    cfg = ScoreTraining(steps=4, batch_size=8, log_every=2, arch=TINY, **kw)
    grid = {"sampler": "kar1", "nfe": 5, "n": 4}
    return train_score(cfg, tmp_path / name, device="cpu", command="test", progress=False, grid=grid)


@pytest.mark.parametrize("process", ["ve", "vp"])
def test_training_writes_a_reloadable_reproducible_checkpoint(tmp_path, process):
    first = _train(tmp_path, "a", process=process, seed=1)
    again = _train(tmp_path, "b", process=process, seed=1)
    weights = [load_file(r.path / "model.safetensors") for r in (first, again)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # same seed, same weights
    if process == "ve":  # and another seed, other weights
        other = load_file(_train(tmp_path, "c", process=process, seed=2).path / "model.safetensors")
        assert not all(torch.equal(weights[0][k], other[k]) for k in other)

    config = json.loads((first.path / "config.json").read_text())
    assert config["dataset"] == "digits" and config["training"]["seed"] == 1 and config["training"]["steps"] == 4
    assert config["training"]["final_loss"] == pytest.approx(first.curve[-1][1])
    assert [step for step, _ in first.curve] == [2, 4]
    model = load_model(str(first.path))
    assert model.process == process and model.dataset == "digits" and model.shape == (1, 8, 8)
    if process == "ve":
        assert (model.sigma_min, model.sigma_max) == (0.01, 10.0)  # 10 = max pairwise distance of digits, rounded up
        assert model.prediction == "score" and model.conditioning == "sigma"
    else:
        assert isinstance(model.sde, DDPMProcess) and model.prediction == "eps" and model.conditioning == "index"
    for figure in ("training_curve.csv", "training_curve.png", "samples.png"):
        assert (first.path / figure).is_file()


def test_dsm_loss_is_weighted_score_matching_and_ddpm_simple_loss():
    """The one loss is sigma^2 ||s - (-eps/sigma)||^2 for a VE score net and ||eps_theta - eps||^2 for a DDPM net."""
    torch.manual_seed(0)
    x0, eps = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    net = UNet(**TINY, cond_map="log")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)  # a non-zero output head
        ve = NetworkDenoiser(net, VEProcess(0.01, 10.0), prediction="score", conditioning="sigma", shape=(1, 8, 8))
        sigma = torch.tensor([0.02, 0.1, 0.5, 1.0, 3.0, 9.0], dtype=torch.float64)
        sig = sigma.float()[:, None, None, None]
        score = net(x0 + sig * eps, sigma.float())
        expected = (sig**2 * (score + eps / sig) ** 2).mean()
        torch.testing.assert_close(dsm_loss(ve, x0, sigma, eps), expected, rtol=1e-4, atol=1e-6)

        sde, net = DDPMProcess(), UNet(**TINY, cond_map="linear", f_min=1e-3, f_max=1.0)
        for p in net.parameters():
            p.normal_(0, 0.1)
        vp = NetworkDenoiser(net, sde, prediction="eps", conditioning="index", shape=(1, 8, 8))
        k = torch.tensor([0, 10, 100, 500, 900, 999])
        t = (k + 1).double() / sde.T
        a = torch.exp(sde.log_alpha_bar(t)).float()[:, None, None, None]
        eps_theta = net(a.sqrt() * x0 + (1 - a).sqrt() * eps, k.float())
        expected = (eps_theta - eps).square().mean()
        torch.testing.assert_close(dsm_loss(vp, x0, sde.sigma(t), eps), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--steps", "0"], "argument --steps: must be a positive integer"),  # refused while parsing
        (["--ema", "1.5"], "EMA decay"),
        (["--sigma-min", "5", "--sigma-max", "1"], "sigma_min < sigma_max"),
    ],
)
def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys, argv, match):
    assert main(["train", "score", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scorebench train") and " error: " in err and match in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("data, size", [("digits", 8), ("mnist5k", 28)])
def test_default_unets_map_images_to_images(data, size):
    from bench.train import ARCH_BY_DATA

    for cond_map, cond in (("log", torch.tensor([0.01, 5.0])), ("linear", torch.tensor([0.0, 999.0]))):
        net = UNet(in_channels=1, cond_map=cond_map, **ARCH_BY_DATA[data])
        with torch.no_grad():
            assert net(torch.randn(2, 1, size, size), cond).shape == (2, 1, size, size)
    if data == "digits":
        assert 100_000 < sum(p.numel() for p in net.parameters()) < 300_000


@pytest.mark.parametrize("process", ["ve", "vp"])
def test_preconditioned_unet_at_init_is_edm_skip_denoiser(process):
    """With the output head zero (as initialised), D(x, sigma) = sd^2 / (sigma^2 + sd^2) x exactly, on either layout.

    For VP this also checks that the network's own sigma(index) agrees with the wrapper's index(sigma).
    """
    sd = 0.7
    if process == "ve":
        net = UNet(**TINY, cond_map="log", precondition="ve_score", sigma_data=sd)
        model = NetworkDenoiser(net, VEProcess(0.01, 10.0), prediction="score", conditioning="sigma", shape=(1, 8, 8))
        sigma = torch.tensor([0.01, 0.3, 2.0, 10.0], dtype=torch.float64)
    else:
        net = UNet(**TINY, cond_map="linear", f_min=1e-3, f_max=1.0, precondition="vp_eps", sigma_data=sd)
        model = NetworkDenoiser(net, DDPMProcess(), prediction="eps", conditioning="index", shape=(1, 8, 8))
        sigma = torch.tensor([0.0101, 0.3, 2.0, 150.0], dtype=torch.float64)
    x = torch.randn(4, 1, 8, 8) * (1 + sigma.float()[:, None, None, None])
    with torch.no_grad():
        expected = sd**2 / (sigma**2 + sd**2)[:, None, None, None] * x.double()
        torch.testing.assert_close(model(x, sigma).double(), expected, rtol=1e-4, atol=1e-4)  # float32 at |x| ~ 150
