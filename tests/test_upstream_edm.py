"""edm:PATH: NVlabs/edm network pickles read without running them, rebuilt from scorebench's networks.

Ground truth: the fixture edm/vp-songunet (a VPPrecond + SongUNet pickled by EDM's own code, with EDM's outputs).
The other architectures have no upstream fixture; they are pickled here in EDM's layout (each network object reduced
to torch_utils.persistence._reconstruct_persistent_obj(meta), as EDM's persistence does) and checked against
closed-form properties: the preconditioning scalings of Karras et al. 2022, Table 1, and per-sample independence.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import subprocess
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_model
from models.loaders import build_network
from models.processes import VPProcess
from models.upstream import edm_nets
from models.upstream.edm_unpickle import read_network_pickle
from models.wrappers import NetworkDenoiser
from samplers import sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURE = "edm/vp-songunet"
PICKLE = "network-snapshot.pkl"


def rel_error(out: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    out = out.detach().double().numpy() if isinstance(out, torch.Tensor) else out
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture
def fixture_pickle(upstream_fixture) -> Path:
    return upstream_fixture(FIXTURE) / PICKLE


@pytest.fixture
def reference(fixture_pickle) -> dict[str, np.ndarray]:
    return dict(np.load(fixture_pickle.parent / "reference.npz"))


# --- pickles in EDM's layout, written here ----------------------------------------------------------------------
class Persistent:
    """A stand-in object that pickles as an EDM persistent object of any class name (e.g. a loss function)."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state


@pytest.fixture
def marker(tmp_path) -> Path:
    """A file that the embedded module source (and every hostile pickle below) would create if it were run."""
    return tmp_path / "MARKER"


@pytest.fixture
def edm_pickle(tmp_path, monkeypatch, marker):
    """dump(net, init_kwargs, ...) -> path: `net` (a tree of edm_nets modules) pickled as EDM's training loop does.

    `rename` maps module paths ('' = the top) to the class name recorded for them; `extra` adds snapshot entries.
    The embedded module source creates `marker` if anyone executes it.
    """
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what pickle names; never called by the reader under test
        raise AssertionError("EDM's reconstruct function was called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    source = f"open({str(marker)!r}, 'w').close()\n"
    network_classes = tuple(edm_nets.CLASSES.values())

    def dump(net, init_kwargs: dict, *, name: str = PICKLE, rename: dict | None = None, extra: dict | None = None):
        paths = {id(module): path for path, module in net.named_modules()}
        rename = rename or {}

        class Pickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, Persistent):
                    class_name, state = obj.class_name, dict(obj.state)
                elif type(obj) in network_classes:
                    path = paths.get(id(obj))
                    class_name, state = rename.get(path, type(obj).__name__), dict(obj.__dict__)
                    state["_init_args"], state["_init_kwargs"] = (), init_kwargs if path == "" else {}
                else:
                    return NotImplemented
                meta = dict(type="class", version=6, module_src=source, class_name=class_name, state=state)
                return _reconstruct_persistent_obj, (meta,)

        data = {"ema": net, "loss_fn": None, "augment_pipe": None, "dataset_kwargs": {"resolution": 8}, **(extra or {})}
        path = tmp_path / name
        with path.open("wb") as file:
            Pickler(file).dump(data)
        return path

    return dump


def perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved by seeded noise, so that no zero-initialised layer is trivially zero (as the fixtures)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return net.eval()


NCSNPP = dict(  # NCSN++ flavour of SongUNet (EDM's --arch=ncsnpp), tiny
    model_type="SongUNet",
    embedding_type="fourier",
    channel_mult_noise=2,
    encoder_type="residual",
    decoder_type="standard",
    resample_filter=[1, 3, 3, 1],
    model_channels=8,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[4],
    dropout=0.0,
)
ADM = dict(model_type="DhariwalUNet", model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])


