"""Built-in models by name, and `load_model` for every model spec (built-in name, diffusers:PATH, native directory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Denoiser
from .gmm import GaussianMixture, GMMDenoiser, gmm_2d, gmm_64d
from .processes import DDPMProcess, Process, VEProcess, VPProcess

__all__ = ["ModelSpec", "MODELS", "load_model", "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    build: Callable[[], Denoiser]
    kind: str = "analytic"  # "analytic" | "checkpoint"


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


_PROCESSES: dict[str, tuple[str, Callable[[], Process]]] = {
    "ve": ("VE, sigma 0.01..50", lambda: VEProcess(0.01, 50.0)),
    "vp": ("continuous VP-SDE", VPProcess),
    "ddpm": ("discrete DDPM, T=1000", DDPMProcess),
}
_MIXTURES: dict[str, tuple[str, Callable[[], GaussianMixture]]] = {
    "gmm-2d": ("6 anisotropic Gaussians on a ring in 2-d, unequal weights", gmm_2d),
    "gmm-64d": ("8 low-rank-plus-isotropic Gaussians in 64-d", gmm_64d),
}


def _gmm_builder(name: str, mixture: Callable[[], GaussianMixture], process: Callable[[], Process]):
    return lambda: GMMDenoiser(mixture(), process(), name=name)


for _base, (_what, _mixture) in _MIXTURES.items():
    for _suffix, (_proc_what, _process) in _PROCESSES.items():
        _name = f"{_base}-{_suffix}"
        register_model(
            ModelSpec(_name, f"exact mixture: {_what}; {_proc_what}", _gmm_builder(_name, _mixture, _process))
        )
    register_model(ModelSpec(_base, f"alias of {_base}-ve", _gmm_builder(_base, _mixture, _PROCESSES["ve"][1])))

# trained checkpoints shipped inside the package (native format, models/checkpoints/<name>/); see bench/train.py
CHECKPOINTS = Path(__file__).parent / "checkpoints"
_SHIPPED: dict[str, str] = {
    "digits-ve": "UNet score network on 8x8 digits, VE sigma 0.01..10 (trained by `scorebench train score`)",
    "digits-vp": "UNet eps network on 8x8 digits, DDPM T=1000 (trained by `scorebench train score`)",
}


def _checkpoint_builder(name: str) -> Callable[[], Denoiser]:
    def build() -> Denoiser:
        from .loaders import load_native

        return load_native(CHECKPOINTS / name, name=name)

    return build


for _name, _summary in _SHIPPED.items():
    register_model(ModelSpec(_name, _summary, _checkpoint_builder(_name), kind="checkpoint"))


def load_model(spec: str, device: str | None = None, **options: Any) -> Denoiser:
    """Load any model spec: a built-in name (`scorebench list`), `diffusers:PATH`, an upstream checkpoint
    (`score_sde:PATH`, `ncsnv2:PATH`, `ddim:PATH`, `edm:PATH`; options such as config=NAME, ema=False,
    class_labels=...: models.upstream.FORMATS) or a native checkpoint directory."""
    from .upstream import load_upstream, split_spec

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a model spec must be a non-empty string, got {spec!r}")
    if split_spec(spec) is not None:
        model = load_upstream(spec, **options)
    elif options:
        raise ValueError(f"model spec {spec!r} takes no options (got {', '.join(sorted(options))})")
    elif spec in MODELS:
        model = MODELS[spec].build()
    elif spec.startswith("diffusers:"):
        from .loaders import load_diffusers

        model = load_diffusers(spec.removeprefix("diffusers:"))
    elif Path(spec).exists():
        from .loaders import load_native

        model = load_native(spec)
    else:
        known = ", ".join(sorted(MODELS))
        raise ValueError(
            f"unknown model {spec!r}: not a built-in name ({known}), not diffusers:PATH, score_sde:PATH, "
            "ncsnv2:PATH, ddim:PATH or edm:PATH, and not an existing checkpoint directory"
        )
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model
