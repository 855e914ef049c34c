"""Gradient flow per layer (training.log_gradients): the tutorial's exploding / vanishing gradients, measured.

For every top-level layer, each epoch records the mean over steps of
    <layer>.weight_grad   the L2 norm of the gradient of its weight matrix or kernel (linear, conv2d, ...;
                          normalization layers' scale vectors are left out)
    <layer>.output_grad   the L2 norm of the gradient of its output (the activation gradient)
Both come from arrays the backward pass computes anyway; the outputs keep theirs via retain_grad.
"""

from __future__ import annotations

import math

from .. import backend


class GradientMonitor:
    def __init__(self, layers):
        self.layers = list(layers)
        self.columns = []
        self.weighted = [layer for layer in self.layers
                         if "weight" in layer._parameters and layer._parameters["weight"].ndim >= 2]
        for layer in self.layers:
            if layer in self.weighted:
                self.columns.append(f"{layer.path}.weight_grad")
            self.columns.append(f"{layer.path}.output_grad")
        self.outputs = {}
        self.start_epoch()

    def start_epoch(self) -> None:
        self.sums = dict.fromkeys(self.columns, 0.0)
        self.steps = 0

    def watch(self, layer, output) -> None:
        """Called with each layer's output during a recorded forward pass."""
        output.retain_grad()
        self.outputs[layer.path] = output

    def after_backward(self) -> None:
        for layer in self.layers:
            output = self.outputs.get(layer.path)
            if output is not None and output.grad is not None:
                self.sums[f"{layer.path}.output_grad"] += _norm(output.grad)
            if layer in self.weighted and layer._parameters["weight"].grad is not None:
                self.sums[f"{layer.path}.weight_grad"] += _norm(layer._parameters["weight"].grad)
        self.outputs.clear()
        self.steps += 1

    def epoch_row(self, epoch: int) -> dict:
        row = {"epoch": epoch}
        row.update({k: repr(v / max(self.steps, 1)) for k, v in self.sums.items()})
        return row

    def header(self) -> list[str]:
        return ["epoch", *self.columns]


def _norm(array) -> float:
    xp = backend.array_module(array)
    return math.sqrt(float(xp.vdot(array.ravel(), array.ravel())))

