"""Noise-level classifiers: p(sigma_j | x) over a discrete geometric grid of noise levels (VE: x = x0 + sigma eps).

DLG (samplers.dlg) alternates Langevin steps on x | sigma with a draw of sigma | x; these modules give that
conditional. Every classifier maps x [B, *shape] to a log-posterior [B, L] over its grid `sigmas` [L] (float64,
decreasing: level 0 is the largest sigma), with a uniform prior over the levels.

- `ExactNoiseClassifier`: the true posterior of an analytic model (GaussianMixture.level_log_posterior).
- `LearnedNoiseClassifier`: a small network (CNN for images, MLP for vectors) trained with cross-entropy on
  x0 + sigma_y eps, y uniform over the grid (bench.train_classifier; `scorebench train classifier`). Saved as a
  directory with `model.safetensors` + `config.json`.

The grid follows the reference implementation of Kim & Ye (2023): t = linspace(1, t_floor, L) mapped through the VE
schedule sigma_min (sigma_max / sigma_min)^t, so level 0 is sigma_max and the last level sits just above sigma_min.

How DLG finds a model's classifier (`classifier_for`), first match wins:
1. the `classifier` hyper-parameter: "exact", a path to a classifier directory, or `dmcmc:PATH` (a 1202kbs/DMCMC
   classifier file, models.upstream.dmcmc: its level grid ends at the model's sigma_max, its image size is the
   model's);
2. an analytic model (it has a `.mixture`): the exact posterior over `noise_grid(model.sigma_min, model.sigma_max)`;
3. a `noise_classifier` attribute on the model (a path; a checkpoint loader may set it from config.json);
4. a classifier shipped for the model's dataset: models/checkpoints/<dataset>-noise-classifier/.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .checkpoint_dir import write_checkpoint_dir
from .gmm import GaussianMixture

__all__ = [
    "noise_grid",
    "NoiseClassifier",
    "ExactNoiseClassifier",
    "LearnedNoiseClassifier",
    "build_classifier_net",
    "load_noise_classifier",
    "classifier_for",
    "CHECKPOINTS",
    "FORMAT",
]

FORMAT = "scorebench-noise-classifier"
WEIGHTS, CONFIG = "model.safetensors", "config.json"
CHECKPOINTS = Path(__file__).parent / "checkpoints"
DEFAULT_LEVELS = 1000
T_FLOOR = 1e-3  # the reference grid's smallest t: t = linspace(1, 1e-3, 1000)


def noise_grid(sigma_min: float, sigma_max: float, n: int = DEFAULT_LEVELS, t_floor: float = T_FLOOR) -> Tensor:
    """n geometric noise levels, decreasing from sigma_max: sigma_min (sigma_max / sigma_min)^t, t = 1 .. t_floor."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"a noise grid needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if n < 2:
        raise ValueError(f"a noise grid needs at least 2 levels, got {n}")
    t = torch.linspace(1.0, t_floor, n, dtype=torch.float64)
    return sigma_min * (sigma_max / sigma_min) ** t


class NoiseClassifier(nn.Module):
    """log p(sigma_j | x) over the grid `sigmas` [L] (a float64 buffer, decreasing); forward(x) -> [B, L]."""

    kind = "abstract"

    def __init__(self, sigmas: Tensor):
        super().__init__()
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        if sigmas.ndim != 1 or sigmas.numel() < 2 or not bool((sigmas[1:] < sigmas[:-1]).all()):
            raise ValueError("a classifier's noise grid must be a decreasing 1-D tensor of at least 2 levels")
        self.register_buffer("sigmas", sigmas, persistent=False)

    @property
    def n_levels(self) -> int:
        return self.sigmas.numel()

    def log_posterior(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.log_posterior(x)


class ExactNoiseClassifier(NoiseClassifier):
    """The true posterior over the grid of an analytic model (a Gaussian mixture in VE terms)."""

    kind = "exact"

    def __init__(self, mixture: GaussianMixture, sigmas: Tensor):
        super().__init__(sigmas)
        self.mixture = mixture
        # per device: the mixture there and its grid terms, computed once (not on every Gibbs step)
        self._on_device: dict[torch.device, tuple[GaussianMixture, Tensor]] = {}

    def log_posterior(self, x: Tensor) -> Tensor:
        if x.device not in self._on_device:
            mixture = self.mixture.to(x.device)
            self._on_device[x.device] = (mixture, mixture.level_terms(self.sigmas.to(x.device)))
        mixture, terms = self._on_device[x.device]
        return mixture.level_log_posterior(x.reshape(x.shape[0], -1), self.sigmas, terms=terms)


# --- learned classifiers ------------------------------------------------------------------------------------------
def _scale_features(x: Tensor) -> tuple[Tensor, Tensor]:
    """x normalised to unit RMS per sample, and log RMS [B]: the noise level spans decades, the net sees both."""
    rms = x.flatten(1).pow(2).mean(1).add(1e-12).sqrt()
    return x / rms.reshape(-1, *([1] * (x.ndim - 1))), torch.log(rms)


class MLPNet(nn.Module):
    """Vectors [d]: an MLP over the unit-RMS input and its log RMS, one logit per level."""

    def __init__(self, shape: list[int], levels: int, width: int = 256, depth: int = 3):
        super().__init__()
        dim = math.prod(shape)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(dim + 1 if i == 0 else width, width), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, levels)

    def forward(self, x: Tensor) -> Tensor:
        z, log_rms = _scale_features(x.flatten(1))
        return self.head(self.body(torch.cat([z, log_rms[:, None]], 1)))