def tiny(cls: type, seed: int = 0, **kwargs) -> tuple[edm_nets.Precond, dict]:
    init_kwargs = dict(img_resolution=8, img_channels=3, **kwargs)
    torch.manual_seed(seed)
    return perturbed(cls(**init_kwargs), seed), init_kwargs


def noisy_batch(sigma: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sigma = torch.tensor(sigma, dtype=torch.float64)
    x0 = torch.rand(len(sigma), 3, 8, 8, generator=gen) * 2 - 1
    return x0 + sigma.float().reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen), sigma


# --- the upstream fixture ----------------------------------------------------------------------------------------
def test_fixture_reproduces_edm_denoiser(fixture_pickle, reference):
    model = load_model(f"edm:{fixture_pickle}")
    x, sigma = torch.tensor(reference["x"], dtype=torch.float32), torch.tensor(reference["sigma"])
    with torch.no_grad():
        denoised = model(x, sigma)
    assert rel_error(denoised, reference["denoised"]) < 1e-4
    assert denoised.dtype == torch.float32 and denoised.shape == x.shape
    assert model.process == "vp" and model.data_range == (-1.0, 1.0) and model.shape == (3, 16, 16)
    sigma_min, sigma_max = (math.sqrt(math.expm1(0.5 * 19.9 * t**2 + 0.1 * t)) for t in (1e-5, 1.0))
    assert model.sigma_min == pytest.approx(sigma_min, rel=1e-9) and model.sigma_max == pytest.approx(sigma_max)
    assert isinstance(model.sde, VPProcess) and (model.sde.beta_min, model.sde.beta_max) == (0.1, 20.0)
    assert model.arch == "edm.vp" and model.dataset is None
    assert model.config == {
        "img_resolution": 16,
        "img_channels": 3,
        "label_dim": 0,
        "model_type": "SongUNet",
        "model_channels": 16,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "attn_resolutions": [8],
        "dropout": 0.0,
    }


def test_fixture_is_convertible(fixture_pickle, reference):
    model = load_model(f"edm:{fixture_pickle}")
    net = build_network(model.arch, json.loads(json.dumps(model.arch_kwargs)))
    net.load_state_dict(model.net.state_dict())
    rebuilt = NetworkDenoiser(net.eval(), model.sde, prediction="x0", conditioning="sigma", shape=model.shape)
    x, sigma = torch.tensor(reference["x"], dtype=torch.float32), torch.tensor(reference["sigma"])
    with torch.no_grad():
        assert rel_error(rebuilt(x, sigma), reference["denoised"]) < 1e-4


def test_fixture_samples_with_kar1(fixture_pickle):
    model = load_model(f"edm:{fixture_pickle}")
    res = sample(model, "kar1", nfe=9, seeds=range(2))
    assert 1 <= res.nfe <= 9
    assert res.x.shape == (2, 3, 16, 16) and bool(torch.isfinite(res.x).all())


def test_fixture_takes_no_class_label(fixture_pickle):
    with pytest.raises(ValueError, match="unconditional") as err:
        load_model(f"edm:{fixture_pickle}", class_labels=3)
    assert "\n" not in str(err.value)


