"""`ddim:PATH` (ermongroup/ddim): the fixture made by ddim's own code reproduces its reference outputs; the list
checkpoint picks the EMA shadow; the loaded model samples; every bad input is one ValueError."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from models import load_model
from models.loaders import ARCHS, build_network
from models.upstream.common import Config
from models.upstream.ddim import PUBLISHED_CONFIGS, DDIMUNet, arch_kwargs_of, beta_schedule
from models.upstream.ddim_configs import CONFIG_SUMMARIES
from samplers import sample

FIXTURE = "ddim/cifar10"
CKPT = "model-ema.ckpt"


def relative_error(out: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(out.double().numpy() - ref).max() / np.abs(ref).max())


def denoise_reference(model, root) -> float:
    ref = np.load(root / "reference.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(ref["x"]).float(), torch.from_numpy(ref["sigma"]))
    return relative_error(out, ref["denoised"])


def list_checkpoint(raw: dict, ema: dict | None, step: int = 10) -> list:
    """ddim's runners/diffusion.py layout: [DataParallel state dict, optimizer state, epoch, step(, EMA shadow)]."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([param], lr=2e-4)
    param.grad = torch.ones(2)
    optimizer.step()
    states = [{f"module.{k}": v for k, v in raw.items()}, optimizer.state_dict(), 3, step]
    return states if ema is None else [*states, dict(ema)]


def perturbed(state: dict, scale: float = 0.05, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * v.abs().mean() * torch.randn(v.shape, generator=gen) for k, v in state.items()}


def test_fixture_reproduces_the_reference(upstream_fixture):
    root = upstream_fixture(FIXTURE)
    model = load_model(f"ddim:{root / CKPT}")
    err = denoise_reference(model, root)
    print(f"\nddim/cifar10: max |D - reference| / max |reference| = {err:.2e}")
    assert err < 1e-4

    assert model.shape == (3, 32, 32) and model.data_range == (-1.0, 1.0) and model.process == "vp"
    assert model.dataset == "cifar10" and model.arch == "ddim.unet" and ARCHS["ddim.unet"] is DDIMUNet
    assert model.config == yaml.safe_load((root / "config.yml").read_text())
    rebuilt = build_network(model.arch, json.loads(json.dumps(model.arch_kwargs)))
    rebuilt.load_state_dict(model.net.state_dict())  # the JSON arch_kwargs rebuild the same network


def test_reference_is_the_eps_network_at_the_integer_timestep(upstream_fixture):
    """NetworkDenoiser's maths: sigma_t maps back to timestep t, and D = x - sigma eps(sqrt(abar) x, t) there."""
    root = upstream_fixture(FIXTURE)
    model = load_model(f"ddim:{root / CKPT}")
    ref = np.load(root / "reference.npz")
    sigma, timestep = torch.from_numpy(ref["sigma"]), torch.from_numpy(ref["timestep"])
    # the reference's sigma comes from ddim's float32 alphas: its index is within a fraction of a step of t
    assert (model.condition(sigma) - timestep).abs().max() < 1e-2
    x = torch.from_numpy(ref["x"]).float()
    abar = torch.cumprod(1 - beta_schedule("linear", 1e-4, 0.02, 1000), 0)[timestep.long()]
    with torch.no_grad():
        eps = model.net(x * abar.sqrt().float()[:, None, None, None], timestep.float())
    direct = x - ((1 - abar) / abar).sqrt().float()[:, None, None, None] * eps
    assert relative_error(direct, ref["denoised"]) < 1e-4


def test_list_checkpoint_picks_the_ema_shadow(upstream_fixture):
    root = upstream_fixture(FIXTURE)
    ema = torch.load(root / CKPT, weights_only=True)
    raw = perturbed(ema)
    path = root / "ckpt.pth"
    torch.save(list_checkpoint(raw, ema), path)

    assert denoise_reference(load_model(f"ddim:{path}"), root) < 1e-4
    raw_model = load_model(f"ddim:{path}", ema=False)
    err_raw = denoise_reference(raw_model, root)
    print(f"\nddim list checkpoint: raw weights' relative error {err_raw:.2e}")
    assert err_raw > 1e-2
    assert all(torch.equal(raw_model.net.state_dict()[k], v) for k, v in raw.items())

    # without an EMA entry (model.ema off) the raw weights are all there is
    torch.save(list_checkpoint(ema, None), path)
    assert denoise_reference(load_model(f"ddim:{path}"), root) < 1e-4


def test_config_by_name_or_path(upstream_fixture):
    root = upstream_fixture(FIXTURE)
    moved = root.parent / "cifar10-small.yml"
    (root / "config.yml").rename(moved)
    with pytest.raises(ValueError, match="no config.yml"):
        load_model(f"ddim:{root / CKPT}")
    assert denoise_reference(load_model(f"ddim:{root / CKPT}", config=str(moved)), root) < 1e-4
    # the published CIFAR-10 config is the full-size network (ch 128), not this fixture's
    with pytest.raises(ValueError, match="do not match"):
        load_model(f"ddim:{root / CKPT}", config="cifar10")


