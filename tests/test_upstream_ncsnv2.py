"""`ncsnv2:PATH`: the ncsnv2 fixture reproduces the upstream's outputs; NCSN v1 round-trips; bad files fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models import load_model
from models.loaders import ARCHS, build_network
from models.upstream.common import Config
from models.upstream.ncsnv2 import CONFIG_SUMMARIES, PUBLISHED_CONFIGS, NCSNNet, NCSNv2Net, ncsnv2_arch_kwargs
from models.upstream.ncsnv2_nets import NORMALIZATIONS, VARIANTS
from samplers import SAMPLERS, sample

FIXTURE = "ncsnv2/cifar10"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture
def fixture_dir(upstream_fixture) -> Path:
    return upstream_fixture(FIXTURE)


def _reference(path: Path) -> dict[str, torch.Tensor]:
    data = np.load(path / "reference.npz")
    return {k: torch.from_numpy(data[k]) for k in data.files}


def _spec(path: Path) -> str:
    return f"ncsnv2:{path / 'checkpoint.pth'}"


def _denoise(model, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(ref["x"].float(), ref["sigma"])


def test_fixture_reproduces_reference(fixture_dir):
    ref = _reference(fixture_dir)
    model = load_model(_spec(fixture_dir))
    denoised = _denoise(model, ref)
    assert _rel(denoised, ref["denoised"]) < 1e-4
    # the network's part alone (sigma^2 score), sample by sample, so that the smallest levels count as well
    for i in range(len(ref["sigma"])):
        assert _rel(denoised[i] - ref["x"][i], ref["denoised"][i] - ref["x"][i]) < 1e-4


def test_raw_weights_do_not_reproduce_reference(fixture_dir):
    ref = _reference(fixture_dir)
    raw = load_model(_spec(fixture_dir), ema=False)
    assert _rel(_denoise(raw, ref), ref["denoised"]) > 1e-2


def test_levels_are_the_checkpoint_sigmas(fixture_dir):
    ref = _reference(fixture_dir)
    model = load_model(_spec(fixture_dir))
    sigmas = torch.load(fixture_dir / "checkpoint.pth", weights_only=True)[0]["module.sigmas"]
    assert model.levels.dtype == torch.float64 and torch.equal(model.levels, sigmas.double())
    assert torch.equal(model.condition(ref["sigma"]), ref["level"])
    assert model.sigma_max == float(sigmas[0]) and model.sigma_min == float(sigmas[-1])
    # a sigma between two levels is refused: the network knows only its levels
    between = (model.levels[10] * 0.99 + model.levels[11] * 0.01).reshape(1)
    with pytest.raises(ValueError, match="232 discrete noise levels"):
        model.condition(between)


def test_model_attributes_and_rebuild(fixture_dir):
    ref = _reference(fixture_dir)
    model = load_model(_spec(fixture_dir))
    assert model.process == "ve" and model.shape == (3, 32, 32) and model.data_range == (0.0, 1.0)
    assert model.dataset == "cifar10"
    assert model.config["model"]["ngf"] == 16
    # ncsnv2's ALD step is step_lr (sigma_i / sigma_L)^2 with noise sqrt(2 step): scorebench's eps = 2 step_lr
    assert model.sampler_defaults == {"ald": {"n_steps_each": 5, "eps": 2 * 6.2e-06, "denoise": True}}
    assert model.arch == "ncsnv2.ncsnv2" and ARCHS[model.arch] is NCSNv2Net
    kwargs = json.loads(json.dumps(model.arch_kwargs))
    assert kwargs["variant"] == "ncsnv2" and kwargs["ngf"] == 16 and kwargs["num_classes"] == 232
    net = build_network(model.arch, kwargs)
    net.load_state_dict(model.net.state_dict())
    net.eval()
    with torch.no_grad():
        x, sigma = ref["x"].float(), ref["sigma"]
        score = net(x, model.condition(sigma))
        rebuilt = x.double() + sigma.reshape(-1, 1, 1, 1) ** 2 * score.double()
    assert _rel(rebuilt, ref["denoised"]) < 1e-4


def test_ald_samples_within_budget(fixture_dir):
    model = load_model(_spec(fixture_dir))
    picks = torch.linspace(0, len(model.levels) - 1, 5).round().long()
    schedule = torch.cat([model.levels[picks], torch.zeros(1, dtype=torch.float64)])
    hyper = {**model.sampler_defaults["ald"], "n_steps_each": 1}
    res = sample(model, "ald", nfe=6, seeds=range(2), schedule=schedule, **hyper)
    assert res.nfe <= 6 and res.nfe == 6
    assert res.x.shape == (2, 3, 32, 32) and bool(torch.isfinite(res.x).all())
    # the registry's function on the same schedule, as a sampler would call it
    x = torch.randn(2, 3, 32, 32) * schedule[0]
    out = SAMPLERS["ald"].fn(model, x, schedule, **hyper)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


# --- bad input: each one ValueError with a one-line message ----------------------------------------------------
def _fails(spec: str, match: str, **options) -> None:
    with pytest.raises(ValueError, match=match) as err:
        load_model(spec, **options)
    assert "\n" not in str(err.value)


def _states(path: Path) -> list:
    return torch.load(path / "checkpoint.pth", weights_only=True)


def test_truncated_file(fixture_dir):
    ckpt = fixture_dir / "checkpoint.pth"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    _fails(_spec(fixture_dir), "not a readable checkpoint")


def test_config_not_matching_weights(fixture_dir):
    cfg = yaml.safe_load((fixture_dir / "config.yml").read_text())
    cfg["model"]["ngf"] = 32
    (fixture_dir / "config.yml").write_text(yaml.safe_dump(cfg))
    _fails(_spec(fixture_dir), "do not match the architecture")


def test_published_config_not_matching_weights(fixture_dir):
    _fails(_spec(fixture_dir), "do not match the architecture", config="cifar10")  # ngf 128 there


def test_sigmas_not_matching_config(fixture_dir):
    cfg = yaml.safe_load((fixture_dir / "config.yml").read_text())
    cfg["model"]["sigma_begin"] = 60
    (fixture_dir / "config.yml").write_text(yaml.safe_dump(cfg))
    _fails(_spec(fixture_dir), "sigmas")


@pytest.mark.parametrize("length", [1, 3, 6])
def test_list_of_wrong_length(fixture_dir, length):
    states = _states(fixture_dir)
    torch.save((states * 2)[:length], fixture_dir / "checkpoint.pth")
    _fails(_spec(fixture_dir), "5 entries")


def test_list_entry_of_wrong_type(fixture_dir):
    states = _states(fixture_dir)
    states[2] = "epoch"
    torch.save(states, fixture_dir / "checkpoint.pth")
    _fails(_spec(fixture_dir), "entry 2 should be the epoch")


def test_bare_state_dict(fixture_dir):
    torch.save(_states(fixture_dir)[0], fixture_dir / "checkpoint.pth")
    _fails(_spec(fixture_dir), "not an ncsnv2 checkpoint")


def test_missing_key(fixture_dir):
    states = _states(fixture_dir)
    del states[0]["module.end_conv.bias"]
    torch.save(states, fixture_dir / "checkpoint.pth")
    _fails(_spec(fixture_dir), "missing 1")


def test_extra_key(fixture_dir):
    states = _states(fixture_dir)
    states[0]["module.extra.weight"] = torch.zeros(3)
    torch.save(states, fixture_dir / "checkpoint.pth")
    _fails(_spec(fixture_dir), "unexpected 1")


def test_ema_missing_and_extra_key(fixture_dir):
    states = _states(fixture_dir)
    states[4]["extra.weight"] = states[4].pop("begin_conv.bias")
    torch.save(states, fixture_dir / "checkpoint.pth")
    _fails(_spec(fixture_dir), "EMA weights do not match")
    load_model(_spec(fixture_dir), ema=False)  # the raw weights are intact


def test_checkpoint_without_ema(fixture_dir):
    states = _states(fixture_dir)
    torch.save(states[:4], fixture_dir / "checkpoint.pth")
    _fails(_spec(fixture_dir), "no EMA weights")
    cfg = yaml.safe_load((fixture_dir / "config.yml").read_text())
    cfg["model"]["ema"] = False  # trained without EMA: ncsnv2 samples with the raw weights
    (fixture_dir / "config.yml").write_text(yaml.safe_dump(cfg))
    ref = _reference(fixture_dir)
    plain = _denoise(load_model(_spec(fixture_dir)), ref)
    raw = _denoise(load_model(_spec(fixture_dir), ema=False), ref)
    assert torch.equal(plain, raw)


def test_unknown_config_name(fixture_dir):
    _fails(_spec(fixture_dir), "unknown config 'cifar100'", config="cifar100")


def test_missing_config(fixture_dir):
    (fixture_dir / "config.yml").unlink()
    _fails(_spec(fixture_dir), "no config.yml")


def test_unknown_dataset(fixture_dir):
    cfg = yaml.safe_load((fixture_dir / "config.yml").read_text())
    cfg["data"]["dataset"] = "MNIST"
    (fixture_dir / "config.yml").write_text(yaml.safe_dump(cfg))
    _fails(_spec(fixture_dir), "no ncsnv2 architecture")


class Payload:
    """A class only this test defines: unpickling an instance of it needs code."""

    def __init__(self):
        self.weights = torch.zeros(2)


def test_pickle_that_needs_code(fixture_dir):
    states = _states(fixture_dir)
    states[1] = Payload()
    torch.save(states, fixture_dir / "checkpoint.pth")
    # common.read_torch words this "refused ... needs code" or, with torch versions whose first error line does not
    # name the global, "not a readable checkpoint"; either way nothing of the file is executed
    _fails(_spec(fixture_dir), "refused|not a readable checkpoint")


# --- every published config and every layout builds --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_published_configs_construct(name):
    cfg = Config(PUBLISHED_CONFIGS[name])
    assert CONFIG_SUMMARIES[name]
    with torch.device("meta"):
        if name.startswith("ncsn-"):
            net = NCSNNet(cfg.data.channels, cfg.model.ngf, cfg.model.num_classes)
            assert net.normalizer.embed.weight.shape == (10, 3 * cfg.model.ngf)
        else:
            kwargs = ncsnv2_arch_kwargs(cfg, name)
            net = NCSNv2Net(**kwargs)
            expected = {"CIFAR10": "ncsnv2", "CELEBA": "ncsnv2", "LSUN": "deeper", "FFHQ": "deepest"}
            assert kwargs["variant"] == expected[cfg.data.dataset]
            assert net.sigmas.shape == (cfg.model.num_classes,)
            assert hasattr(net, "res5") == (kwargs["variant"] != "ncsnv2")
            assert hasattr(net, "res31") == (kwargs["variant"] == "deepest")
    assert net.begin_conv.weight.shape == (cfg.model.ngf, cfg.data.channels, 3, 3)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_small_networks_run(variant, normalization):
    torch.manual_seed(0)
    net = NCSNv2Net(channels=3, ngf=4, num_classes=5, variant=variant, normalization=normalization, sigma_begin=5)
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 16, 16), torch.tensor([0.0, 4.0]))
    assert out.shape == (2, 3, 16, 16) and bool(torch.isfinite(out).all())


# --- NCSN v1 (ermongroup/ncsn: [model, optimizer], CondRefineNetDilated); no upstream fixture: a round trip -----
def _ncsn_v1_checkpoint(tmp_path: Path) -> tuple[Path, NCSNNet]:
    torch.manual_seed(1)
    net = NCSNNet(channels=1, ngf=8, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = json.loads(json.dumps(PUBLISHED_CONFIGS["ncsn-mnist"]))
    cfg["model"]["ngf"] = 8
    (tmp_path / "config.yml").write_text(yaml.safe_dump(cfg))
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save([state, {"state": {}, "param_groups": []}], tmp_path / "checkpoint.pth")
    return tmp_path / "checkpoint.pth", net.eval()


def test_ncsn_v1_round_trip(tmp_path):
    path, net = _ncsn_v1_checkpoint(tmp_path)
    model = load_model(f"ncsnv2:{path}")
    assert model.arch == "ncsnv2.ncsn" and ARCHS[model.arch] is NCSNNet
    assert model.shape == (1, 28, 28) and model.dataset == "mnist" and model.data_range == (0.0, 1.0)
    expected_levels = torch.tensor(np.exp(np.linspace(np.log(1.0), np.log(0.01), 10)))
    assert torch.allclose(model.levels, expected_levels, rtol=1e-12, atol=0)
    assert model.sampler_defaults == {"ald": {"n_steps_each": 100, "eps": 4e-05, "denoise": False}}
    x = torch.rand(3, 1, 28, 28)
    sigma = model.levels[[0, 4, 9]]
    with torch.no_grad():
        denoised = model(x, sigma)
        score = net(x, torch.tensor([0.0, 4.0, 9.0]))
    assert _rel(denoised, x.double() + sigma.reshape(-1, 1, 1, 1) ** 2 * score.double()) < 1e-6
    # the normalisations are conditioned on the level: the same input scores differently at another level
    with torch.no_grad():
        assert not torch.allclose(net(x[:1], torch.tensor([0.0])), net(x[:1], torch.tensor([9.0])))
    rebuilt = build_network(model.arch, json.loads(json.dumps(model.arch_kwargs)))
    rebuilt.load_state_dict(model.net.state_dict())


def test_ncsn_v1_bad_state(tmp_path):
    path, _ = _ncsn_v1_checkpoint(tmp_path)
    state, optimizer = torch.load(path, weights_only=True)
    del state["module.refine1.crp.norms.0.embed.weight"]
    torch.save([state, optimizer], path)
    _fails(f"ncsnv2:{path}", "missing 1")
