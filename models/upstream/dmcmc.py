"""`dmcmc:PATH`: the noise-level classifiers of 1202kbs/DMCMC (Kim & Ye 2023), as DLG's sigma | x conditional.

File: `{'epoch': int, 'opt': Adam state, 'net': state dict}` as the DMCMC training notebook saves it (read with
torch.load(weights_only=True); only `net` is used). The network is the notebooks' `SimpleCNN`: four 3x3 convolutions
(3 -> 32 -> 64 -> 128 -> 256 channels, each followed by ReLU and average pooling) and a linear layer from the
256 x 2 x 2 features to one logit per noise level. Two variants share every weight shape:
- 32x32 images (CIFAR-10, `SimpleCNN`): 2x2 pooling with stride 2 after every convolution;
- 256x256 images (CelebA-HQ, `SimpleCNN256`): 2x2 pooling with stride 4 after the first three, stride 2 after the last.
Since the weights cannot tell them apart, the image size is an argument (`image_size`, 32 by default); DLG takes it
from the model (models.noise_classifier.classifier_for).

Levels: logit k is the noise level sigma_k = sigma_min (sigma_max / sigma_min) ** linspace(1, 1e-3, L)[k] with
sigma_min = 0.01, L = 1000, level 0 = sigma_max: models.noise_classifier.noise_grid, but evaluated in float32 as the
notebooks do (`level_grid`; within 1e-6 relative of the float64 grid), so that a level is exactly DMCMC's. sigma_max
is not stored: the notebooks used 50 for CIFAR-10 and 348 for CelebA-HQ (the score_sde VE models' sigma_max), the
defaults here per variant. The classifier sees VE data in [0, 1] (x = x0 + sigma eps, score_sde's uncentred data);
its log-posterior over the levels is log_softmax(logits).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..noise_classifier import NoiseClassifier, noise_grid
from .common import load_strict, read_torch, strip_prefix

__all__ = ["SimpleCNN", "DMCMCNoiseClassifier", "load_classifier", "level_grid", "IMAGE_SIZES", "SIGMA_MAX"]

# per supported image size: the (kernel, stride) of the average pooling after each convolution
POOLING: dict[int, tuple[tuple[int, int], ...]] = {32: ((2, 2),) * 4, 256: ((2, 4),) * 3 + ((2, 2),)}
IMAGE_SIZES = tuple(POOLING)
SIGMA_MAX: dict[int, float] = {32: 50.0, 256: 348.0}  # the DMCMC notebooks' sigma_max: CIFAR-10, CelebA-HQ
SIGMA_MIN = 0.01
WIDTHS = (3, 32, 64, 128, 256)


def level_grid(sigma_max: float, sigma_min: float = SIGMA_MIN, n: int = 1000) -> Tensor:
    """DMCMC's grid of n noise levels (float32 arithmetic, as its notebooks), as a decreasing float64 tensor."""
    noise_grid(sigma_min, sigma_max, n)  # validates the range
    t = torch.linspace(1.0, 1e-3, n, dtype=torch.float32)
    low, high = torch.tensor(sigma_min, dtype=torch.float32), torch.tensor(sigma_max, dtype=torch.float32)
    return (low * (high / low) ** t).to(torch.float64)


class SimpleCNN(nn.Module):
    """DMCMC's SimpleCNN (image_size 32) or SimpleCNN256 (image_size 256): x [B, 3, S, S] -> logits [B, levels]."""

    def __init__(self, image_size: int = 32, levels: int = 1000):
        super().__init__()
        if image_size not in POOLING:
            raise ValueError(f"DMCMC classifiers take 32x32 or 256x256 images, not {image_size}x{image_size}")
        self.image_size = int(image_size)
        self.pooling = POOLING[self.image_size]
        for i, (c_in, c_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True)):
            self.add_module(f"conv{i + 1}", nn.Conv2d(c_in, c_out, 3, padding=1))
        self.fc = nn.Linear(WIDTHS[-1] * 2 * 2, int(levels))

    def forward(self, x: Tensor) -> Tensor:
        for i, (kernel, stride) in enumerate(self.pooling):
            x = F.avg_pool2d(F.relu(getattr(self, f"conv{i + 1}")(x)), kernel, stride)
        return self.fc(x.flatten(1))


class DMCMCNoiseClassifier(NoiseClassifier):
    """log p(sigma_k | x) = log_softmax of a DMCMC SimpleCNN's logits, over its geometric grid of noise levels."""

    kind = "dmcmc"

    def __init__(self, net: SimpleCNN, sigma_max: float, sigma_min: float = SIGMA_MIN, name: str = ""):
        super().__init__(level_grid(sigma_max, sigma_min, net.fc.out_features))
        self.net = net
        self.shape = (3, net.image_size, net.image_size)
        self.data_range = (0.0, 1.0)
        self.name = name

    def logits(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"the DMCMC classifier takes images of shape {self.shape}, got {tuple(x.shape[1:])}")
        return self.net(x.to(self.net.fc.weight.dtype))

    def log_posterior(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.logits(x).float(), dim=-1)


def load_classifier(
    path: Path | str, sigma_max: float | None = None, sigma_min: float = SIGMA_MIN, image_size: int | None = None
) -> DMCMCNoiseClassifier:
    """A DMCMC classifier file on the grid sigma_min .. sigma_max (default: the notebooks' value for the image size),
    for images of `image_size` (32 or 256; default 32); one ValueError for any bad argument or file."""
    path = Path(path).expanduser()
    what = f"DMCMC classifier {str(path)!r}"
    size = 32 if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size not in POOLING:
        raise ValueError(f"{what}: DMCMC classifiers take 32x32 or 256x256 images, not image_size={image_size!r}")
    sigma_max = SIGMA_MAX[size] if sigma_max is None else float(sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"{what}: the level grid needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")

    ckpt = read_torch(path, what)
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{what}: expected DMCMC's {{'epoch', 'opt', 'net'}} dict, got {found}")
    state = ckpt["net"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{what}: its 'net' entry is not a state dict of tensors")
    state = strip_prefix(state)
    fc = state.get("fc.weight")
    levels = fc.shape[0] if isinstance(fc, Tensor) and fc.ndim == 2 and fc.shape[0] >= 2 else 1000
    net = SimpleCNN(size, levels)
    load_strict(net, state, what)
    return DMCMCNoiseClassifier(net.eval().requires_grad_(False), sigma_max, sigma_min, name=f"dmcmc:{path.name}")