# --- nothing in a file runs ---------------------------------------------------------------------------------------
class Hostile:
    """Pickles as a call of `call(*args)`: what an attacker's network pickle would carry."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize(
    ("call", "named"),
    [("os.system", "system"), ("subprocess.call", "subprocess.call"), ("exec", "builtins.exec"), ("eval", "eval")],
)
def test_refuses_pickle_that_runs_code(tmp_path, marker, call, named):
    payload = {
        "os.system": Hostile(os.system, f"touch {marker}"),
        "subprocess.call": Hostile(subprocess.call, ["touch", str(marker)]),
        "exec": Hostile(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "eval": Hostile(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
    }[call]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": payload, "loss_fn": None}))
    with pytest.raises(ValueError, match=f"refused.*{named}") as err:
        load_model(f"edm:{path}")
    assert "\n" not in str(err.value) and "nothing in it was run" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reader_reads_tensors_and_numpy_data(tmp_path, protocol):
    data = {
        "view": torch.arange(6.0).reshape(2, 3)[:, 1:],
        "parameter": torch.nn.Parameter(torch.ones(2)),
        "array": np.asfortranarray(np.arange(6).reshape(2, 3)),
        "scalar": np.float32(0.5),
        "containers": [{1, 2}, frozenset([3]), (4,), b"bytes", None],
    }
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    read = read_network_pickle(path, "test")
    assert torch.equal(read["view"], data["view"]) and torch.equal(read["parameter"], torch.ones(2))
    assert np.array_equal(read["array"], data["array"]) and read["scalar"] == np.float32(0.5)
    assert read["containers"] == data["containers"]


class NotANetwork:
    """A class defined here: unpickling an instance needs this module's code."""

    def __init__(self):
        self.weights = torch.ones(2)


@pytest.mark.parametrize(
    ("obj", "named"),
    [
        (Fraction(1, 3), "fractions.Fraction"),
        (NotANetwork(), "NotANetwork"),
        (torch.nn.Linear(2, 2), "Linear"),
        (np.array([None, 1], dtype=object), "numpy dtype 'O"),
    ],
)
def test_refuses_classes_outside_the_allow_list(tmp_path, obj, named):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"ema": obj}))
    with pytest.raises(ValueError, match=f"refused .*{named}"):
        load_model(f"edm:{path}")


def test_refuses_torch_save_of_an_object_needing_code(tmp_path):
    path = tmp_path / "saved.pkl"
    torch.save({"ema": NotANetwork()}, path)
    with pytest.raises(ValueError, match="torch.save archive, not an EDM network pickle"):
        load_model(f"edm:{path}")


def test_refuses_unsupported_persistent_classes(edm_pickle, marker):
    net, kwargs = tiny(edm_nets.VEPrecond, **NCSNPP)
    with pytest.raises(ValueError, match="unsupported network class 'StyleGANPrecond'"):
        load_model(f"edm:{edm_pickle(net, kwargs, rename={'': 'StyleGANPrecond'})}")
    with pytest.raises(ValueError, match="model.enc.8x8_block0 is an unsupported network class 'Backdoor'"):
        load_model(f"edm:{edm_pickle(net, kwargs, rename={'model.enc.8x8_block0': 'Backdoor'})}")
    with pytest.raises(ValueError, match="bare U-Net 'SongUNet'"):
        load_model(f"edm:{edm_pickle(net.model, {}, name='bare.pkl')}")
    assert not marker.exists()


def test_refuses_truncated_file(fixture_pickle):
    data = fixture_pickle.read_bytes()
    fixture_pickle.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable EDM network pickle") as err:
        load_model(f"edm:{fixture_pickle}")
    assert "\n" not in str(err.value)


