"""Checkpoint loaders: diffusers directories cross-checked against diffusers itself, native-format errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, ScoreSdeVeScheduler, UNet2DModel

from bench.cli import main
from models import load_model
from models.loaders import load_diffusers, load_native, save_native
from models.unet import UNet
from samplers import SAMPLERS


def tiny_ddpm_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()


def tiny_ncsnpp_unet() -> UNet2DModel:
    """The google/ncsnpp-* layout in miniature: Fourier time embedding (the timestep is sigma), skip blocks."""
    torch.manual_seed(1)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32),
        layers_per_block=1,
        time_embedding_type="fourier",
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
        norm_num_groups=None,
        mid_block_scale_factor=2**0.5,
        flip_sin_to_cos=True,
        freq_shift=1,
        norm_eps=1e-6,
        attention_head_dim=None,
    ).eval()


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory):
    """A bare model directory (google/ddpm-cifar10-32 style): config.json + weights + scheduler_config.json."""
    path = tmp_path_factory.mktemp("ddpm")
    tiny_ddpm_unet().save_pretrained(path)
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear").save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="module")
def ncsnpp_dir(tmp_path_factory):
    """A pipeline directory (google/ncsnpp-* style): unet/ and scheduler/ sub-folders."""
    path = tmp_path_factory.mktemp("ncsnpp")
    tiny_ncsnpp_unet().save_pretrained(path / "unet")
    ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0).save_pretrained(path / "scheduler")
    return path


# --- diffusers: VP DDPM layout ------------------------------------------------------------------------------------
def test_ddpm_layout_loads_with_its_process(ddpm_dir):
    model = load_model(f"diffusers:{ddpm_dir}")
    assert model.process == "vp" and model.sde.T == 1000
    assert model.prediction == "eps" and model.conditioning == "index"
    assert model.shape == (1, 8, 8) and model.data_range == (-1.0, 1.0)
    betas = DDPMScheduler.from_pretrained(ddpm_dir).betas.double()
    torch.testing.assert_close(model.sde.betas, betas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_matches_diffusers_ddim_scheduler(ddpm_dir, tmp_path, set_alpha_to_one):
    """scorebench's ddim (eta=0) on the loaded model reproduces diffusers' own DDIMScheduler loop, image for image."""
    shutil.copytree(ddpm_dir, tmp_path / "m")
    DDIMScheduler(clip_sample=False, set_alpha_to_one=set_alpha_to_one).save_pretrained(tmp_path / "m")
    unet = UNet2DModel.from_pretrained(tmp_path / "m").eval()
    scheduler = DDIMScheduler.from_pretrained(tmp_path / "m")
    scheduler.set_timesteps(10)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))

    # diffusers' loop in VP coordinates
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample

    # scorebench: the same timesteps as VE noise levels, x_T mapped to VE, the ddim function called directly
    model = load_model(f"diffusers:{tmp_path / 'm'}")
    alpha_bar = scheduler.alphas_cumprod.double()[scheduler.timesteps]
    levels = torch.sqrt((1 - alpha_bar) / alpha_bar)
    sigmas = torch.cat([levels, levels.new_zeros(1)])
    x_ve = x_T / alpha_bar[0].sqrt().float()
    with torch.no_grad():
        # final alpha 1: the last step lands on the x0 prediction (our Tweedie step). Final alpha = alpha_bar_0: the
        # last step goes from timestep 0 to itself (an identity), so we stop at the last level and map back to VP.
        out = SAMPLERS["ddim"].fn(model, x_ve, sigmas, eta=0.0, denoise=set_alpha_to_one)
    if not set_alpha_to_one:
        out = out * alpha_bar[-1].sqrt().float()
    assert x.abs().max() > 0.1  # a real, non-trivial image
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


# --- diffusers: VE NCSN++ layout ----------------------------------------------------------------------------------
def test_ncsnpp_layout_denoiser_is_x_plus_sigma2_score(ncsnpp_dir):
    model = load_model(f"diffusers:{ncsnpp_dir}")
    assert model.process == "ve" and model.prediction == "score" and model.conditioning == "sigma"
    assert (model.sigma_min, model.sigma_max) == (0.01, 50.0)
    assert model.shape == (3, 8, 8) and model.data_range == (0.0, 1.0)
    unet = UNet2DModel.from_pretrained(ncsnpp_dir / "unet").eval()
    x = torch.randn(3, 3, 8, 8) * 2
    sigma = torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64)
    with torch.no_grad():
        output = unet(x, sigma.float()).sample  # the timestep argument IS sigma; the output is the score
        expected = x + sigma.float()[:, None, None, None] ** 2 * output
        torch.testing.assert_close(model(x, sigma), expected, rtol=1e-5, atol=1e-5)


def test_diffusers_model_samples(ncsnpp_dir):
    from samplers import sample

    res = sample(f"diffusers:{ncsnpp_dir}", "kar1", nfe=5, seeds=range(2))
    assert res.x.shape == (2, 3, 8, 8) and torch.isfinite(res.x).all()
    assert res.nfe == res.declared_nfe == 5


# --- errors -------------------------------------------------------------------------------------------------------
def _one_line_error(call, match: str) -> str:
    with pytest.raises(ValueError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_diffusers_errors(ddpm_dir, tmp_path):
    _one_line_error(lambda: load_diffusers(tmp_path / "missing"), "no such directory")
    _one_line_error(lambda: load_diffusers(tmp_path), "not a diffusers model directory")

    # unknown layout: a scheduler we cannot map
    bad = tmp_path / "bad"
    shutil.copytree(ddpm_dir, bad)
    (bad / "scheduler_config.json").write_text(json.dumps({"_class_name": "NoSuchScheduler"}))
    _one_line_error(lambda: load_diffusers(bad), "unknown layout")
    (bad / "scheduler_config.json").unlink()
    _one_line_error(lambda: load_diffusers(bad), "no scheduler config")

    # corrupt weights
    broken = tmp_path / "broken"
    shutil.copytree(ddpm_dir, broken)
    weights = broken / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _one_line_error(lambda: load_diffusers(broken), "cannot load the UNet2DModel weights")


@pytest.fixture()
def native_dir(tmp_path):
    torch.manual_seed(0)
    net = UNet(channels=8, channel_mult=[1, 1], emb_dim=16, attention=False, cond_map="log")
    config = {
        "arch": "unet",
        "arch_kwargs": {"channels": 8, "channel_mult": [1, 1], "emb_dim": 16, "attention": False, "cond_map": "log"},
        "process": {"name": "ve", "sigma_min": 0.01, "sigma_max": 10.0},
        "prediction": "score",
        "conditioning": "sigma",
        "shape": [1, 8, 8],
        "data_range": [-1.0, 1.0],
        "dataset": "digits",
    }
    return save_native(tmp_path / "ckpt", net, config)


def test_native_round_trip(native_dir):
    model = load_native(native_dir)
    assert model.dataset == "digits" and model.process == "ve" and (model.sigma_min, model.sigma_max) == (0.01, 10.0)
    assert load_model(str(native_dir)).name == "ckpt"


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: shutil.rmtree(d), "no such directory"),
        (lambda d: (d / "model.safetensors").unlink(), "missing model.safetensors"),
        (lambda d: (d / "config.json").unlink(), "missing config.json"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 100), "not a readable safetensors file"),
        (lambda d: _truncate(d / "model.safetensors"), "not a readable safetensors file"),
        (lambda d: torch.save({"w": torch.zeros(3)}, d / "model.safetensors"), "not a readable safetensors file"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: _edit_config(d, format="something-else"), "not a scorebench-checkpoint config"),
        (lambda d: _edit_config(d, arch="transformer"), "unknown architecture"),
        (lambda d: _edit_config(d, process={"name": "edm"}), "unknown process"),
        (lambda d: _edit_config(d, prediction="noise"), "unknown prediction"),
        (
            lambda d: _edit_config(d, arch_kwargs={"channels": 16, "channel_mult": [1, 1], "emb_dim": 16}),
            "do not match",
        ),
    ],
    ids=[
        "missing-dir",
        "missing-weights",
        "missing-config",
        "corrupt",
        "truncated",
        "pickle",
        "bad-json",
        "wrong-format",
        "unknown-arch",
        "unknown-process",
        "unknown-prediction",
        "mismatched-weights",
    ],
)
def test_native_errors_are_one_line(native_dir, capsys, damage, match):
    damage(native_dir)
    _one_line_error(lambda: load_native(native_dir), match)
    # the same through the command line: one line on stderr, exit status 2, nothing else
    if native_dir.exists():
        assert main(["sample", str(native_dir), "--out", str(native_dir.parent / "grid.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("scorebench sample: error:") and match in err
        assert not (native_dir.parent / "grid.png").exists()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | changes))
