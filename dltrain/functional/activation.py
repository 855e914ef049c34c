"""Activation functions and softmax, named and defaulted as in torch.nn.functional."""

from __future__ import annotations

import math

from .. import backend
from ..autograd import Tensor, as_tensor, make_result


def relu(input) -> Tensor:
    x = as_tensor(input)
    out = backend.array_module(x.data).maximum(x.data, 0)
    kernels = backend.kernels_for(x.data)  # the gradient is read off the output: no mask is made or kept
    return make_result(out, (x,), lambda g: (kernels.relu_backward(g, out),), "relu")


def leaky_relu(input, negative_slope: float = 0.01) -> Tensor:
    x = as_tensor(input)
    xp = backend.array_module(x.data)
    positive = x.data > 0
    out = xp.where(positive, x.data, x.data * negative_slope)
    return make_result(out, (x,), lambda g: (xp.where(positive, g, g * negative_slope),), "leaky_relu")


def tanh(input) -> Tensor:
    x = as_tensor(input)
    out = backend.array_module(x.data).tanh(x.data)
    return make_result(out, (x,), lambda g: (g * (1 - out * out),), "tanh")


def sigmoid(input) -> Tensor:
    x = as_tensor(input)
    # 1 / (1 + exp(-x)) overflows for x << 0; the tanh form never does.
    out = 0.5 * (1 + backend.array_module(x.data).tanh(0.5 * x.data))
    return make_result(out, (x,), lambda g: (g * out * (1 - out),), "sigmoid")


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(input, approximate: str = "none") -> Tensor:
    """x * Phi(x) with Phi the standard normal CDF ('none'), or its tanh approximation ('tanh')."""
    x = as_tensor(input)
    xp = backend.array_module(x.data)
    v = x.data
    if approximate == "none":
        kernels = backend.kernels_for(v)
        out = kernels.gelu_forward(v)

        def backward(g):
            return (kernels.gelu_backward(g, v),)
    elif approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)
        t = xp.tanh(inner)
        out = 0.5 * v * (1 + t)

        def backward(g):
            d_inner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * v * v)
            return (g * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * d_inner),)
    else:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return make_result(out, (x,), backward, "gelu")


def _stable_log_softmax(data, dim: int):
    xp = backend.array_module(data)
    shifted = data - data.max(axis=dim, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))


def softmax(input, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `dim`, computed after subtracting the max (no overflow)."""
    x = as_tensor(input)
    xp = backend.array_module(x.data)
    out = xp.exp(_stable_log_softmax(x.data, dim))

    def backward(g):
        return (out * (g - (g * out).sum(axis=dim, keepdims=True)),)

    return make_result(out, (x,), backward, "softmax")


def log_softmax(input, dim: int = -1) -> Tensor:
    x = as_tensor(input)
    xp = backend.array_module(x.data)
    out = _stable_log_softmax(x.data, dim)

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=dim, keepdims=True),)

    return make_result(out, (x,), backward, "log_softmax")
