"""`score_sde:PATH`: score_sde_pytorch checkpoints reproduce the upstream's own outputs, sample, and fail cleanly."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_model
from models.loaders import ARCHS, build_network
from models.upstream.common import Config
from models.upstream.score_sde import CONFIG_SUMMARIES, PUBLISHED_CONFIGS, network_spec
from models.upstream.score_sde import build_network as build_score_sde_network
from models.upstream.score_sde_nets import FirConv, fir_downsample, fir_upsample
from samplers import sample

FIXTURES = ["ve-ncsnpp-continuous", "vp-ddpmpp-continuous", "vp-ddpm"]
PUBLISHED_NAME = {  # the published config each fixture was made from (meta.json "config")
    "ve-ncsnpp-continuous": "ve/cifar10_ncsnpp_continuous",
    "vp-ddpmpp-continuous": "vp/cifar10_ddpmpp_continuous",
    "vp-ddpm": "vp/ddpm/cifar10",
}
CKPT = "checkpoint_1.pth"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _load(directory: Path, **options):
    return load_model(f"score_sde:{directory / CKPT}", **options)


def _relative_error(model, ref) -> float:
    x = torch.from_numpy(ref["x"]).float()
    sigma = torch.from_numpy(ref["sigma"])
    with torch.no_grad():
        out = model(x, sigma).double().numpy()
    return float(np.abs(out - ref["denoised"]).max() / np.abs(ref["denoised"]).max())


def _raises_one_line(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- reference outputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_reproduces_upstream_denoiser(upstream_fixture, name):
    path = upstream_fixture(f"score_sde/{name}")
    ref = np.load(path / "reference.npz")
    meta = json.loads((path / "meta.json").read_text())
    model = _load(path)
    assert _relative_error(model, ref) < 1e-4
    assert model.process == meta["process"]
    assert model.data_range == tuple(meta["data_range"])
    assert model.shape == (3, 16, 16)
    assert model.dataset == "cifar10"
    assert not model.training


@pytest.mark.parametrize("name", FIXTURES)
def test_raw_weights_do_not_reproduce_the_ema_reference(upstream_fixture, name):
    path = upstream_fixture(f"score_sde/{name}")
    assert _relative_error(_load(path, ema=False), np.load(path / "reference.npz")) > 1e-2


@pytest.mark.parametrize("name", FIXTURES)
def test_network_gets_upstream_conditioning(upstream_fixture, name):
    """The value handed to the network is what score_sde's get_score_fn hands it (reference `t`)."""
    path = upstream_fixture(f"score_sde/{name}")
    ref = np.load(path / "reference.npz")
    model = _load(path)
    cond = model.condition(torch.from_numpy(ref["sigma"])).numpy()
    expected = {
        "ve-ncsnpp-continuous": ref["sigma"],  # sigma(t) itself
        "vp-ddpmpp-continuous": 999 * ref["t"],  # 999 t
        "vp-ddpm": 999 * ref["t"],  # t (N - 1): the integer timestep
    }[name]
    np.testing.assert_allclose(cond, expected, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("name", FIXTURES)
def test_parameter_order_is_the_checkpoint_order(upstream_fixture, name):
    """The EMA list follows model.parameters(): our registration order must be upstream's (= the state-dict order)."""
    path = upstream_fixture(f"score_sde/{name}")
    model = _load(path)  # (a loaded model's parameters are frozen: count on a fresh build of the same network)
    net = build_score_sde_network(model.arch, model.arch_kwargs, device="meta")
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    ckpt = torch.load(path / CKPT, map_location="cpu", weights_only=True)
    order = [k.removeprefix("module.") for k in ckpt["model"]]
    assert [k for k in order if k in set(trainable)] == trainable
    assert len(trainable) == len(ckpt["ema"]["shadow_params"])


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("sampler", ["kar1", "pc"])
def test_samples_within_budget(upstream_fixture, name, sampler):
    model = _load(upstream_fixture(f"score_sde/{name}"))
    res = sample(model, sampler, nfe=10, seeds=range(2))
    assert res.nfe <= 10
    assert res.x.shape == (2, 3, 16, 16)
    assert torch.isfinite(res.x).all()


def test_dlg_runs_on_the_ve_checkpoint_within_budget(upstream_fixture, tmp_path):
    """DLG with a noise-level classifier of the checkpoint's shape (DMCMC's take 32x32 images; the fixture is 16x16,
    so an untrained classifier over the model's grid stands in): measured NFE within the budget, the classifier
    evaluations and the burn-in booked apart."""
    from models.noise_classifier import LearnedNoiseClassifier

    model = _load(upstream_fixture("score_sde/ve-ncsnpp-continuous"))
    clf = LearnedNoiseClassifier.create("cnn", model.shape, model.sigma_min, model.sigma_max, 1000, width=8)
    clf.save(tmp_path / "classifier")
    for n in (2, 5):
        res = sample(model, "dlg+kar1", nfe=12, seeds=range(n), classifier=str(tmp_path / "classifier"))
        assert res.nfe <= 12
        assert res.extras["classifier_evals"] > 0 and res.extras["burn_in_nfe"] > 0
        assert torch.isfinite(res.x).all()


@pytest.mark.parametrize("name", FIXTURES)
def test_convertible(upstream_fixture, name):
    model = _load(upstream_fixture(f"score_sde/{name}"))
    assert ARCHS[model.arch] is type(model.net)
    json.dumps(model.config)
    net = build_network(model.arch, json.loads(json.dumps(model.arch_kwargs))).eval()
    net.load_state_dict(model.net.state_dict())
    x = torch.rand(2, 3, 16, 16)
    cond = model.condition(torch.tensor([0.05, 3.0], dtype=torch.float64)).float()
    with torch.no_grad():
        assert torch.equal(net(x, cond), model.net(x, cond))


# --- configs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_published_config_matches_upstream_config_json(upstream_fixture, name):
    """The built-in config, with the fixture's size overrides, is exactly the ConfigDict score_sde wrote."""
    path = upstream_fixture(f"score_sde/{name}")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["config"] == "configs." + PUBLISHED_NAME[name].replace("/", ".")
    cfg = copy.deepcopy(PUBLISHED_CONFIGS[PUBLISHED_NAME[name]])
    for dotted, value in meta["overrides"].items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    assert cfg == json.loads((path / "config.json").read_text())


@pytest.mark.parametrize("name", FIXTURES)
def test_published_name_instead_of_config_json(upstream_fixture, name):
    path = upstream_fixture(f"score_sde/{name}")
    moved = path / "upstream-config.json"
    (path / "config.json").rename(moved)
    _raises_one_line("no config.json beside", _load, path)
    # the published widths are not the shrunk fixture's: one line naming the mismatch
    message = _raises_one_line("do not match the architecture", _load, path, config=PUBLISHED_NAME[name])
    assert "wrong shape" in message
    # a config file given by path works like config.json
    assert _relative_error(_load(path, config=str(moved)), np.load(path / "reference.npz")) < 1e-4


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_every_published_config_builds(name):
    arch, kwargs = network_spec(Config(PUBLISHED_CONFIGS[name]))
    net = build_score_sde_network(arch, kwargs, device="meta")
    assert isinstance(net, ARCHS[arch])
    assert net.sigmas.shape == (PUBLISHED_CONFIGS[name]["model"]["num_scales"],)
    summary = CONFIG_SUMMARIES[name]
    assert summary and "\n" not in summary


def test_cifar10_parameter_counts():
    """NCSN++ cont. (VE) constructs at full size. DDPM: Ho et al.'s CIFAR-10 U-Net has 35.7M parameters (35,746,307 in
    its PyTorch ports); score_sde's ddpm.py applies the up-path attention once per resolution instead of after every
    block, which drops two 256-channel attention blocks (263,680 parameters each)."""
    counts = {}  # 35,746,307 is also diffusers' UNet2DModel in the google/ddpm-cifar10-32 layout
    for name in ("ve/cifar10_ncsnpp_continuous", "vp/ddpm/cifar10"):
        net = build_score_sde_network(*network_spec(Config(PUBLISHED_CONFIGS[name])), device="meta")
        counts[name] = sum(p.numel() for p in net.parameters())
    assert 60e6 < counts["ve/cifar10_ncsnpp_continuous"] < 65e6
    assert counts["vp/ddpm/cifar10"] == 35_746_307 - 2 * 263_680


# --- bad input: one ValueError each ---------------------------------------------------------------------------------
def test_truncated_checkpoint(upstream_fixture):
    path = upstream_fixture("score_sde/ve-ncsnpp-continuous")
    data = (path / CKPT).read_bytes()
    (path / CKPT).write_bytes(data[: len(data) // 2])
    _raises_one_line("not a readable checkpoint", _load, path)


def test_missing_file(tmp_path):
    _raises_one_line("no such file", _load, tmp_path)


def _edit_config(path: Path, section: str, key: str, value) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg[section][key] = value
    (path / "config.json").write_text(json.dumps(cfg))


def test_config_widths_do_not_match_weights(upstream_fixture):
    path = upstream_fixture("score_sde/vp-ddpmpp-continuous")
    _edit_config(path, "model", "nf", 8)
    _raises_one_line("do not match the architecture.*wrong shape", _load, path)


def test_config_noise_levels_do_not_match_weights(upstream_fixture):
    path = upstream_fixture("score_sde/ve-ncsnpp-continuous")
    _edit_config(path, "model", "sigma_max", 90)
    _raises_one_line("sigmas buffer .* does not match the config", _load, path)


@pytest.mark.parametrize(
    ("section", "key", "value", "match"),
    [
        ("model", "name", "ncsnv2", "model.name 'ncsnv2' is not supported"),
        ("training", "sde", "subvpsde", "training.sde 'subvpsde' is not supported"),
        ("model", "progressive", "bogus", "model.progressive = 'bogus' is not supported"),
    ],
)
def test_unsupported_config_values(upstream_fixture, section, key, value, match):
    path = upstream_fixture("score_sde/ve-ncsnpp-continuous")
    _edit_config(path, section, key, value)
    _raises_one_line(match, _load, path)


def _resave(path: Path, edit) -> None:
    ckpt = torch.load(path / CKPT, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path / CKPT)


def test_missing_key(upstream_fixture):
    path = upstream_fixture("score_sde/vp-ddpm")
    _resave(path, lambda c: c["model"].pop("module.all_modules.3.Conv_0.weight"))
    _raises_one_line("missing 1 .*all_modules.3.Conv_0.weight", _load, path)


def test_extra_key(upstream_fixture):
    path = upstream_fixture("score_sde/vp-ddpm")
    _resave(path, lambda c: c["model"].update({"module.extra.weight": torch.zeros(3)}))
    _raises_one_line("unexpected 1 .*extra.weight", _load, path)


def test_ema_list_of_wrong_length_or_shape(upstream_fixture):
    path = upstream_fixture("score_sde/ve-ncsnpp-continuous")
    _resave(path, lambda c: c["ema"]["shadow_params"].pop())
    _raises_one_line("EMA list holds 215 tensors but the network has 216", _load, path)
    _load(path, ema=False)  # the raw weights need no EMA list

    def reshape_first(c):
        c["ema"]["shadow_params"].append(torch.zeros(1))
        c["ema"]["shadow_params"][0] = torch.zeros(5, 5)

    _resave(path, reshape_first)
    _raises_one_line(r"EMA entry 0 is \(5, 5\) but parameter all_modules.1.weight", _load, path)


def test_no_ema_in_checkpoint(upstream_fixture):
    path = upstream_fixture("score_sde/vp-ddpm")
    _resave(path, lambda c: c.pop("ema"))
    _raises_one_line("no EMA 'shadow_params'.*ema=False", _load, path)
    _load(path, ema=False)


def test_not_a_score_sde_checkpoint(upstream_fixture):
    path = upstream_fixture("score_sde/vp-ddpm")
    torch.save({"state_dict": {}}, path / CKPT)
    _raises_one_line("not a score_sde checkpoint", _load, path)


def test_unknown_config_name(upstream_fixture):
    path = upstream_fixture("score_sde/vp-ddpm")
    _raises_one_line("unknown config 've/cifar11_ncsnpp'", _load, path, config="ve/cifar11_ncsnpp")


class _Payload:
    """A class only this test module defines: unpickling it would need code."""


def test_pickle_needing_code_is_refused(upstream_fixture):
    path = upstream_fixture("score_sde/vp-ddpm")
    ckpt = torch.load(path / CKPT, map_location="cpu", weights_only=True)
    ckpt["step"] = _Payload()
    torch.save(ckpt, path / CKPT)
    # common.read_torch refuses it; on torch >= 2.6 its message says "not a readable checkpoint (Weights only load
    # failed ...)" because torch puts the offending GLOBAL on a later line than the one read_torch inspects
    _raises_one_line(f"(refused: unpickling .* needs code|{CKPT} is not a readable checkpoint)", _load, path)


# --- configurations no fixture covers: small networks written in score_sde's format -------------------------------
def _tiny_config(name: str, **model) -> dict:
    cfg = copy.deepcopy(PUBLISHED_CONFIGS[name])
    cfg["data"]["image_size"] = 8
    small = {"nf": 32 if cfg["model"]["name"] == "ddpm" else 8, "ch_mult": [1, 2], "num_res_blocks": 1}
    cfg["model"].update(small, attn_resolutions=[4], num_scales=50, **model)
    return cfg


def _write_checkpoint(directory: Path, cfg: dict, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised network saved the way score_sde saves it (EMA = the weights)."""
    torch.manual_seed(seed)
    arch, kwargs = network_spec(Config(cfg))
    net = ARCHS[arch](**kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():  # every layer non-trivial
            p.add_(0.05 * torch.randn_like(p))
    directory.mkdir(parents=True, exist_ok=True)
    trainable = [p for p in net.parameters() if p.requires_grad]
    ckpt = {
        "optimizer": {},
        "model": {f"module.{k}": v for k, v in net.state_dict().items()},
        "ema": {"decay": 0.999, "num_updates": 0, "shadow_params": [p.detach().clone() for p in trainable]},
        "step": 0,
    }
    torch.save(ckpt, directory / CKPT)
    (directory / "config.json").write_text(json.dumps(cfg))
    return net


@pytest.mark.parametrize("name", ["ve/cifar10_ncsnpp", "ve/cifar10_ddpm"])
def test_discrete_ve_conditions_on_the_level_index(tmp_path, name):
    """score_sde's discrete VE score_fn feeds the level index (0 = sigma_max) and returns the net's output."""
    net = _write_checkpoint(tmp_path, _tiny_config(name))
    model = _load(tmp_path)
    assert model.conditioning == "level"
    torch.testing.assert_close(model.levels, net.sigmas)
    x = torch.rand(3, 3, 8, 8)
    idx = torch.tensor([0, 17, 49])
    sigma = net.sigmas[idx]
    with torch.no_grad():
        expected = x + sigma.float().view(-1, 1, 1, 1) ** 2 * net(x, idx.float())
        torch.testing.assert_close(model(x, sigma), expected)
    res = sample(model, "kar1", nfe=10, seeds=range(2))
    assert res.nfe <= 10 and torch.isfinite(res.x).all()


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("ve/celebahq_256_ncsnpp_continuous", {}),  # output_skip / input_skip with FIR, sum
        ("ve/celebahq_256_ncsnpp_continuous", {"progressive_combine": "cat", "fir": False}),
        ("ve/cifar10_ncsnpp_continuous", {"progressive": "residual", "resblock_type": "ddpm"}),
        ("vp/cifar10_ddpmpp_continuous", {"resblock_type": "ddpm", "progressive_input": "input_skip"}),
        ("vp/ddpm/cifar10_continuous", {}),
    ],
)
def test_other_network_options_load_and_run(tmp_path, name, overrides):
    net = _write_checkpoint(tmp_path, _tiny_config(name, **overrides))
    model = _load(tmp_path)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    sigma = torch.tensor([0.1, 5.0], dtype=torch.float64)
    with torch.no_grad():
        out = model(x, sigma)
        raw = net(x * model.sde.sigma_scale(sigma).float().view(-1, 1, 1, 1), model.condition(sigma).float())
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert raw.shape == x.shape and raw.abs().max() > 0


def test_fir_resampling_matches_diffusers_port():
    """FIR up/downsampling (and the fused convolutions) equal diffusers' independent port of the same StyleGAN2 ops."""
    from diffusers.models.downsampling import FirDownsample2D, downsample_2d
    from diffusers.models.upsampling import FirUpsample2D, upsample_2d

    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    taps = (1.0, 3.0, 3.0, 1.0)
    torch.testing.assert_close(fir_upsample(x, taps), upsample_2d(x, list(taps), factor=2))
    torch.testing.assert_close(fir_downsample(x, taps), downsample_2d(x, list(taps), factor=2))
    for theirs, up in (
        (FirUpsample2D(4, 6, use_conv=True, fir_kernel=taps), True),
        (FirDownsample2D(4, 6, use_conv=True, fir_kernel=taps), False),
    ):
        ours = FirConv(4, 6, taps, up=up)
        ours.load_state_dict(theirs.Conv2d_0.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x))
