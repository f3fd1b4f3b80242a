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
  VP nets: 999 t), "index" (discrete DDPM nets: the fractional timestep index t T - 1, exact at integer steps),
  "level" (discrete VE nets, NCSN/NCSNv2 and score_sde's discrete VE: the index of the model's noise level, 0 = the
  largest; `levels` is that decreasing grid, and a sigma between levels takes the nearest in log sigma. Samplers'
  default schedules on such a model are drawn from its levels, and samplers.api refuses a schedule that is not).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import Denoiser
from .processes import DDPMProcess, Process

__all__ = ["NetworkDenoiser", "PREDICTIONS", "CONDITIONINGS", "nearest_level"]

PREDICTIONS = ("eps", "score", "x0", "v")
CONDITIONINGS = ("sigma", "t", "t999", "index", "level")


class _ScheduleTerms:
    """Memo of a wrapper's per-noise-level terms, one table per schedule tensor.

    Samplers pass noise levels as views (columns) of one schedule tensor. The first call with a view of a schedule
    converts the whole schedule at once; later calls get their terms as views of that table, with no kernel launched
    per step. A schedule is recognised by identity (a weak reference) and its version counter, so a freed tensor or
    an in-place edit never yields stale terms. Anything else (a standalone or float32 sigma, a schedule that needs
    gradients) is converted directly, as before.
    """

    MAX_LEVELS = 1 << 16  # larger bases (sigma a view into some big tensor) are not converted whole
    SLOTS = 4  # schedules remembered (kar2 alternates between two)

    def __init__(self, convert: Callable[[Tensor], Tensor]):
        self.convert = convert  # float64 levels [n] -> terms [k, n]
        self.entries: dict[int, tuple[weakref.ref, int, Tensor]] = {}

    def __call__(self, sigma: Tensor, like: Tensor) -> Tensor:
        """Terms [k, B, 1, ..., 1] in like's dtype for levels sigma [B]."""
        trailing = (1,) * (like.ndim - 1)
        root = sigma._base
        if (
            root is None
            or sigma.dtype != torch.float64
            or sigma.requires_grad
            or not root.is_contiguous()
            or root.numel() > self.MAX_LEVELS
            or root.is_inference()
        ):
            terms = self.convert(sigma.to(torch.float64)).to(like.dtype)
            return terms.view(terms.shape[0], -1, *trailing)
        entry = self.entries.get(id(root))
        if entry is None or entry[0]() is not root or entry[1] != root._version or entry[2].dtype != like.dtype:
            entry = (weakref.ref(root), root._version, self.convert(root.reshape(-1)).to(like.dtype))
            self.entries.pop(id(root), None)
            self.entries[id(root)] = entry
            while len(self.entries) > self.SLOTS:
                del self.entries[next(iter(self.entries))]
        table = entry[2]  # [k, n] contiguous, position j = root's element j
        offset = table.storage_offset() + sigma.storage_offset() - root.storage_offset()
        size = (table.shape[0], sigma.shape[0], *trailing)
        return table.as_strided(size, (table.stride(0), sigma.stride(0), *trailing), offset)

    def __getstate__(self):  # weak references do not pickle; a copy starts empty
        return {"convert": self.convert, "entries": {}}


def nearest_level(sigma: Tensor, levels: Tensor) -> Tensor:
    """The index of the level nearest to each sigma in log sigma, among decreasing levels [L] (no host sync)."""
    log_levels = levels.log()
    bounds = ((log_levels[1:] + log_levels[:-1]) / 2).flip(0)  # increasing midpoints between neighbours
    return len(levels) - 1 - torch.bucketize(sigma.log(), bounds)


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
        levels: Tensor | None = None,
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
        if (conditioning == "level") != (levels is not None):
            raise ValueError("conditioning on a noise-level index needs the model's `levels`, and only it takes them")
        if levels is not None:
            levels = torch.as_tensor(levels, dtype=torch.float64)
            if levels.ndim != 1 or levels.numel() < 2 or not bool((levels[1:] < levels[:-1]).all()):
                raise ValueError("a model's noise levels must be a decreasing 1-D grid of at least 2 levels")
            self.levels = levels
        self.net = net
        self.prediction = prediction
        self.conditioning = conditioning
        self._terms = _ScheduleTerms(self._convert)

    def condition(self, sigma: Tensor) -> Tensor:
        """The network's time argument for noise levels sigma (float64 [B])."""
        if self.conditioning == "sigma":
            return sigma
        if self.conditioning == "index":
            return self.sde.index_of_sigma(sigma)
        if self.conditioning == "level":
            return self.level_index(sigma).to(torch.float64)
        t = self.sde.t(sigma)
        return t if self.conditioning == "t" else 999 * t

    def level_index(self, sigma: Tensor) -> Tensor:
        """The index of each sigma [B] among the model's discrete levels; ValueError (a device-side assert on a GPU,
        which never waits for the host) for a sigma that is not one of them."""
        index = nearest_level(sigma, self.levels)
        off = torch.where(sigma > 0, sigma / self.levels[index] - 1, 0).abs().amax()  # a schedule's final 0 is no call
        message = (
            f"model {self.name!r} was trained on {len(self.levels)} discrete noise levels and sigma is not one of "
            "them: "
            "use a schedule drawn from model.levels (every sampler's default schedule is; samplers that evaluate "
            "between levels, such as kar2 with churn, rk45 or DLG, cannot run on it)"
        )
        if sigma.device.type == "cpu":
            if off > 1e-5:
                raise ValueError(message)
        else:
            torch._assert_async(off <= 1e-5, message)
        return index

    def _convert(self, sigma: Tensor) -> Tensor:
        """[3, n] float64 at levels sigma [n]: the scale s = x_native / x_ve, the weight of the network's output in D,
        and the network's conditioning."""
        s = self.sde.sigma_scale(sigma)
        if self.prediction == "score":
            weight = sigma**2 * s
        elif self.prediction == "v":
            weight = s * sigma
        else:
            weight = sigma
        return torch.stack([s, weight, self.condition(sigma)])

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        terms = self._terms(sigma, x)  # [3, B, 1, ..., 1] in x's dtype
        s, weight = terms[0], terms[1]
        out = self.net(x * s, terms[2].reshape(-1))
        if self.prediction == "eps":  # D = x - sigma eps
            return torch.addcmul(x, weight, out, value=-1)
        if self.prediction == "score":  # D = x + sigma^2 s score
            return torch.addcmul(x, weight, out)
        if self.prediction == "x0":
            return out
        # v: D = sqrt(a) x_native - sqrt(1 - a) v = s^2 x - s sigma v
        return torch.addcmul(x * s.square(), weight, out, value=-1)
