"""The settings of a score-model training run (`scorebench train score`), importable without torch so that the
command's `--help` shows its defaults instantly. The training itself is bench.train."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LAYOUT", "ScoreTraining"]

# how each process is trained and wrapped
LAYOUT = {"ve": {"prediction": "score", "conditioning": "sigma"}, "vp": {"prediction": "eps", "conditioning": "index"}}


@dataclass(frozen=True)
class ScoreTraining:
    """Everything a training run depends on (with the data and the code): recorded in the checkpoint's config."""

    data: str = "digits"
    process: str = "ve"  # "ve" (score network over sigma) or "vp" (discrete DDPM eps network)
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    ema: float = 0.999
    seed: int = 0
    warmup: int = 200  # linear learning-rate warm-up steps
    grad_clip: float = 1.0
    sigma_min: float = 0.01  # VE only
    sigma_max: float | None = None  # VE only; None: max pairwise distance of the training set, rounded up
    log_every: int = 50
    arch: dict[str, Any] = field(default_factory=dict)  # UNet kwargs overriding the defaults

    def check(self) -> None:
        if self.process not in LAYOUT:
            raise ValueError(f"unknown process {self.process!r}; expected one of {', '.join(LAYOUT)}")
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("steps, batch size and log interval must be positive")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {self.ema}")
        if self.sigma_max is not None and not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
