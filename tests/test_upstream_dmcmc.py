"""`dmcmc:PATH` (1202kbs/DMCMC noise-level classifiers): the fixture reproduces its reference logits and levels, the
256x256 variant round-trips, DLG runs with the classifier, and every bad input is one ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.noise_classifier import classifier_for, load_noise_classifier, noise_grid
from models.processes import VEProcess
from models.unet import UNet
from models.upstream.dmcmc import DMCMCNoiseClassifier, SimpleCNN, load_classifier
from models.wrappers import NetworkDenoiser
from samplers import sample

FIXTURE = "dmcmc/cifar10-classifier"
CKPT = "200.pt"


def save_dmcmc(path, net: torch.nn.Module, epoch: int = 100) -> None:
    """As DMCMC's training notebook saves: {'epoch', 'opt' (Adam state after a step), 'net'}."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.zeros(1, 3, net.image_size, net.image_size)).sum().backward()
    opt.step()
    torch.save({"epoch": epoch, "opt": opt.state_dict(), "net": net.state_dict()}, path)


def image_model(size: int, sigma_max: float, data_range=(0.0, 1.0), net=None) -> NetworkDenoiser:
    """A VE score model on 3 x size x size images (a tiny UNet with random weights unless `net` is given)."""
    if net is None:
        torch.manual_seed(0)
        net = UNet(3, channels=8, channel_mult=(1, 2), attention=False, emb_dim=16, precondition="ve_score")
    return NetworkDenoiser(
        net,
        VEProcess(0.01, sigma_max),
        prediction="score",
        conditioning="sigma",
        shape=(3, size, size),
        data_range=data_range,
    )


def test_fixture_reproduces_the_reference(upstream_fixture):
    root = upstream_fixture(FIXTURE)
    ref = np.load(root / "reference.npz")
    clf = load_noise_classifier(f"dmcmc:{root / CKPT}", sigma_max=50)
    assert isinstance(clf, DMCMCNoiseClassifier) and clf.kind == "dmcmc" and clf.shape == (3, 32, 32)
    assert clf.net.image_size == 32 and clf.data_range == (0.0, 1.0)
    with torch.no_grad():
        log_post = clf(torch.from_numpy(ref["x"]).float()).double()
    expected = torch.log_softmax(torch.from_numpy(ref["logits"]), 1)
    err = float((log_post - expected).abs().max() / expected.abs().max())
    print(f"\ndmcmc/cifar10-classifier: log-posterior max relative error {err:.2e}")
    assert err < 1e-4
    assert torch.equal(log_post.argmax(1), expected.argmax(1))
    levels = torch.from_numpy(ref["levels"])
    assert float((clf.sigmas - levels).abs().max()) <= 1e-10
    torch.testing.assert_close(clf.sigmas, noise_grid(0.01, 50.0), rtol=1e-6, atol=0)
    # CIFAR-10's sigma_max is the default for a 32x32 classifier
    assert torch.equal(load_classifier(root / CKPT).sigmas, clf.sigmas)


def test_classifier_for_takes_the_models_sigma_max(upstream_fixture):
    root = upstream_fixture(FIXTURE)
    clf = classifier_for(image_model(32, 80.0), f"dmcmc:{root / CKPT}")
    assert isinstance(clf, DMCMCNoiseClassifier) and float(clf.sigmas[0]) == pytest.approx(80.0, rel=1e-6)
    torch.testing.assert_close(clf.sigmas, noise_grid(0.01, 80.0), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="takes data in"):
        classifier_for(image_model(32, 80.0, data_range=(-1.0, 1.0)), f"dmcmc:{root / CKPT}")


def test_256_classifier_round_trips_and_is_recognised(tmp_path):
    torch.manual_seed(1)
    net = SimpleCNN(image_size=256)
    path = tmp_path / "100.pt"
    save_dmcmc(path, net)
    x = torch.rand(2, 3, 256, 256) + 0.3 * torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        expected = torch.log_softmax(net(x), 1)

    clf = load_classifier(path, image_size=256)
    assert clf.net.image_size == 256 and clf.shape == (3, 256, 256)
    assert float(clf.sigmas[0]) == pytest.approx(348.0, rel=1e-6)  # CelebA-HQ's, the default at 256
    with torch.no_grad():
        torch.testing.assert_close(clf(x), expected)

    # DLG's lookup takes the variant and the grid from the model (the call-free lambda is never evaluated here)
    model = image_model(256, 348.0, net=lambda x, c: torch.zeros_like(x))
    found = classifier_for(model, f"dmcmc:{path}")
    assert found.net.image_size == 256 and found.shape == model.shape
    with torch.no_grad():
        torch.testing.assert_close(found(x), expected)
    # the 32x32 reading of the same weights refuses 256x256 images
    with pytest.raises(ValueError, match="images of shape"):
        load_classifier(path)(x)


