"""Ops that move values without changing them: reshape, transpose, indexing, concatenate, stack."""

from __future__ import annotations

from .. import backend
from ..autograd import SliceGrad, Tensor, as_tensor, make_result


def reshape(x, shape) -> Tensor:
    x = as_tensor(x)
    if isinstance(shape, int):
        shape = (shape,)
    return make_result(x.data.reshape(shape), (x,), lambda g: (g.reshape(x.shape),), "reshape")


def flatten(x, start_dim: int = 1) -> Tensor:
    """Merge all axes from `start_dim` on into one (layers keep the batch axis)."""
    x = as_tensor(x)
    return reshape(x, x.shape[:start_dim] + (-1,))


def transpose(x, axes=None) -> Tensor:
    """Permute axes as numpy.transpose (reversed when `axes` is None)."""
    x = as_tensor(x)
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
    inverse = [0] * len(axes)
    for i, a in enumerate(axes):
        inverse[a] = i
    return make_result(x.data.transpose(axes), (x,), lambda g: (g.transpose(inverse),), "transpose")


def _is_basic_index(index) -> bool:
    """Slices, ints, None and Ellipsis select each element at most once."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, slice)) or p is None or p is Ellipsis for p in parts)


def getitem(x, index) -> Tensor:
    """x[index] for basic slices and integer or boolean arrays; repeated indices sum their gradients."""
    x = as_tensor(x)
    xp = backend.array_module(x.data)

    def on_device(i):  # index arrays follow the data (host arrays go to the GPU with it)
        i = i.data if isinstance(i, Tensor) else i
        return xp.asarray(i) if isinstance(i, backend.np.ndarray) and xp is not backend.np else i

    index = tuple(on_device(i) for i in index) if isinstance(index, tuple) else on_device(index)
    basic = _is_basic_index(index)
    return make_result(x.data[index], (x,), lambda g: (SliceGrad(index, g, x.data, basic),), "getitem")


def concatenate(tensors, axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    xp = backend.array_module(tensors[0].data)
    out = xp.concatenate([t.data for t in tensors], axis=axis)
    bounds = []
    start = 0
    for t in tensors:
        bounds.append((start, start + t.shape[axis]))
        start += t.shape[axis]

    def backward(g):
        prefix = (slice(None),) * (axis % out.ndim)
        return tuple(g[prefix + (slice(lo, hi),)] for lo, hi in bounds)

    return make_result(out, tuple(tensors), backward, "concatenate")


def stack(tensors, axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    xp = backend.array_module(tensors[0].data)
    out = xp.stack([t.data for t in tensors], axis=axis)

    prefix = (slice(None),) * (axis % out.ndim)

    def backward(g):
        return tuple(g[prefix + (i,)] for i in range(len(tensors)))  # views, no copies

    return make_result(out, tuple(tensors), backward, "stack")
