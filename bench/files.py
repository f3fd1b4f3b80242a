"""Output files written whole: every report, table, plot, JSON and sample file goes through `replacing`.

The content is written to a temporary file beside the destination (same directory, so the same file system) and
renamed onto it with os.replace, which is atomic: a reader, a crash or a Ctrl-C in the middle sees the old file or
the new one, never half of one. A failed or interrupted write removes its temporary file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["replacing", "write_text", "write_bytes", "write_json", "save_figure"]


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path` in one step."""
    path = Path(path)
    # keeps the suffix, so that writers choosing a format by extension (savefig, np.savez) see the right one
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, obj: Any, default=None, indent: int = 2) -> Path:
    import json

    return write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """A matplotlib Figure saved whole (format from the destination's extension)."""
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path
