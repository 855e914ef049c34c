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

from annotated_types import Ge, Gt, Le, Lt

from ..registry import NonNegativeFloat, PositiveFloat, PositiveInt, UnitInterval, schedules

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

    def momentum(self, epoch: int, step: int = 0) -> float | None:
        """The momentum to train with at this step (SGD's momentum, Adam's beta1), or None to leave it."""
        return None

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


@schedules.register("one_cycle")
class OneCycle(Schedule):
    """Smith's one cycle, as torch's OneCycleLR (cosine): from max_lr / div_factor up to max_lr over pct_start of
    the steps, then down to max_lr / div_factor / final_div_factor; the momentum (SGD's, Adam's beta1) the other way,
    max_momentum -> base_momentum -> max_momentum. Per step; max_lr defaults to the optimizer's lr."""

    def __init__(self, max_lr: PositiveFloat | None = None, pct_start: Annotated[float, Gt(0), Lt(1)] = 0.3,
                 div_factor: Annotated[float, Ge(1)] = 25.0, final_div_factor: Annotated[float, Ge(1)] = 1e4,
                 cycle_momentum: bool = True, base_momentum: UnitInterval = 0.85, max_momentum: UnitInterval = 0.95,
                 **common):
        super().__init__(**common)
        self.max_lr = (max_lr or self.base_lr) * self.scale
        self.pct_start, self.div_factor, self.final_div_factor = pct_start, div_factor, final_div_factor
        self.cycle_momentum, self.base_momentum, self.max_momentum = cycle_momentum, base_momentum, max_momentum
        total = self.total_epochs * self.steps_per_epoch
        initial = self.max_lr / div_factor
        # (last step of the phase, lr at its start and end, momentum at its start and end)
        self.phases = [(pct_start * total - 1, initial, self.max_lr, max_momentum, base_momentum),
                       (total - 1, self.max_lr, initial / final_div_factor, base_momentum, max_momentum)]

    def _position(self, epoch: int, step: int) -> tuple:
        """(phase, fraction of it done) at this step."""
        now = min(epoch * self.steps_per_epoch + step, self.phases[-1][0])
        start = 0.0
        for i, phase in enumerate(self.phases):
            if now <= phase[0] or i == len(self.phases) - 1:
                return phase, (now - start) / (phase[0] - start) if phase[0] > start else 1.0
            start = phase[0]
        raise AssertionError("unreachable")

    @staticmethod
    def _cosine(start: float, end: float, fraction: float) -> float:
        return end + (start - end) / 2 * (math.cos(math.pi * fraction) + 1)

    def lr(self, epoch: int, step: int = 0) -> float:
        phase, fraction = self._position(epoch, step)
        return self._cosine(phase[1], phase[2], fraction)

    def momentum(self, epoch: int, step: int = 0) -> float | None:
        if not self.cycle_momentum:
            return None
        phase, fraction = self._position(epoch, step)
        return self._cosine(phase[3], phase[4], fraction)