def test_dlg_runs_with_the_dmcmc_classifier(upstream_fixture):
    root = upstream_fixture(FIXTURE)
    model = image_model(32, 50.0).eval().requires_grad_(False)
    # two outputs per chain: two seeds are one whole chain (a partial chain would charge its unused outputs' NFE)
    spec = f"dmcmc:{root / CKPT}"
    res = sample(model, "dlg+kar1", nfe=12, seeds=range(2), classifier=spec, outputs_per_chain=2)
    print(f"\ndlg+kar1 with the DMCMC classifier: measured NFE {res.nfe} (budget 12)")
    assert res.nfe <= 12 and res.x.shape == (2, 3, 32, 32) and bool(torch.isfinite(res.x).all())
    assert res.extras["classifier_evals"] == 2  # n_skip classifier calls per output, besides the burn-in's


class Opaque:
    """Unpickling this needs this module's code."""

    def __init__(self):
        self.weights = torch.zeros(3)


def _rewrite(edit):
    def apply(root):
        ckpt = torch.load(root / CKPT, weights_only=True)
        torch.save(edit(ckpt), root / CKPT)

    return apply


def _truncated(root):
    data = (root / CKPT).read_bytes()
    (root / CKPT).write_bytes(data[: len(data) // 3])


def _drop(key):
    def edit(ckpt):
        del ckpt["net"][key]
        return ckpt

    return edit


def _extra(ckpt):
    ckpt["net"]["bn.weight"] = torch.ones(32)
    return ckpt


def _gray(ckpt):
    ckpt["net"]["conv1.weight"] = ckpt["net"]["conv1.weight"][:, :1]
    return ckpt


@pytest.mark.parametrize(
    "break_it, spec, options, message",
    [
        (_truncated, "dmcmc:{}", {}, "not a readable checkpoint"),
        (_rewrite(lambda c: Opaque()), "dmcmc:{}", {}, "needs code|not a readable checkpoint"),  # common.read_torch
        (_rewrite(lambda c: list(c.values())), "dmcmc:{}", {}, "'epoch', 'opt', 'net'"),
        (_rewrite(lambda c: {"epoch": 1, "opt": {}}), "dmcmc:{}", {}, "'epoch', 'opt', 'net'"),
        (_rewrite(lambda c: {**c, "net": [1, 2]}), "dmcmc:{}", {}, "not a state dict"),
        (_rewrite(_drop("fc.bias")), "dmcmc:{}", {}, "missing 1"),
        (_rewrite(_extra), "dmcmc:{}", {}, "unexpected 1"),
        (_rewrite(_gray), "dmcmc:{}", {}, "wrong shape 1"),
        (None, "dmcmc:{}", {"sigma_max": 0.005}, "sigma_min < sigma_max"),
        (None, "dmcmc:{}", {"image_size": 64}, "not image_size=64"),
        (None, "dmcmc:", {}, "no path"),
        (None, "dmcmc:{}.missing", {}, "no such file"),
        (None, "{}", {"sigma_max": 50.0}, "dmcmc:PATH classifiers only"),
    ],
)
def test_bad_input_is_one_value_error(upstream_fixture, break_it, spec, options, message):
    root = upstream_fixture(FIXTURE)
    if break_it is not None:
        break_it(root)
    with pytest.raises(ValueError, match=message) as info:
        load_noise_classifier(spec.format(root / CKPT), **options)
    assert "\n" not in str(info.value)


def test_model_of_another_size_is_refused(upstream_fixture):
    root = upstream_fixture(FIXTURE)
    with pytest.raises(ValueError, match="not image_size=64"):
        classifier_for(image_model(64, 50.0, net=lambda x, c: x), f"dmcmc:{root / CKPT}")
