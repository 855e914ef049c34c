"""Layers, the Module base and building a model from specs such as a config's `model:` list."""

from __future__ import annotations

from ..registry import layers as registry
from .conv import AvgPool2D, Conv2D, GlobalAvgPool, MaxPool2D
from .core import GELU, BatchNorm, Dropout, Flatten, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh
from .module import Module, Parameter
from .recurrent import GRU, LSTM, RNN, Embedding
from .structure import Reshape, Residual

__all__ = ["GELU", "GRU", "LSTM", "RNN", "AvgPool2D", "BatchNorm", "Conv2D", "Dropout", "Embedding", "Flatten",
           "GlobalAvgPool", "LeakyReLU", "Linear", "MaxPool2D", "Module", "Parameter", "ReLU", "Reshape", "Residual",
           "Sequential", "Sigmoid", "Softmax", "Tanh", "build_layer", "build_model"]


def build_layer(spec) -> Module:
    """A layer from `'relu'` or `{'linear': {'units': 10}}`; containers take their `layers` as specs."""
    if isinstance(spec, str):
        name, options = spec, {}
    else:
        ((name, options),) = spec.items()
        options = {"layers": options} if isinstance(options, list) else dict(options or {})
    cls = registry.get(name)
    if "layers" in options:
        options["layers"] = [build_layer(s) for s in options["layers"]]
    return cls(**options)


def build_model(specs: list, input_shape: tuple[int, ...]) -> Sequential:
    """A built Sequential model for per-sample `input_shape` (the batch axis left out)."""
    model = Sequential([build_layer(s) for s in specs])
    model.path = "model"
    model.build(tuple(input_shape))
    return model
