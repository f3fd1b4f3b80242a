"""Checkpoints in the formats of the upstream projects behind published numbers, loaded without running their code.

Each format is a model-spec prefix (`score_sde:PATH`, `ncsnv2:PATH`, `ddim:PATH`, `edm:PATH`) handled by one module
of this package that exposes `load(path, **options) -> Denoiser`. A module owns its format end to end: reading the
file (models.upstream.common: `torch.load(weights_only=True)` or a restricted unpickler, nothing else), the config
(beside the file or a published one by name, built in as data), the architecture (scorebench's own implementation,
state-dict compatible with the upstream's) and the conditioning that turns the network into D(x, sigma).

A loaded network is convertible (`scorebench convert`): its module is registered in models.loaders.ARCHS under
`arch`, and the denoiser carries `arch` and `arch_kwargs` (JSON) from which models.loaders rebuilds it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import Denoiser

__all__ = ["UpstreamFormat", "FORMATS", "load_upstream", "split_spec"]


@dataclass(frozen=True)
class UpstreamFormat:
    prefix: str  # the model-spec prefix, e.g. "score_sde"
    summary: str
    module: str  # the module (in this package) whose load(path, **options) reads it
    options: tuple[str, ...]  # the keyword options load() accepts
    configs: str | None = None  # the module (in this package) with PUBLISHED_CONFIGS and CONFIG_SUMMARIES

    def published_configs(self) -> dict[str, str]:
        """The published configs `config=NAME` takes, with a one-line summary each."""
        if self.configs is None:
            return {}
        return dict(importlib.import_module(f"{__name__}.{self.configs}").CONFIG_SUMMARIES)


FORMATS: dict[str, UpstreamFormat] = {
    "score_sde": UpstreamFormat(
        "score_sde",
        "yang-song/score_sde_pytorch .pth (NCSN++, DDPM++, DDPM; VE/VP; EMA weights), config.json beside it or "
        "config=NAME",
        "score_sde",
        ("config", "ema"),
        "score_sde_configs",
    ),
    "ncsnv2": UpstreamFormat(
        "ncsnv2",
        "ermongroup/ncsnv2 list checkpoint (NCSNv2, Deeper, Deepest; EMA weights), config.yml beside it or config=NAME",
        "ncsnv2",
        ("config", "ema"),
        "ncsnv2_configs",
    ),
    "ddim": UpstreamFormat(
        "ddim",
        "ermongroup/ddim / pytorch_diffusion weights (bare state dict or list checkpoint), config.yml beside it or "
        "config=NAME",
        "ddim",
        ("config", "ema"),
        "ddim_configs",
    ),
    "edm": UpstreamFormat(
        "edm",
        "NVlabs/edm network pickle (SongUNet, DhariwalUNet; VP/VE/iDDPM/EDM preconditioning), read without running it",
        "edm",
        ("class_labels",),
    ),
}


def split_spec(spec: str) -> tuple[UpstreamFormat, str] | None:
    """(format, path) of an upstream model spec `PREFIX:PATH`, or None when spec has no known prefix."""
    prefix, sep, path = spec.partition(":")
    if not sep or prefix not in FORMATS:
        return None
    return FORMATS[prefix], path


def load_upstream(spec: str, **options: Any) -> Denoiser:
    """Load `PREFIX:PATH` with the format's options; ValueError for a bad path, option or file."""
    found = split_spec(spec)
    assert found is not None, spec
    fmt, path = found
    if not path:
        raise ValueError(f"model spec {spec!r}: no path after '{fmt.prefix}:'")
    unknown = sorted(set(options) - set(fmt.options))
    if unknown:
        accepted = ", ".join(fmt.options) or "none"
        raise ValueError(
            f"model spec {spec!r}: unknown option {unknown[0]!r} (a {fmt.prefix} checkpoint takes {accepted})"
        )
    options = {k: v for k, v in options.items() if v is not None}
    module = importlib.import_module(f"{__name__}.{fmt.module}")
    return module.load(Path(path).expanduser(), **options)
