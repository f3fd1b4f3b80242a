"""Wrap a trained network, whatever it predicts and however it is conditioned, as a Denoiser over sigma.

The network sees its own coordinates, x_native = scale(t) * x_ve at the native time t = sde.t(sigma), and a
conditioning value derived from t or sigma; its output is converted to D(x, sigma) here and nowhere else.

predictions (what the network outputs):
- "eps":   the noise, x_native = s x0 + s sigma eps             ->  D = x_ve - sigma * eps
- "score": grad log p in native coordinates (NCSN/NCSN++ on VE) ->  D = x_ve + sigma^2 * s * score
- "x0":    the clean sample                                     ->  D = x0
- "v":     v = sqrt(a) eps - sqrt(1 - a) x0 (VP only)           ->  D = sqrt(a) x_native - sqrt(1 - a) v
conditionings (what the network's time argument is):
- "sigma" (NCSN++ in diffusers: the timestep argument IS sigma), "t" (continuous t), "t999" (score_sde's continuous
  VP nets: 999 t), "index" (discrete DDPM nets: the fractional timestep index t T - 1, exact at integer steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import Denoiser
from .processes import DDPMProcess, Process, broadcast

__all__ = ["NetworkDenoiser", "PREDICTIONS", "CONDITIONINGS"]

PREDICTIONS = ("eps", "score", "x0", "v")
CONDITIONINGS = ("sigma", "t", "t999", "index")


class NetworkDenoiser(Denoiser):
    """A network net(x_native, cond[B]) -> prediction, seen as a denoiser over sigma."""

    def __init__(
        self,
        net: nn.Module | Callable[[Tensor, Tensor], Tensor],
        sde: Process,
        *,
        prediction: str,
        conditioning: str,
        shape: tuple[int, ...],
        data_range: tuple[float, float] = (-1.0, 1.0),
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        name: str = "",
    ):
        super().__init__(
            shape=shape, sde=sde, data_range=data_range, sigma_min=sigma_min, sigma_max=sigma_max, name=name
        )
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; expected one of {', '.join(CONDITIONINGS)}")
        if prediction == "v" and sde.name != "vp":
            raise ValueError("v-prediction is defined for VP processes only")
        if conditioning == "index" and not isinstance(sde, DDPMProcess):
            raise ValueError("conditioning on a timestep index needs a discrete DDPM process")
        self.net = net
        self.prediction = prediction
        self.conditioning = conditioning

    def condition(self, sigma: Tensor, t: Tensor) -> Tensor:
        if self.conditioning == "sigma":
            return sigma
        if self.conditioning == "t":
            return t
        if self.conditioning == "t999":
            return 999 * t
        return self.sde.index(t)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.to(torch.float64)
        t = self.sde.t(sigma)
        s = broadcast(self.sde.scale(t), x)
        out = self.net(x * s, self.condition(sigma, t).to(x.dtype))
        sig = broadcast(sigma, x)
        if self.prediction == "eps":
            return x - sig * out
        if self.prediction == "score":
            return x + sig**2 * s * out
        if self.prediction == "x0":
            return out
        return s**2 * x - s * sig * out  # sqrt(a) x_native = a x_ve; sqrt(1 - a) = s sigma