def test_published_configs_are_the_ddpm_networks():
    """Parameter counts of the DDPM paper (Ho et al. 2020): 35.7M on CIFAR-10, 114M on LSUN 256."""
    assert set(PUBLISHED_CONFIGS) == {"cifar10", "celeba", "bedroom", "church"} == set(CONFIG_SUMMARIES)
    counts = {}
    for name, config in PUBLISHED_CONFIGS.items():
        with torch.device("meta"):
            net = DDIMUNet(**arch_kwargs_of(Config(config), name))
        counts[name] = sum(p.numel() for p in net.parameters())
    assert abs(counts["cifar10"] - 35.7e6) < 0.05e6
    assert abs(counts["bedroom"] - 114e6) < 0.5e6 and counts["church"] == counts["bedroom"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("linear", np.linspace(1e-4, 0.02, 1000)),
        ("quad", np.linspace(1e-2, 0.02**0.5, 1000) ** 2),
        ("const", np.full(1000, 0.02)),
        ("sigmoid", 1 / (1 + np.exp(-np.linspace(-6, 6, 1000))) * (0.02 - 1e-4) + 1e-4),
    ],
)
def test_beta_schedules(name, expected, upstream_fixture):
    np.testing.assert_allclose(beta_schedule(name, 1e-4, 0.02, 1000).numpy(), expected, rtol=1e-12)
    root = upstream_fixture(FIXTURE)
    config = yaml.safe_load((root / "config.yml").read_text())
    config["diffusion"]["beta_schedule"] = name
    (root / "config.yml").write_text(yaml.safe_dump(config))
    model = load_model(f"ddim:{root / CKPT}")
    np.testing.assert_allclose(model.sde.betas.numpy(), expected, rtol=1e-12)


def test_samples_with_ddim(upstream_fixture):
    root = upstream_fixture(FIXTURE)
    model = load_model(f"ddim:{root / CKPT}")
    res = sample(model, "ddim", nfe=10, seeds=range(2))
    print(f"\nddim on ddim/cifar10: measured NFE {res.nfe} (budget 10)")
    assert res.nfe <= 10 and res.x.shape == (2, 3, 32, 32) and bool(torch.isfinite(res.x).all())


class Opaque:
    """Unpickling this needs this module's code."""

    def __init__(self):
        self.weights = torch.zeros(3)


def _truncated(root):
    data = (root / CKPT).read_bytes()
    (root / CKPT).write_bytes(data[: len(data) // 2])


def _config_mismatch(root):
    config = yaml.safe_load((root / "config.yml").read_text())
    config["model"]["ch"] = 64
    (root / "config.yml").write_text(yaml.safe_dump(config))


def _rewrite(edit):
    def apply(root):
        state = torch.load(root / CKPT, weights_only=True)
        torch.save(edit(state), root / CKPT)

    return apply


def _missing_key(state):
    del state["conv_out.bias"]
    return state


def _extra_key(state):
    state["conv_out.scale"] = torch.ones(3)
    return state


def _ema_missing_key(state):
    ema = dict(state)
    del ema["norm_out.weight"]
    return list_checkpoint(state, ema)


def _bad_schedule(root):
    config = yaml.safe_load((root / "config.yml").read_text())
    config["diffusion"]["beta_schedule"] = "cosine"
    (root / "config.yml").write_text(yaml.safe_dump(config))


def _no_ch(root):
    config = yaml.safe_load((root / "config.yml").read_text())
    del config["model"]["ch"]
    (root / "config.yml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(
    "break_it, options, message",
    [
        (_truncated, {}, "not a readable checkpoint"),
        (_config_mismatch, {}, "do not match"),
        (_rewrite(lambda s: list_checkpoint(s, s)[:3]), {}, "got 3"),
        (_rewrite(lambda s: [*list_checkpoint(s, s), 0]), {}, "got 6"),
        (_rewrite(_missing_key), {}, "missing 1"),
        (_rewrite(_extra_key), {}, "unexpected 1"),
        (_rewrite(_ema_missing_key), {}, "EMA shadow"),
        (_rewrite(lambda s: Opaque()), {}, "needs code|not a readable checkpoint"),  # common.read_torch
        (_rewrite(lambda s: {"model": s}), {}, "expected a state dict"),
        (None, {"config": "cifar100"}, "unknown config 'cifar100'"),
        (_bad_schedule, {}, "beta_schedule 'cosine'"),
        (_no_ch, {}, "no model.ch"),
        (None, {"ema": "yes"}, "ema must be"),
        (None, {"steps": 3}, "unknown option"),
    ],
)
def test_bad_input_is_one_value_error(upstream_fixture, break_it, options, message):
    root = upstream_fixture(FIXTURE)
    if break_it is not None:
        break_it(root)
    with pytest.raises(ValueError, match=message) as info:
        load_model(f"ddim:{root / CKPT}", **options)
    assert "\n" not in str(info.value)
