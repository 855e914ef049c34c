"""Learning-rate schedules: a pure function of (epoch, step), so resuming needs only the position.

lr(epoch, step) = base_lr * scale * warmup-or-factor, where
  scale   = batch_size / base_batch_size when the linear scaling rule is on, else 1
  warmup  = start + (1 - start) * t / warmup_epochs while t < warmup_epochs (t counts in steps)
  factor  = the schedule's own curve at epochs since warmup ended:
            constant 1 | exponential gamma^e | step gamma^floor(e / step_size)
            | cosine min + (1 - min) (1 + cos(pi e / E)) / 2, E = epochs after warmup
With interval 'epoch' the factor changes at epoch boundaries; with 'step', e is fractional.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from annotated_types import Gt, Le

from ..registry import NonNegativeFloat, PositiveInt, UnitInterval, schedules

Gamma = Annotated[float, Gt(0), Le(1)]


class Schedule:
    """Options shared by every schedule: warmup, per-epoch or per-step updates, the linear scaling rule."""

    def __init__(self, base_lr: float, total_epochs: int, steps_per_epoch: int, batch_size: int | None = None,
                 warmup_epochs: NonNegativeFloat = 0.0, warmup_start_factor: UnitInterval = 0.0,
                 interval: Literal["epoch", "step"] = "epoch", base_batch_size: PositiveInt | None = None):
        self.base_lr = base_lr
        self.total_epochs = total_epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup_epochs = warmup_epochs
        self.warmup_start_factor = warmup_start_factor
        self.interval = interval
        self.scale = batch_size / base_batch_size if base_batch_size and batch_size else 1.0

    def factor(self, epochs_after_warmup: float) -> float:
        return 1.0

    def lr(self, epoch: int, step: int = 0) -> float:
        """Learning rate for `step` (0-based, within the epoch) of `epoch` (0-based)."""
        fine = epoch + step / self.steps_per_epoch
        if fine < self.warmup_epochs:
            ramp = self.warmup_start_factor + (1 - self.warmup_start_factor) * fine / self.warmup_epochs
            return self.base_lr * self.scale * ramp
        t = fine if self.interval == "step" else float(epoch)
        return self.base_lr * self.scale * self.factor(max(0.0, t - self.warmup_epochs))


@schedules.register("constant")
class Constant(Schedule):
    """The same learning rate throughout (after any warmup)."""


@schedules.register("exponential")
class Exponential(Schedule):
    """Multiply by gamma every epoch (the tutorial's 'multiply 0.98 every epoch')."""

    def __init__(self, gamma: Gamma = 0.98, **common):
        super().__init__(**common)
        self.gamma = gamma

    def factor(self, e):
        return self.gamma ** e


@schedules.register("step")
class Step(Schedule):
    """Multiply by gamma every step_size epochs."""

    def __init__(self, step_size: PositiveInt = 10, gamma: Gamma = 0.1, **common):
        super().__init__(**common)
        self.step_size, self.gamma = step_size, gamma

    def factor(self, e):
        return self.gamma ** math.floor(e / self.step_size)


@schedules.register("cosine")
class Cosine(Schedule):
    """Half a cosine from the base rate down to min_factor * base over the epochs after warmup."""

    def __init__(self, min_factor: UnitInterval = 0.0, **common):
        super().__init__(**common)
        self.min_factor = min_factor

    def factor(self, e):
        span = max(self.total_epochs - self.warmup_epochs, 1e-12)
        progress = min(e / span, 1.0)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