def test_refuses_missing_file_and_snapshot_without_ema(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_model(f"edm:{tmp_path / 'absent.pkl'}")
    path = tmp_path / "no-ema.pkl"
    path.write_bytes(pickle.dumps({"net": None, "dataset_kwargs": {}}))
    with pytest.raises(ValueError, match="no 'ema' network"):
        load_model(f"edm:{path}")


def test_refuses_weights_that_do_not_fit_the_arguments(edm_pickle):
    net, kwargs = tiny(edm_nets.VEPrecond, **NCSNPP)
    with pytest.raises(ValueError, match="do not match the architecture.*wrong shape"):
        load_model(f"edm:{edm_pickle(net, {**kwargs, 'model_channels': 16})}")
    with pytest.raises(ValueError, match="cannot build its VEPrecond.*channel_multiplier"):
        load_model(f"edm:{edm_pickle(net, {**kwargs, 'channel_multiplier': 2})}")

    net.model.map_layer0.register_buffer("stray", torch.zeros(2))
    with pytest.raises(ValueError, match="unexpected 1 .*model.map_layer0.stray"):
        load_model(f"edm:{edm_pickle(net, kwargs)}")
    del net.model.map_layer0.stray
    net.model.map_layer0.bias = None
    with pytest.raises(ValueError, match="missing 1 .*model.map_layer0.bias"):
        load_model(f"edm:{edm_pickle(net, kwargs)}")


# --- snapshots in EDM's layout, every preconditioner and U-Net ---------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kwargs", "arch"),
    [
        (edm_nets.VEPrecond, NCSNPP, "edm.ve"),
        (edm_nets.VEPrecond, {**NCSNPP, "encoder_type": "skip", "decoder_type": "skip"}, "edm.ve"),
        (edm_nets.VPPrecond, {**NCSNPP, "embedding_type": "positional", "channel_mult_noise": 1}, "edm.vp"),
        (edm_nets.EDMPrecond, ADM, "edm.edm"),
        (edm_nets.iDDPMPrecond, ADM, "edm.iddpm"),
    ],
)
def test_round_trip_through_edm_layout(edm_pickle, marker, cls, kwargs, arch):
    net, init_kwargs = tiny(cls, **kwargs)
    model = load_model(f"edm:{edm_pickle(net, init_kwargs)}")
    assert model.arch == arch and model.config == init_kwargs and model.shape == (3, 8, 8)
    assert type(model.net) is cls
    x, sigma = noisy_batch([0.01, 0.3, 2.0, 20.0])
    with torch.no_grad():
        expected = net.edm_denoise(x, sigma)
        assert torch.allclose(model(x, sigma), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
        # each sample's denoising is independent of the others in its batch (norms, attention heads per sample)
        alone = torch.cat([model(x[i : i + 1], sigma[i : i + 1]) for i in range(len(sigma))])
        assert torch.allclose(alone, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert not marker.exists()


def test_snapshot_extras_are_ignored_and_dataset_named(edm_pickle):
    net, kwargs = tiny(edm_nets.EDMPrecond, **ADM)
    extra = {
        "loss_fn": Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}),
        "augment_pipe": Persistent("AugmentPipe", {"p": np.float64(0.12), "xflip": 100000000}),
        "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "datasets/cifar10-32x32.zip"},
        "stats": {"mean": np.arange(3.0), "count": np.int64(7)},  # numpy data is read (and ignored here)
    }
    model = load_model(f"edm:{edm_pickle(net, kwargs, extra=extra)}")
    assert model.dataset == "cifar10"
    assert (model.sigma_min, model.sigma_max) == (0.002, 80.0) and model.process == "ve"


def test_class_conditional_network(edm_pickle):
    net, kwargs = tiny(edm_nets.EDMPrecond, label_dim=4, class_labels=0, **ADM)
    kwargs.pop("class_labels")
    path = edm_pickle(net, kwargs)
    with pytest.raises(ValueError, match="needs class_labels=K"):
        load_model(f"edm:{path}")
    with pytest.raises(ValueError, match=r"class index in 0\.\.3, got 4"):
        load_model(f"edm:{path}", class_labels=4)
    x, sigma = noisy_batch([0.5, 0.5])
    outputs = []
    for label in (1, 2):
        model = load_model(f"edm:{path}", class_labels=label)
        assert model.arch_kwargs == {**kwargs, "class_labels": label} and model.config == kwargs
        with torch.no_grad():
            outputs.append(model(x, sigma))
            one_hot = torch.nn.functional.one_hot(torch.tensor([label, label]), 4).float()
            assert torch.allclose(outputs[-1], net.edm_denoise(x, sigma, one_hot), atol=1e-6)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)  # the label reaches the network


