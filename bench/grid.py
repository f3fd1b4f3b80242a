"""Sample grids: images in a model's data range saved as one PNG (torchvision's make_grid/save_image)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .files import replacing

__all__ = ["save_grid"]


def save_grid(x: Tensor, path: str | Path, data_range: tuple[float, float] = (-1.0, 1.0), upscale: int = 4) -> Path:
    """Save images x [n, C, H, W] (C = 1 or 3, values in data_range) as a square grid, pixels upscaled for viewing."""
    from torchvision.utils import save_image

    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"a sample grid needs images [n, 1 or 3, H, W], got shape {list(x.shape)}")
    lo, hi = data_range
    images = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    if upscale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=upscale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_image(images, tmp, nrow=max(1, round(len(images) ** 0.5)), padding=2, pad_value=0.5)
    return path
