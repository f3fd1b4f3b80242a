"""The one model interface: a denoiser over the VE noise level sigma, and the NFE counter around it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .processes import Process, broadcast

__all__ = ["Denoiser", "CountingDenoiser", "counting_as", "tally"]


class Denoiser(nn.Module):
    """D(x, sigma) -> estimate of x0, for x = x0 + sigma * eps (VE parametrisation), whatever the model was trained as.

    Attributes every model carries: `shape` (one sample's shape), `sigma_min`/`sigma_max` (the noise range it was
    trained on), `data_range` (e.g. (-1, 1)), `sde` (its native Process), `process` ("ve" or "vp") and `dataset`
    (the name of the data it models, e.g. "digits", or None): metrics pick their reference set from it.
    A model trained on a discrete set of noise levels (NCSN, NCSNv2, score_sde's discrete VE) also has `levels`, that
    decreasing float64 grid [L]; samplers' default schedules on it are drawn from those levels. Otherwise None.
    """

    def __init__(
        self,
        *,
        shape: tuple[int, ...],
        sde: Process,
        data_range: tuple[float, float] = (-1.0, 1.0),
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        name: str = "",
        dataset: str | None = None,
    ):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.sde = sde
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.sigma_min = float(sde.sigma_min if sigma_min is None else sigma_min)
        self.sigma_max = float(sde.sigma_max if sigma_max is None else sigma_max)
        self.name = name
        self.dataset = dataset
        self.register_buffer("levels", None, persistent=False)

    @property
    def process(self) -> str:
        return self.sde.name

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise(x, sigma)

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        """grad_x log p(x; sigma) = (D(x, sigma) - x) / sigma^2."""
        return (self(x, sigma) - x) / broadcast(sigma, x) ** 2

    def check_input(self, x: Tensor, sigma: Tensor) -> None:
        """Raise ValueError when x or sigma do not fit this model (called by the public entry points, not per step)."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"model {self.name or type(self).__name__} expects samples of shape {self.shape}, "
                f"got {tuple(x.shape[1:])}"
            )
        if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
            raise ValueError(f"sigma must have shape [{x.shape[0]}], got {list(sigma.shape)}")


class CountingDenoiser(Denoiser):
    """Wraps a Denoiser and counts its evaluations: `calls` (network calls) and `evals` (rows evaluated).

    A sampler may book work apart from its NFE (never hiding it): evaluations made inside `counting_as(model, key)`
    add to `extras[key]` instead of `evals` (e.g. DLG's burn-in), and `tally(model, key, n)` adds other measured
    work (e.g. noise-classifier evaluations). On a model that is not counted both are no-ops.
    """

    def __init__(self, inner: Denoiser):
        super().__init__(
            shape=inner.shape,
            sde=inner.sde,
            data_range=inner.data_range,
            sigma_min=inner.sigma_min,
            sigma_max=inner.sigma_max,
            name=inner.name,
            dataset=inner.dataset,
        )
        self.inner = inner
        self.levels = getattr(inner, "levels", None)
        self.calls = 0
        self.evals = 0
        self.extras: dict[str, float] = {}
        self.phase: str | None = None

    def reset(self) -> None:
        self.calls = 0
        self.evals = 0
        self.extras = {}

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        if self.phase is None:
            self.evals += x.shape[0]
        else:
            self.extras[self.phase] = self.extras.get(self.phase, 0) + x.shape[0]
        return self.inner(x, sigma)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "inner" not in self._modules:  # during __init__
                raise
            return getattr(self._modules["inner"], name)


def _counters(model) -> Iterator[CountingDenoiser]:
    while isinstance(model, CountingDenoiser):
        yield model
        model = model.inner


@contextmanager
def counting_as(model, key: str) -> Iterator[None]:
    """Network evaluations inside the block count as `extras[key]` of every counter around `model`, not as NFE."""
    counters = list(_counters(model))
    saved = [c.phase for c in counters]
    for c in counters:
        c.phase = key
    try:
        yield
    finally:
        for c, phase in zip(counters, saved, strict=True):
            c.phase = phase


def tally(model, key: str, n: float) -> None:
    """Add n to `extras[key]` of every counter around `model` (work a sampler does besides the network's)."""
    for c in _counters(model):
        c.extras[key] = c.extras.get(key, 0) + n
