"""Project-trained digit classifiers whose penultimate activations are the feature space of `fd_<dataset>`.

Inception-v3 costs ~0.25 s per image on a CPU and was trained on natural photographs, so the shipped digit datasets
are measured in the features of a small CNN trained on their own training split (`scorebench train features`).
The classifier sees exactly what a metric sees: images quantised to uint8, scaled back to [-1, 1]. Inputs of another
size are resized (area averaging) to the classifier's resolution; colour inputs are averaged to gray.

Checkpoints: `models/checkpoints/<dataset>-features/` (model.safetensors + config.json, held-out accuracy included):
`digits` classifies the 8x8 images as they are; `mnist5k` classifies 28x28 MNIST area-downsampled to 14x14 (4x less
compute, trains in minutes on a CPU). Any other input size is resized to the classifier's own.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FeatureClassifier",
    "ClassifierConfig",
    "CHECKPOINT_ROOT",
    "checkpoint_dir",
    "load_classifier",
    "save_classifier",
    "train_classifier",
    "images_to_unit",
]

CHECKPOINT_ROOT = Path(__file__).resolve().parent.parent / "models" / "checkpoints"


def checkpoint_dir(dataset: str) -> Path:
    """Where the shipped feature classifier of a dataset lives."""
    return CHECKPOINT_ROOT / f"{dataset}-features"


@dataclass(frozen=True)
class ClassifierConfig:
    dataset: str
    image_size: tuple[int, int]
    channels: tuple[int, ...] = (32, 64, 128)
    n_classes: int = 10


class FeatureClassifier(nn.Module):
    """conv3x3 stack (stride 2 after the first layer), global average pool -> features, linear -> logits."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 1
        for i, c_out in enumerate(config.channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, config.n_classes)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: Tensor) -> Tensor:
        """[N, 1, H, W] in [-1, 1] -> [N, D]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def images_to_unit(images: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 images [N, C, H, W] -> float gray [N, 1, *size] in [-1, 1] (channel mean, area resize if needed)."""
    x = images.float().mean(dim=1, keepdim=True) / 127.5 - 1.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="area")
    return x


# --- checkpoints -----------------------------------------------------------------------------------------------------
FEATURES_FORMAT = "feature-classifier"


def save_classifier(net: FeatureClassifier, out: str | Path, extra: dict) -> Path:
    """Write model.safetensors + config.json as directory `out`, whole (models.checkpoint_dir: never half-written,
    and never over a directory that is not a feature extractor's)."""
    from safetensors.torch import save_file

    from models.checkpoint_dir import write_checkpoint_dir

    config = {"kind": FEATURES_FORMAT, **asdict(net.config), **extra}
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    return write_checkpoint_dir(out, write, FEATURES_FORMAT, ("model.safetensors", "config.json"))


def load_classifier(path: str | Path) -> tuple[FeatureClassifier, dict]:
    """A feature classifier from a checkpoint directory; returns (network in eval mode, its config dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    weights, config_file = path / "model.safetensors", path / "config.json"
    if not weights.is_file() or not config_file.is_file():
        raise ValueError(
            f"no feature classifier at {path} (expected model.safetensors and config.json); "
            "train one with `scorebench train features --data DATASET --out DIR`"
        )
    try:
        config = json.loads(config_file.read_text())
        net = FeatureClassifier(
            ClassifierConfig(
                dataset=config["dataset"],
                image_size=tuple(config["image_size"]),
                channels=tuple(config["channels"]),
                n_classes=int(config["n_classes"]),
            )
        )
        net.load_state_dict(load_file(weights))
    except (json.JSONDecodeError, KeyError, TypeError, RuntimeError, SafetensorError, OSError) as err:
        raise ValueError(f"feature classifier at {path} is unreadable: {str(err).splitlines()[0]}") from err
    return net.eval().requires_grad_(False), config


def file_digest(*paths: str | Path) -> str:
    """sha256 over the bytes of the given files (identifies extractor weights in cache keys)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --- training --------------------------------------------------------------------------------------------------------
def _prepare(x: Tensor, size: tuple[int, int]) -> Tensor:
    """[-1, 1] floats through uint8 and the metric's input transform: the classifier trains on what metrics feed it."""
    return images_to_unit(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), size)


def _shift(x: Tensor, generator: torch.Generator, max_shift: int) -> Tensor:
    """Random translation by up to max_shift pixels (zero padding at the background level -1)."""
    if max_shift == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + h, dx : dx + w]


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    net.eval()
    batches = zip(x.split(batch_size), y.split(batch_size), strict=True)
    correct = sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    return correct / len(y)


def train_classifier(
    dataset: str,
    *,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    channels: tuple[int, ...] = (32, 64, 128),
    image_size: tuple[int, int] | None = None,
    progress: bool = True,
) -> tuple[FeatureClassifier, dict]:
    """Train the feature classifier on `bench.data.load_dataset(dataset).train` at `image_size` (default: the data's
    own size); returns (network in eval mode, summary with train and held-out accuracy)."""
    from tqdm import tqdm

    from .data import load_dataset

    data = load_dataset(dataset)
    size = tuple(image_size or data.shape[-2:])
    x, y = _prepare(data.train, size), data.train_labels
    xh, yh = _prepare(data.heldout, size), data.heldout_labels
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = FeatureClassifier(ClassifierConfig(dataset, size, tuple(channels)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    max_shift = max(1, size[-1] // 14)  # 1 pixel at 8x8 and 14x14, 2 at 28x28
    bar = tqdm(range(epochs), desc=f"train {dataset} features", unit="epoch", disable=not progress)
    for _ in bar:
        net.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for idx in order.split(batch_size):
            loss = F.cross_entropy(net(_shift(x[idx], gen, max_shift)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(x):.3f}", heldout_acc=f"{accuracy(net, xh, yh):.4f}")
    summary = {
        "train_accuracy": accuracy(net, x, y),
        "heldout_accuracy": accuracy(net, xh, yh),
        "n_train": len(x),
        "n_heldout": len(xh),
        "feature_dim": net.feature_dim,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    return net.eval().requires_grad_(False), summary