# --- preconditioning against Karras et al. 2022, Table 1 ---------------------------------------------------------
def test_vp_scalings_invert_the_schedule():
    net, _ = tiny(edm_nets.VPPrecond, **{**NCSNPP, "embedding_type": "positional", "channel_mult_noise": 1})
    t = torch.tensor([0.05, 0.3, 0.9], dtype=torch.float64)
    sigma = VPProcess(0.1, 20.0).sigma(t).float().reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = net.scalings(sigma)
    assert c_skip == 1 and torch.equal(c_out, -sigma)
    assert torch.allclose(c_in, 1 / torch.sqrt(1 + sigma**2))
    assert torch.allclose(c_noise.flatten().double(), 999 * t, rtol=1e-4)


def test_ve_scalings():
    net, _ = tiny(edm_nets.VEPrecond, **NCSNPP)
    sigma = torch.tensor([2.0, 10.0]).reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = net.scalings(sigma)
    assert (c_skip, c_in) == (1, 1) and torch.equal(c_out, sigma)
    assert torch.allclose(c_noise.flatten(), torch.tensor([0.0, math.log(5.0)]))


def test_edm_scalings_and_skip_connection():
    net, _ = tiny(edm_nets.EDMPrecond, **ADM)
    c_skip, c_out, c_in, c_noise = net.scalings(torch.full((1, 1, 1, 1), 0.5))  # sigma = sigma_data
    expected = (0.5, math.sqrt(2) / 4, math.sqrt(2), math.log(0.5) / 4)
    assert [float(c) for c in (c_skip, c_out, c_in, c_noise)] == pytest.approx(expected)
    with torch.no_grad():  # F = 0: D is the skip path c_skip x = x sigma_data^2 / (sigma^2 + sigma_data^2)
        net.model.out_conv.weight.zero_()
        net.model.out_conv.bias.zero_()
        x, sigma = noisy_batch([0.1, 1.0])
        skip = x * (0.25 / (sigma**2 + 0.25)).float().reshape(-1, 1, 1, 1)
        assert torch.allclose(net.edm_denoise(x, sigma), skip, atol=1e-6)


def test_iddpm_levels_and_process():
    net, kwargs = tiny(edm_nets.iDDPMPrecond, **ADM)
    u, M = net.u.double(), net.M
    assert u[M] == 0 and bool((u[:-1] > u[1:]).all())
    alpha_bar = [math.sin(0.5 * math.pi * j / M / (1 + net.C_2)) ** 2 for j in (M - 1, M)]
    ratio = alpha_bar[0] / alpha_bar[1]  # u_{M-1}^2 + 1 = 1 / ratio at the last step (float32 in EDM, so loosely)
    assert float(u[M - 1]) == pytest.approx(math.sqrt(1 / ratio - 1), rel=1e-3)
    sde = net.process()  # DDPM index k sits at level u_{M-1-k}
    t = torch.arange(1, M + 1, dtype=torch.float64) / M
    assert torch.allclose(sde.sigma(t), u[:-1].flip(0), rtol=1e-5)
    assert net.sigma_range() == (float(net.u[M - 1]), float(net.u[0]))
    j = torch.tensor([0, 10, 500, M - 1])
    *_, c_noise = net.scalings(net.u[j].reshape(-1, 1, 1, 1))
    assert torch.equal(c_noise.flatten(), (M - 1 - j).float())
    assert net.model.out_conv.out_channels == 6  # the U-Net also predicts the variances


def test_resample_filters_keep_constants():
    """EDM's FIR resampling preserves a constant image away from the borders, for [1,1] and [1,3,3,1]."""
    for taps in ([1, 1], [1, 3, 3, 1]):
        down = edm_nets.Conv2d(2, 2, kernel=0, down=True, resample_filter=taps)
        up = edm_nets.Conv2d(2, 2, kernel=0, up=True, resample_filter=taps)
        x = torch.full((1, 2, 8, 8), 0.7)
        assert down(x).shape == (1, 2, 4, 4) and torch.allclose(down(x)[..., 1:-1, 1:-1], x[..., :2, :2])
        assert up(x).shape == (1, 2, 16, 16) and torch.allclose(up(x)[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 0.7))