class CNNNet(nn.Module):
    """Images [C, H, W]: conv-ReLU-avgpool stages (as the reference's 4-layer CNN) over the unit-RMS image plus a
    constant log-RMS plane, then a linear layer to one logit per level."""

    def __init__(self, shape: list[int], levels: int, width: int = 32, depth: int = 3):
        super().__init__()
        channels, height, width_px = shape
        stages: list[nn.Module] = []
        c_in = channels + 1
        for i in range(depth):
            c_out = width * 2**i
            stages += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            if min(height, width_px) >= 2:
                stages.append(nn.AvgPool2d(2))
                height, width_px = height // 2, width_px // 2
            c_in = c_out
        self.body = nn.Sequential(*stages)
        self.head = nn.Linear(c_in * height * width_px + 1, levels)

    def forward(self, x: Tensor) -> Tensor:
        z, log_rms = _scale_features(x)
        plane = log_rms.reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        h = self.body(torch.cat([z, plane], 1)).flatten(1)
        return self.head(torch.cat([h, log_rms[:, None]], 1))


ARCHS: dict[str, type[nn.Module]] = {"mlp": MLPNet, "cnn": CNNNet}


def build_classifier_net(arch: str, shape: list[int] | tuple[int, ...], levels: int, **kwargs) -> nn.Module:
    """A fresh network for `arch` ("mlp" for vectors, "cnn" for [C, H, W] images)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    if arch == "cnn" and len(shape) != 3:
        raise ValueError(f"the cnn classifier needs image samples [C, H, W], got shape {list(shape)}")
    return ARCHS[arch](list(shape), levels, **kwargs)


class LearnedNoiseClassifier(NoiseClassifier):
    """A trained network's softmax over the grid; `config` holds everything needed to rebuild and describe it."""

    kind = "learned"

    def __init__(self, net: nn.Module, config: dict[str, Any]):
        super().__init__(noise_grid(config["sigma_min"], config["sigma_max"], config["levels"], config["t_floor"]))
        self.net = net
        self.config = config
        self.shape = tuple(config["shape"])

    @classmethod
    def create(
        cls,
        arch: str,
        shape: tuple[int, ...],
        sigma_min: float,
        sigma_max: float,
        levels: int = DEFAULT_LEVELS,
        t_floor: float = T_FLOOR,
        **arch_kwargs,
    ) -> LearnedNoiseClassifier:
        config = {
            "format": FORMAT,
            "arch": arch,
            "arch_kwargs": arch_kwargs,
            "shape": list(shape),
            "levels": int(levels),
            "sigma_min": float(sigma_min),
            "sigma_max": float(sigma_max),
            "t_floor": float(t_floor),
        }
        noise_grid(sigma_min, sigma_max, levels, t_floor)  # validates the range
        return cls(build_classifier_net(arch, shape, levels, **arch_kwargs), config)

    def log_posterior(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.net(x.float()).float(), dim=-1)

    def save(self, path: str | Path, **info) -> Path:
        """Write model.safetensors + config.json (with `info`, e.g. training details) as directory `path`, whole
        (models.checkpoint_dir: never half-written, and never over a directory that is not a classifier's)."""

        def write(tmp: Path) -> None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
            (tmp / CONFIG).write_text(json.dumps({**self.config, **info}, indent=2) + "\n")

        path = write_checkpoint_dir(path, write, FORMAT, (WEIGHTS, CONFIG))
        _load.cache_clear()
        return path


