"""Learning-rate schedule and early stopping (both JSON-able dataclasses, so a checkpoint
restores them exactly)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class LRSchedule:
    """Multiplier of the base learning rate after ``step`` optimizer steps: linear warm-up,
    then cosine or linear decay to 0, constant, or halving on a plateau of the monitored
    metric (after ``patience`` epochs without improvement, down to 1/1000)."""

    kind: str
    total_steps: int
    warmup_steps: int
    mode: str = "min"
    min_delta: float = 0.0
    patience: int = 2
    scale: float = 1.0
    best: float | None = None
    bad_epochs: int = 0

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind in ("constant", "plateau"):
            return self.scale
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    def epoch_end(self, value: float) -> None:
        if self.kind != "plateau" or not math.isfinite(value):
            return
        if _improves(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale, self.bad_epochs = max(self.scale * 0.5, 1e-3), 0


def _improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement larger than ``min_delta``."""

    patience: int
    min_delta: float = 0.0
    mode: str = "min"
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's metric; True when it is the new best."""
        if _improves(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience
