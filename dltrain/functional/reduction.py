"""Reductions over axes: sum, mean and max, with NumPy's `axis` and `keepdims`."""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result


def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(sorted(a % ndim for a in axis))


def _expand(g, axes: tuple[int, ...], keepdims: bool):
    """Put the reduced axes back as size-1 axes so `g` broadcasts against the input."""
    if keepdims:
        return g
    xp = backend.array_module(g)
    return xp.expand_dims(g, axes) if axes else g


def sum(x, axis=None, keepdims: bool = False) -> Tensor:
    x = as_tensor(x)
    axes = _axes(axis, x.ndim)
    xp = backend.array_module(x.data)

    def backward(g):
        return (xp.broadcast_to(_expand(g, axes, keepdims), x.shape).copy(),)

    return make_result(x.data.sum(axis=axes, keepdims=keepdims), (x,), backward, "sum")


def mean(x, axis=None, keepdims: bool = False) -> Tensor:
    x = as_tensor(x)
    axes = _axes(axis, x.ndim)
    xp = backend.array_module(x.data)
    count = 1
    for a in axes:
        count *= x.shape[a]

    def backward(g):
        return (xp.broadcast_to(_expand(g, axes, keepdims) / count, x.shape).copy(),)

    return make_result(x.data.mean(axis=axes, keepdims=keepdims), (x,), backward, "mean")


def max(x, axis=None, keepdims: bool = False) -> Tensor:
    """Largest value along axes; tied maxima share the gradient equally (as torch.amax)."""
    x = as_tensor(x)
    axes = _axes(axis, x.ndim)
    out = x.data.max(axis=axes, keepdims=True)

    def backward(g):
        is_max = (x.data == out).astype(g.dtype)
        return (is_max * (_expand(g, axes, keepdims) / is_max.sum(axis=axes, keepdims=True)),)

    result = out if keepdims else out.reshape([n for i, n in enumerate(out.shape) if i not in axes])
    return make_result(result, (x,), backward, "max")
