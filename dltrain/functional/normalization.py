"""Batch normalization over the channel axis (axis 1) of (N, C) or (N, C, H, W, ...) input."""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result
from ..errors import ShapeError


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalize with batch statistics (training) or running ones (evaluation), then scale and shift.

    In training the running statistics are updated in place, as torch does:
    running = (1 - momentum) * running + momentum * batch (the variance unbiased).
    """
    x = as_tensor(input)
    xp = backend.array_module(x.data)
    if x.ndim < 2:
        raise ShapeError(f"batch_norm: expected input (N, C, ...), got shape {x.shape}")
    channels = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    param_shape = (1, channels) + (1,) * (x.ndim - 2)
    gamma = None if weight is None else as_tensor(weight, like=x)
    beta = None if bias is None else as_tensor(bias, like=x)
    r_mean = running_mean.data if isinstance(running_mean, Tensor) else running_mean
    r_var = running_var.data if isinstance(running_var, Tensor) else running_var
    count = x.size // channels

    if training:
        if count < 2:
            raise ShapeError(f"batch_norm: training needs more than one value per channel, got input {x.shape}")
        mean = x.data.mean(axis=axes, keepdims=True)
        centered = x.data - mean
        var = (centered * centered).mean(axis=axes, keepdims=True)
        if r_mean is not None:
            r_mean *= 1 - momentum
            r_mean += momentum * mean.reshape(channels)
        if r_var is not None:
            r_var *= 1 - momentum
            r_var += momentum * var.reshape(channels) * (count / (count - 1))
    else:
        mean = r_mean.reshape(param_shape)
        var = r_var.reshape(param_shape)
        centered = x.data - mean
    inv_std = 1 / xp.sqrt(var + eps)
    normalized = centered * inv_std
    scale = 1 if gamma is None else gamma.data.reshape(param_shape)
    out = normalized * scale
    if beta is not None:
        out = out + beta.data.reshape(param_shape)

    def backward(g):
        grad_gamma = (g * normalized).sum(axis=axes) if gamma is not None and gamma.requires_grad else None
        grad_beta = g.sum(axis=axes) if beta is not None and beta.requires_grad else None
        grad_x = None
        if x.requires_grad:
            g_norm = g * scale
            if training:  # the batch statistics depend on x too
                grad_x = inv_std * (g_norm - g_norm.mean(axis=axes, keepdims=True)
                                    - normalized * (g_norm * normalized).mean(axis=axes, keepdims=True))
            else:
                grad_x = g_norm * inv_std
        grads = [grad_x]  # one per parent, in the order of `parents`
        if gamma is not None:
            grads.append(grad_gamma)
        if beta is not None:
            grads.append(grad_beta)
        return grads

    parents = (x,) + tuple(t for t in (gamma, beta) if t is not None)
    return make_result(out, parents, backward, "batch_norm")
