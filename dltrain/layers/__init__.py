"""Layers, the Module base and building a model from specs such as a config's `model:` list."""

from __future__ import annotations

from ..registry import layers as registry
from .attention import MultiheadAttention, PositionalEmbedding, TransformerEncoder
from .conv import AvgPool2D, Conv2D, GlobalAvgPool, MaxPool2D
from .core import (
    GELU,
    BatchNorm,
    Dropout,
    Flatten,
    LayerNorm,
    LeakyReLU,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from .module import Module, Parameter, building_for, carry_padding_mask
from .recurrent import GRU, LSTM, RNN, Embedding, MeanPool, SequencePool
from .structure import Reshape, Residual

__all__ = ["GELU", "GRU", "LSTM", "RNN", "AvgPool2D", "BatchNorm", "Conv2D", "Dropout", "Embedding", "Flatten",
           "GlobalAvgPool", "LayerNorm", "LeakyReLU", "Linear", "MaxPool2D", "MeanPool", "Module",
           "MultiheadAttention", "Parameter", "PositionalEmbedding", "ReLU", "Reshape", "Residual", "SequencePool",
           "Sequential", "Sigmoid", "Softmax", "Tanh", "TransformerEncoder", "build_layer", "build_model",
           "building_for", "carry_padding_mask"]


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


def build_model(specs: list, input_shape: tuple[int, ...], data: dict | None = None) -> Sequential:
    """A built Sequential model for per-sample `input_shape` (the batch axis left out). `data` is what the data tells
    layers whose options default to it: {'vocab_size': ..., 'padding_id': ...} (see module.building_for)."""
    model = Sequential([build_layer(s) for s in specs])
    model.path = "model"
    with building_for(data):
        model.build(tuple(input_shape))
    return model
