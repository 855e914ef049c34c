"""Losses by config name, and the metrics that go with each kind of task.

A loss takes the model's raw outputs (logits for classification) and the targets; it also
says how to turn outputs into predictions, so the trainer needs no per-task branches.
"""

from __future__ import annotations

from . import backend
from . import functional as F
from .registry import UnitInterval, losses


@losses.register("cross_entropy")
class CrossEntropy:
    """Softmax cross-entropy from logits (N, C) and integer labels; the multi-class loss."""

    task = "classification"

    def __init__(self, label_smoothing: UnitInterval = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, logits, labels):
        # The trainer's labels were checked when the data was loaded: no per-batch range check.
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, check_targets=False)

    def predict(self, outputs):
        return backend.array_module(outputs).argmax(outputs, axis=-1)

    def add_correct(self, outputs, labels, counter) -> None:
        """counter (a 0-d int64 array) += the number of rows whose argmax is the label; one kernel when fused."""
        if outputs.ndim == 2:
            backend.kernels_for(outputs).add_correct(outputs, labels, counter)
        else:
            counter += (self.predict(outputs) == labels).sum()


@losses.register("binary_cross_entropy")
class BinaryCrossEntropy:
    """Sigmoid cross-entropy from logits and 0/1 targets of the same shape (binary or multi-label)."""

    task = "binary"

    def __call__(self, logits, targets):
        return F.binary_cross_entropy_with_logits(logits, targets)

    def predict(self, outputs):
        return (outputs > 0).astype(outputs.dtype)

    def add_correct(self, outputs, targets, counter) -> None:
        """counter (a 0-d int64 array) += the number of targets predicted right (per element for multi-label)."""
        counter += (self.predict(outputs) == targets).sum()


@losses.register("mse")
class MeanSquaredError:
    """Mean of squared differences; the regression loss (no accuracy)."""

    task = "regression"

    def __call__(self, outputs, targets):
        return F.mse_loss(outputs, targets)

    def predict(self, outputs):
        return outputs
