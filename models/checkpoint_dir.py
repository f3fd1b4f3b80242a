"""Checkpoint directories written whole, and never over anything scorebench did not write.

A checkpoint directory (native model, noise classifier, feature extractor) is written into a fresh temporary
directory beside its destination and renamed into place, so that an interrupted save leaves the old one or the new
one, never half of either. An existing destination is replaced only when it is empty or is a checkpoint directory
of the same format that holds nothing but files scorebench writes there; anything else is refused before any work.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["check_replaceable", "write_checkpoint_dir"]

CONFIG = "config.json"


def _format_of(path: Path) -> object:
    try:
        config = json.loads((path / CONFIG).read_text())
        return config.get("format", config.get("kind"))  # feature extractors name their format "kind"
    except (OSError, ValueError, AttributeError):
        return None


def check_replaceable(path: str | Path, fmt: str, owned: Iterable[str]) -> None:
    """ValueError unless `path` is absent, an empty directory, or a `fmt` checkpoint holding only `owned` names."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"output {path} exists and is not a directory")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    if _format_of(path) != fmt:
        raise ValueError(
            f"output {path} is not empty and is not a {fmt} directory (it holds {entries[0]!r}"
            f"{' and more' if len(entries) > 1 else ''}); refusing to replace it: choose a new or empty directory"
        )
    foreign = [name for name in entries if name not in set(owned)]
    if foreign:
        raise ValueError(
            f"output {path} holds files a {fmt} directory does not ({', '.join(foreign[:3])}); refusing to replace "
            "it: move them or choose another directory"
        )


def write_checkpoint_dir(path: str | Path, write: Callable[[Path], None], fmt: str, owned: Iterable[str]) -> Path:
    """Call write(tmp) on a fresh directory beside `path`, then put it in place of `path` (see check_replaceable)."""
    path = Path(path)
    owned = tuple(owned)
    check_replaceable(path, fmt, owned)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    old = None
    try:
        write(tmp)
        for file in tmp.iterdir():
            file.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp's 0700 would keep the checkpoint from other users
        check_replaceable(path, fmt, owned)  # again: it may have changed while `write` ran
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old is not None:
            shutil.rmtree(old)  # the replaced checkpoint: files of `owned` only, checked above
    return path
