"""Validation-based early stopping, and the one notion of 'best epoch' the run uses."""

from __future__ import annotations

import math

from ..errors import ConfigError


class EarlyStopping:
    """Tracks the monitored metric: an epoch is an improvement when it beats the best by more than min_delta.

    `wait` counts epochs without improvement from `start_from_epoch` on; the run stops when it
    reaches `patience` (if enabled). Its state is a small dict so that resume continues it exactly.
    """

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0,
                 start_from_epoch: int = 0, enabled: bool = True):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.start_from_epoch, self.enabled = min_delta, start_from_epoch, enabled
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0

    def is_improvement(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, metrics: dict) -> tuple[bool, bool]:
        """(is_best, should_stop) after `epoch` (1-based) with these metrics."""
        if self.monitor not in metrics or metrics[self.monitor] is None:
            available = ", ".join(k for k, v in metrics.items() if v is not None and k not in ("epoch", "lr"))
            raise ConfigError(f"training.early_stopping.monitor: metric {self.monitor!r} does not exist in this run; "
                              f"available: {available}")
        value = float(metrics[self.monitor])
        if math.isfinite(value) and self.is_improvement(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True, False
        if epoch > self.start_from_epoch:
            self.wait += 1
        return False, self.enabled and self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], int(state["wait"])
