"""Elementwise arithmetic and matrix products, each forward next to its backward.

A backward closure gets the gradient of the op's output and returns one gradient per input
(None where the input needs none). Broadcast inputs get their gradient summed back to shape.
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result, unbroadcast


def _both_tensors(a, b) -> tuple[Tensor, Tensor]:
    """Two operands as Tensors; a plain number or array takes the other's dtype and device."""
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    b = as_tensor(b)
    return as_tensor(a, like=b), b


def add(a, b) -> Tensor:
    a, b = _both_tensors(a, b)

    def backward(g):
        return unbroadcast(g, a.shape), unbroadcast(g, b.shape)

    return make_result(a.data + b.data, (a, b), backward, "add")


def sub(a, b) -> Tensor:
    a, b = _both_tensors(a, b)

    def backward(g):
        return unbroadcast(g, a.shape), (unbroadcast(-g, b.shape) if b.requires_grad else None)

    return make_result(a.data - b.data, (a, b), backward, "sub")


def mul(a, b) -> Tensor:
    a, b = _both_tensors(a, b)

    def backward(g):
        return (unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
                unbroadcast(g * a.data, b.shape) if b.requires_grad else None)

    return make_result(a.data * b.data, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    a, b = _both_tensors(a, b)

    def backward(g):
        grad_a = g / b.data
        return (unbroadcast(grad_a, a.shape) if a.requires_grad else None,
                unbroadcast(-grad_a * a.data / b.data, b.shape) if b.requires_grad else None)

    return make_result(a.data / b.data, (a, b), backward, "div")


def neg(x) -> Tensor:
    x = as_tensor(x)
    return make_result(-x.data, (x,), lambda g: (-g,), "neg")


def pow(base, exponent) -> Tensor:
    base, exponent = _both_tensors(base, exponent)
    xp = backend.array_module(base.data)
    out = base.data ** exponent.data

    def backward(g):
        grad_base = grad_exponent = None
        if base.requires_grad:
            grad_base = unbroadcast(g * exponent.data * base.data ** (exponent.data - 1), base.shape)
        if exponent.requires_grad:
            grad_exponent = unbroadcast(g * out * xp.log(base.data), exponent.shape)
        return grad_base, grad_exponent

    return make_result(out, (base, exponent), backward, "pow")


def exp(x) -> Tensor:
    x = as_tensor(x)
    out = backend.array_module(x.data).exp(x.data)
    return make_result(out, (x,), lambda g: (g * out,), "exp")


def log(x) -> Tensor:
    x = as_tensor(x)
    out = backend.array_module(x.data).log(x.data)
    return make_result(out, (x,), lambda g: (g / x.data,), "log")


def sqrt(x) -> Tensor:
    x = as_tensor(x)
    out = backend.array_module(x.data).sqrt(x.data)
    return make_result(out, (x,), lambda g: (g * 0.5 / out,), "sqrt")


def abs(x) -> Tensor:
    x = as_tensor(x)
    xp = backend.array_module(x.data)
    return make_result(xp.abs(x.data), (x,), lambda g: (g * xp.sign(x.data),), "abs")


def _select_by_comparison(g, a_data, b_data, prefer_a, shape_a, shape_b, a_needs, b_needs):
    """Gradient routing for maximum/minimum: the chosen side gets it, ties split it in half."""
    tie = a_data == b_data
    share_a = prefer_a.astype(g.dtype) + tie.astype(g.dtype) * 0.5
    grad_a = unbroadcast(g * share_a, shape_a) if a_needs else None
    grad_b = unbroadcast(g * (1 - share_a), shape_b) if b_needs else None
    return grad_a, grad_b


def maximum(a, b) -> Tensor:
    a, b = _both_tensors(a, b)
    xp = backend.array_module(a.data)

    def backward(g):
        return _select_by_comparison(g, a.data, b.data, a.data > b.data, a.shape, b.shape,
                                     a.requires_grad, b.requires_grad)

    return make_result(xp.maximum(a.data, b.data), (a, b), backward, "maximum")


def minimum(a, b) -> Tensor:
    a, b = _both_tensors(a, b)
    xp = backend.array_module(a.data)

    def backward(g):
        return _select_by_comparison(g, a.data, b.data, a.data < b.data, a.shape, b.shape,
                                     a.requires_grad, b.requires_grad)

    return make_result(xp.minimum(a.data, b.data), (a, b), backward, "minimum")


def clip(x, min=None, max=None) -> Tensor:
    """Values limited to [min, max]; the gradient passes where min <= x <= max (as torch.clamp)."""
    x = as_tensor(x)
    xp = backend.array_module(x.data)
    inside = xp.ones(x.shape, dtype=bool)
    if min is not None:
        inside &= x.data >= min
    if max is not None:
        inside &= x.data <= max
    out = xp.clip(x.data, min, max)
    return make_result(out, (x,), lambda g: (g * inside,), "clip")


def where(condition, input, other) -> Tensor:
    """`input` where `condition` holds, else `other` (broadcasting; condition gets no gradient)."""
    input, other = _both_tensors(input, other)
    cond = condition.data if isinstance(condition, Tensor) else condition
    xp = backend.array_module(input.data)
    cond = xp.asarray(cond, dtype=bool)

    def backward(g):
        zero = xp.zeros((), dtype=g.dtype)
        return (unbroadcast(xp.where(cond, g, zero), input.shape) if input.requires_grad else None,
                unbroadcast(xp.where(cond, zero, g), other.shape) if other.requires_grad else None)

    return make_result(xp.where(cond, input.data, other.data), (input, other), backward, "where")


def matmul(a, b) -> Tensor:
    """Matrix product with NumPy's rules: 1-D operands promoted, leading dimensions broadcast."""
    a, b = _both_tensors(a, b)
    xp = backend.array_module(a.data)

    def backward(g):
        a2 = a.data[None, :] if a.ndim == 1 else a.data
        b2 = b.data[:, None] if b.ndim == 1 else b.data
        if b.ndim == 1:
            g = g[..., None]
        if a.ndim == 1:
            g = g[..., None, :]
        grad_a = grad_b = None
        if a.requires_grad:
            grad_a = g @ xp.swapaxes(b2, -1, -2)
            if a.ndim == 1:
                grad_a = grad_a[..., 0, :]
            grad_a = unbroadcast(grad_a, a.shape)
        if b.requires_grad:
            grad_b = xp.swapaxes(a2, -1, -2) @ g
            if b.ndim == 1:
                grad_b = grad_b[..., 0]
            grad_b = unbroadcast(grad_b, b.shape)
        return grad_a, grad_b

    return make_result(a.data @ b.data, (a, b), backward, "matmul")
