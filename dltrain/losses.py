"""Losses by config name, and the metrics that go with each kind of task.

A loss takes the model's raw outputs (logits for classification) and the targets; it also
says how to turn outputs into predictions, so the trainer needs no per-task branches.
"""

from __future__ import annotations

from typing import Literal

from . import backend
from . import functional as F
from .errors import ConfigError
from .registry import PositiveFloat, UnitInterval, losses


@losses.register("cross_entropy")
class CrossEntropy:
    """Softmax cross-entropy from logits (N, C) and integer labels (or class probabilities); the multi-class loss.
    class_weights: 'balanced' (n / (classes x count of the class), from the training split) or one per class."""

    task = "classification"

    def __init__(self, label_smoothing: UnitInterval = 0.0,
                 class_weights: Literal["balanced"] | list[PositiveFloat] | None = None):
        self.label_smoothing, self.class_weights = label_smoothing, class_weights
        self.weight = None  # the weights on the device, once the data is known (weights_for)

    def weights_for(self, labels, classes: int) -> list[float] | None:
        """The class weights this loss uses for these training labels (host array), or None."""
        if self.class_weights is None:
            return None
        if self.class_weights == "balanced":
            counts = backend.np.bincount(labels, minlength=classes)
            return [len(labels) / (classes * c) if c else 0.0 for c in counts.tolist()]
        if len(self.class_weights) != classes:
            raise ConfigError(f"loss.class_weights: {len(self.class_weights)} weights, but the data has {classes} "
                              f"classes")
        return [float(w) for w in self.class_weights]

    def __call__(self, logits, labels):
        # The trainer's labels were checked when the data was loaded: no per-batch range check.
        return F.cross_entropy(logits, labels, weight=self.weight, label_smoothing=self.label_smoothing,
                               check_targets=False)

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
    """Sigmoid cross-entropy from logits and 0/1 targets of the same shape (binary or multi-label); pos_weight > 1
    weighs the positive targets up (imbalanced data: negatives / positives)."""

    task = "binary"

    def __init__(self, pos_weight: PositiveFloat | None = None):
        self.pos_weight = pos_weight

    def __call__(self, logits, targets):
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)

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
