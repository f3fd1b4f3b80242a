"""What every upstream format needs: reading files safely, configs, strict state-dict loading, one-line errors."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Config",
    "read_torch",
    "read_yaml",
    "read_json",
    "find_config",
    "strip_prefix",
    "load_strict",
    "key_mismatch",
    "first_line",
]


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Config(dict):
    """A nested config (a published config or one read from JSON/YAML) with attribute access: cfg.model.nf."""

    def __init__(self, data: Mapping[str, Any] = ()):
        super().__init__({k: Config(v) if isinstance(v, Mapping) else v for k, v in dict(data).items()})

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def get_path(self, dotted: str, default: Any = None) -> Any:
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def read_torch(path: Path, what: str) -> Any:
    """A .pth/.pt/.ckpt file through torch.load(weights_only=True) on the CPU: tensors and plain containers only.

    A file that would need code to unpickle is refused, as are missing and truncated files, each in one line.
    """
    if not path.is_file():
        raise ValueError(f"{what}: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours parts of its message
        needs = re.search(r"(?:Unsupported global: GLOBAL|Unsupported operand|global) ([\w.]+)", text)
        if "weights_only" in text.lower() or "weights only" in text.lower() or needs:
            name = needs.group(1) if needs else "objects beyond tensors"
            raise ValueError(
                f"{what}: refused: unpickling {path.name} needs code ({name}); only tensors and plain containers "
                "are read"
            ) from None
        raise ValueError(f"{what}: {path.name} is not a readable checkpoint ({first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise ValueError(f"{what}: {path.name} is not a readable checkpoint ({first_line(err)})") from None


def read_json(path: Path, what: str) -> Config:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what}: cannot read {str(path)!r} as JSON ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {str(path)!r} must hold a JSON object")
    return Config(data)


def read_yaml(path: Path, what: str) -> Config:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{what}: cannot read {str(path)!r} as YAML ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {str(path)!r} must hold a YAML mapping")
    return Config(data)


def find_config(
    checkpoint: Path, name: str | None, published: Mapping[str, Mapping[str, Any]], beside: str, what: str
) -> Config:
    """The config of a checkpoint: the published one called `name`, else the file `beside` next to the checkpoint."""
    if name is not None:
        if name in published:
            return Config(published[name])
        path = Path(name).expanduser()
        if path.is_file():
            return read_yaml(path, what) if path.suffix in (".yml", ".yaml") else read_json(path, what)
        raise ValueError(f"{what}: unknown config {name!r}; published configs: {', '.join(sorted(published))}")
    path = checkpoint.parent / beside
    if not path.is_file():
        raise ValueError(
            f"{what}: no {beside} beside {checkpoint.name}; pass config=NAME (one of {', '.join(sorted(published))})"
        )
    return read_yaml(path, what) if beside.endswith((".yml", ".yaml")) else read_json(path, what)


def strip_prefix(state: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """The state dict with `prefix` removed from every key that has it (DataParallel's `module.`)."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def key_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str | None:
    """What differs between two name -> tensor maps, as "missing 2 (first: a, b); wrong shape 1 (...)", or None."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    parts = [
        f"{label} {len(keys)} (first: {', '.join(keys[:3])})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    return "; ".join(parts) or None


def load_strict(net: nn.Module, state: Mapping[str, Any], what: str) -> None:
    """Load `state` into `net` with every key and shape matching; else one ValueError naming the first differences."""
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{what}: the weights are not a state dict of tensors")
    mismatch = key_mismatch(net.state_dict(), state)
    if mismatch:
        raise ValueError(f"{what}: the weights do not match the architecture the config describes: {mismatch}")
    # a network built on the meta device (no memory, no random initialisation) takes the loaded tensors themselves
    on_meta = any(t.is_meta for t in (*net.parameters(), *net.buffers()))
    net.load_state_dict(state, assign=on_meta)
