"""The fully connected layer's op: y = x W^T + b, fused so its backward is three products."""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result
from ..errors import ShapeError


def linear(input, weight, bias=None, activation: str | None = None) -> Tensor:
    """x @ weight.T + bias, with weight shaped (out_features, in_features) as in torch. activation='relu' applies
    a ReLU in the same pass as the bias (what a following ReLU layer does, without a pass and an array of its own)."""
    x = as_tensor(input)
    w = as_tensor(weight, like=x)
    b = None if bias is None else as_tensor(bias, like=x)
    relu = fused_activation("linear", activation)
    if x.shape[-1] != w.shape[1]:
        raise ShapeError(f"linear: expected input (..., {w.shape[1]}) for weight {w.shape}; got input {x.shape}")
    out = x.data @ w.data.T
    kernels = backend.kernels_for(out)
    if relu:
        kernels.add_bias_relu(out, None if b is None else b.data)
    elif b is not None:
        out += b.data

    def backward(g):
        if relu:
            g = kernels.relu_backward(g, out)
        g2 = g.reshape(-1, g.shape[-1])  # leading axes act as one batch axis
        grad_x = (g @ w.data) if x.requires_grad else None
        grad_w = (g2.T @ x.data.reshape(-1, x.shape[-1])) if w.requires_grad else None
        grad_b = g2.sum(axis=0) if b is not None and b.requires_grad else None
        return grad_x, grad_w, grad_b

    parents = (x, w) if b is None else (x, w, b)
    return make_result(out, parents, backward, "linear_relu" if relu else "linear")


def fused_activation(op: str, activation: str | None) -> bool:
    """Whether an op applies a ReLU to its output (the only activation fused into ops)."""
    if activation not in (None, "relu"):
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    return activation == "relu"


def embedding(input, weight, padding_idx: int | None = None) -> Tensor:  # noqa: A002
    """Rows of weight (num_embeddings, dim) picked by integer indices: the linear map of a one-hot input.
    Float indices (data that went through the float pipeline) are rounded to integers. As in torch, the row
    `padding_idx` (if given) gets no gradient."""
    w = as_tensor(weight)
    raw = input.data if isinstance(input, Tensor) else input
    xp = backend.array_module(w.data)
    indices = xp.asarray(raw)
    if indices.dtype.kind == "f":
        indices = xp.rint(indices).astype(xp.int64)
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= w.shape[0]):
        raise ShapeError(f"embedding: indices must be in [0, {w.shape[0] - 1}], got values from {int(indices.min())} "
                         f"to {int(indices.max())}")

    def backward(g):
        grad = xp.zeros_like(w.data)
        backend.scatter_add(grad, indices.reshape(-1), g.reshape(-1, w.shape[1]))
        if padding_idx is not None:
            grad[padding_idx] = 0
        return (grad,)

    return make_result(w.data[indices], (w,), backward, "embedding")