def load_noise_classifier(
    spec: str | Path, sigma_max: float | None = None, image_size: int | None = None
) -> NoiseClassifier:
    """A classifier directory (model.safetensors + config.json), or `dmcmc:PATH`: a DMCMC classifier file whose level
    grid ends at `sigma_max`, for images of `image_size` (models.upstream.dmcmc.load_classifier; a directory's grid
    and shape are its own). ValueError naming what is missing or wrong."""
    if isinstance(spec, str) and spec.startswith("dmcmc:"):
        from .upstream.dmcmc import load_classifier

        if not spec.removeprefix("dmcmc:"):
            raise ValueError(f"noise classifier {spec!r}: no path after 'dmcmc:'")
        return load_classifier(spec.removeprefix("dmcmc:"), sigma_max=sigma_max, image_size=image_size)
    if sigma_max is not None or image_size is not None:
        raise ValueError(
            f"noise classifier {str(spec)!r}: sigma_max and image_size apply to dmcmc:PATH classifiers only"
        )
    return _load(str(Path(spec).resolve()))


@lru_cache(maxsize=8)
def _load(path: str) -> LearnedNoiseClassifier:
    root = Path(path)
    if not (root / CONFIG).is_file() or not (root / WEIGHTS).is_file():
        raise ValueError(f"{path} is not a noise-classifier directory (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads((root / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{root / CONFIG}: invalid JSON ({err})") from err
    if config.get("format") != FORMAT:
        raise ValueError(f"{root / CONFIG}: not a noise classifier (format {config.get('format')!r})")
    net = build_classifier_net(config["arch"], config["shape"], config["levels"], **config.get("arch_kwargs", {}))
    try:
        net.load_state_dict(load_file(str(root / WEIGHTS)))
    except RuntimeError as err:
        raise ValueError(f"{root / WEIGHTS} does not match its config: {err}") from err
    return LearnedNoiseClassifier(net, config).eval().requires_grad_(False)


def _load_for(model, spec: str | Path) -> NoiseClassifier:
    """A classifier file or directory for `model`: a DMCMC file gets the model's sigma_max and image size."""
    if isinstance(spec, str) and spec.startswith("dmcmc:"):
        return load_noise_classifier(spec, sigma_max=model.sigma_max, image_size=model.shape[-1])
    return load_noise_classifier(spec)


def classifier_for(model, classifier: str | NoiseClassifier | None = None, n_levels: int = DEFAULT_LEVELS):
    """The noise-level classifier DLG uses for `model` (see the module docstring for the lookup order)."""
    if isinstance(classifier, NoiseClassifier):
        found = classifier
    elif classifier == "exact" or (classifier is None and hasattr(model, "mixture")):
        if not hasattr(model, "mixture"):
            raise ValueError(f"classifier='exact' needs an analytic model; {model.name!r} has no exact posterior")
        found = ExactNoiseClassifier(model.mixture, noise_grid(model.sigma_min, model.sigma_max, n_levels))
    elif classifier is not None:
        found = _load_for(model, classifier)
    elif getattr(model, "noise_classifier", None):
        found = _load_for(model, model.noise_classifier)
    elif getattr(model, "dataset", None) and (CHECKPOINTS / f"{model.dataset}-noise-classifier").is_dir():
        found = load_noise_classifier(CHECKPOINTS / f"{model.dataset}-noise-classifier")
    else:
        raise ValueError(
            f"DLG needs a noise-level classifier for model {model.name!r}: train one with `scorebench train "
            "classifier` and pass classifier=PATH"
        )
    shape = getattr(found, "shape", tuple(model.shape))
    if tuple(shape) != tuple(model.shape):
        raise ValueError(f"the noise classifier takes samples of shape {tuple(shape)}, the model {tuple(model.shape)}")
    data_range = getattr(found, "data_range", None)
    if data_range is not None and tuple(data_range) != tuple(model.data_range):
        raise ValueError(
            f"the noise classifier takes data in {tuple(data_range)}, the model has {tuple(model.data_range)}"
        )
    return found.to(model.device)
