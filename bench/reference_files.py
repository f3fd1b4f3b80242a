"""Reference data files for FD/KD/precision/recall: the layouts papers ship, read with numpy (no pickles).

A reference is named by a path, or by `stats:PATH` for a file that holds statistics or features instead of (or besides)
images. The `.npz` layouts (numpy.savez archives):

- `mu-sigma`: `mu` [d] and `sigma` [d, d]. EDM's `fid.py ref` (its fid-refs/*.npz, float64), pytorch-fid's
  `--save-stats`, TTUR's precalculated statistics.
- `pool-3`: `pool_3` [N, d], features of the reference images (a `logits` array beside it is ignored). score_sde's
  `assets/stats/*_stats.npz` (TF-GAN Inception pool_3 features of the training images).
- `adm-batch`: `arr_0`, uint8 images [N, H, W, 3], optionally with `mu`, `sigma` (pool_3 statistics of the whole
  dataset) and `mu_s`, `sigma_s` (spatial features, for sFID; not used here). guided-diffusion's (ADM's) reference
  batches: its evaluations/evaluator.py takes FID from the stored mu/sigma when present and precision/recall from
  arr_0.
- `images`: one uint8 image array ([N, H, W], [N, H, W, C] or [N, C, H, W]; named `images` when there are several).

With `stats:`, a file's statistics (`mu`, `sigma`) give FD directly and its features (`pool_3`) or images (`arr_0`)
give everything else; a `mu-sigma` file alone supports FD only. Without `stats:`, a path is images: a folder of
png/jpg or an `images`-layout .npz; a statistics file given that way is refused with a hint. The statistics belong to
the feature extractor that made them (2048-d: Inception pool_3): bench.fidelity refuses statistics whose dimension is
not the metric's feature dimension. Every failure to read or validate a file is one ValueError naming it.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["STATS_PREFIX", "ReferenceFile", "split_spec", "join_spec", "read_npz", "file_sha256", "stats_only"]

STATS_PREFIX = "stats:"
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def split_spec(spec: str | Path) -> tuple[bool, Path]:
    """("stats:PATH" or PATH) -> (whether it is a statistics reference, the path)."""
    text = str(spec)
    if text.startswith(STATS_PREFIX):
        return True, Path(text[len(STATS_PREFIX) :]).expanduser()
    return False, Path(text).expanduser()


def join_spec(stats: bool, path: str | Path) -> str:
    return f"{STATS_PREFIX}{path}" if stats else str(path)


@dataclass(frozen=True, eq=False)
class ReferenceFile:
    """What a reference .npz holds, validated: images (uint8 [N, C, H, W]), features [N, d], statistics (float64)."""

    path: Path
    layout: str  # mu-sigma | pool-3 | adm-batch | images
    sha256: str
    images: Tensor | None = None
    features: Tensor | None = None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open(path: Path, what: str):
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    try:
        npz = np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        raise ValueError(
            f"{what} {path} is not a readable .npz archive of arrays (numpy.savez): {_line(err)}"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{what} {path} is a single .npy array, not an .npz archive: save it with numpy.savez")
    return npz


def _array(npz, key: str, path: Path, what: str) -> np.ndarray:
    try:
        return npz[key]
    except _READ_ERRORS as err:  # a truncated or corrupted member shows up only when it is read
        raise ValueError(
            f"cannot read array {key!r} of {what} {path} (truncated or corrupted?): {_line(err)}"
        ) from None


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def stats_only(spec: str | Path) -> bool:
    """Whether a reference spec names a statistics file without images or features (FD is its only metric). Reads
    the archive's table of contents only; an unreadable file answers False (make_reference reports it)."""
    stats, path = split_spec(spec)
    if not stats or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.keys())
    except (*_READ_ERRORS, AttributeError):
        return False
    return "mu" in keys and not keys & {"arr_0", "pool_3", "images"}


def read_npz(path: Path, stats: bool) -> ReferenceFile:
    """Read and validate a reference .npz: with `stats`, any layout above; without, the `images` layout only."""
    path = Path(path)
    what = "statistics file" if stats else "reference"
    npz = _open(path, what)
    with npz:
        keys = list(npz.keys())
        if not keys:
            raise ValueError(f"{what} {path} holds no arrays")
        has_stats = "mu" in keys or "sigma" in keys
        if not stats:
            if has_stats or "pool_3" in keys:
                kind = "an ADM reference batch" if "arr_0" in keys else "FD statistics or features"
                raise ValueError(
                    f"reference {path} is {kind} (arrays {', '.join(keys)}), not an image file: pass it as "
                    f"{STATS_PREFIX}{path}"
                )
            if len(keys) != 1 and "images" not in keys:
                raise ValueError(f"{path} holds arrays {keys}: name the image array `images`")
            images = _images(_array(npz, "images" if "images" in keys else keys[0], path, what), path, what)
            return ReferenceFile(path, "images", file_sha256(path), images=images)
        mu = sigma = images = features = None
        if has_stats:
            if not ("mu" in keys and "sigma" in keys):
                raise ValueError(f"{what} {path} needs both `mu` and `sigma`, it has {', '.join(keys)}")
            mu, sigma = _statistics(_array(npz, "mu", path, what), _array(npz, "sigma", path, what), path)
        if "pool_3" in keys:
            features = _features(_array(npz, "pool_3", path, what), path)
            layout = "pool-3"
        if "arr_0" in keys:
            images = _images(_array(npz, "arr_0", path, what), path, what, name="arr_0")
            layout = "adm-batch"
        elif "images" in keys and not has_stats and features is None:
            images = _images(_array(npz, "images", path, what), path, what)
            layout = "images"
        elif features is None:
            if mu is None:
                raise ValueError(
                    f"{what} {path} holds arrays {', '.join(keys)}; expected `mu` and `sigma` (EDM fid-refs, "
                    "pytorch-fid), `pool_3` (score_sde stats) or `arr_0` (an ADM reference batch)"
                )
            layout = "mu-sigma"
        if features is not None and mu is not None and features.shape[1] != len(mu):
            raise ValueError(f"{what} {path}: pool_3 is {features.shape[1]}-d but mu is {len(mu)}-d")
    return ReferenceFile(path, layout, file_sha256(path), images, features, mu, sigma)


def _statistics(mu: np.ndarray, sigma: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    for name, a in (("mu", mu), ("sigma", sigma)):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"statistics file {path}: {name} must be numbers, got dtype {a.dtype}")
    if mu.ndim != 1 or len(mu) == 0:
        raise ValueError(f"statistics file {path}: mu must be a vector [d], got shape {mu.shape}")
    if sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"statistics file {path}: sigma must be [d, d] = {[len(mu)] * 2} for mu [d], got {sigma.shape}"
        )
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"statistics file {path}: mu or sigma holds NaN or infinite values")
    return mu, sigma


def _features(a: np.ndarray, path: Path) -> Tensor:
    if a.ndim != 2 or len(a) < 2 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"statistics file {path}: pool_3 must be float features [N >= 2, d], got {a.dtype} {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"statistics file {path}: pool_3 holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(a))


def _images(arr: np.ndarray, path: Path, what: str, name: str = "images") -> Tensor:
    """uint8 [N, H, W], [N, H, W, C] or [N, C, H, W] (C in 1, 3) -> uint8 [N, C, H, W]."""
    if arr.size == 0 or arr.ndim == 0 or len(arr) == 0:
        raise ValueError(f"{what} {path} holds no images ({name} of shape {arr.shape})")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} {path} must hold uint8 images, got {name} of dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"{what} {path} must hold images [N, H, W(, C)] or [N, C, H, W], got {name} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))
