"""Checks of user input shared by the commands and the runner: one clear line for each bad value.

Nothing here imports torch at module level, so that `--help` and argument errors stay instant.
- argparse types (`positive_int`, `nonneg_int`, `nonneg_float`, ...): a bad value is refused while the arguments
  are parsed, with the flag's name;
- `check_device`: a device string torch understands and this machine has;
- `image_suffix`: an output file name whose extension an image writer knows, checked before any work;
- `writable_file`: the directory a file is to be written into exists;
- `available_memory`: what the machine can still give, for the suite's memory estimate.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

__all__ = [
    "positive_int",
    "nonneg_int",
    "nonneg_float",
    "positive_float",
    "check_device",
    "image_suffix",
    "writable_file",
    "available_memory",
]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (NaN and inf refused)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def check_device(name: str) -> str:
    """`name` when torch understands it and this machine has it (cpu; cuda[:N] with CUDA; mps on Apple GPUs); else
    ValueError in one line."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {name!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return name
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested, but CUDA is not available here")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {name!r} requested, but this machine has {count} CUDA device(s)")
        return name
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} requested, but MPS is not available here")
        return name
    raise ValueError(f"device {name!r} is not supported: expected cpu, cuda or cuda:N")


def image_suffix(path: str | Path) -> str:
    """The lower-case extension of an image file to be written; ValueError when no image writer knows it."""
    from PIL import Image

    Image.init()
    suffix = Path(path).suffix.lower()
    writable = sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)
    if suffix not in writable:
        common = ", ".join(s for s in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".webp") if s in writable)
        raise ValueError(f"--out {path}: unknown image extension {suffix or '(none)'!r}; use one of {common}")
    return suffix


def writable_file(path: str | Path, flag: str) -> Path:
    """A file to write later: its directory must exist now (checked before the work, not after)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: directory {parent} does not exist")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory, not a file")
    return path


def available_memory() -> int | None:
    """Bytes of memory the machine can still give a process (Linux: MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
