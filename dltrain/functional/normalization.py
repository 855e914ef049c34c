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
    param_shape = (1, channels) + (1,) * (x.ndim - 2)
    gamma = None if weight is None else as_tensor(weight, like=x)
    beta = None if bias is None else as_tensor(bias, like=x)
    r_mean = running_mean.data if isinstance(running_mean, Tensor) else running_mean
    r_var = running_var.data if isinstance(running_var, Tensor) else running_var
    for name, stat in (("running_mean", r_mean), ("running_var", r_var)):
        if stat is not None and backend.array_module(stat) is not xp:
            raise ValueError(f"batch_norm: {name} is on {backend.device_of(stat)} but the input is on "
                             f"{backend.device_of(x.data)}; move both to one device")
    count = x.size // channels
    if training and count < 2:
        raise ShapeError(f"batch_norm: training needs more than one value per channel, got input {x.shape}")
    kernels = backend.fused(x.data)
    if kernels:
        return _fused_batch_norm(kernels, x, gamma, beta, r_mean, r_var, training, momentum, eps, count)
    # Per-channel sums as einsum contractions: much faster than sum(axis=(0, 2, 3)) on NCHW arrays.
    letters = "nc" + "hwdxyz"[:x.ndim - 2]

    def channel_sum(a, b=None):
        return xp.einsum(f"{letters}->c", a) if b is None else xp.einsum(f"{letters},{letters}->c", a, b)

    if training:
        mean = channel_sum(x.data) / count
        centered = x.data - mean.reshape(param_shape)
        var = channel_sum(centered, centered) / count
        if r_mean is not None:
            r_mean *= 1 - momentum
            r_mean += momentum * mean
        if r_var is not None:
            r_var *= 1 - momentum
            r_var += momentum * var * (count / (count - 1))
    else:
        mean, var = r_mean, r_var
        centered = x.data - mean.reshape(param_shape)
    inv_std = 1 / xp.sqrt(var + eps)  # (C,)
    scale = inv_std if gamma is None else gamma.data * inv_std  # out = centered * scale + beta
    out = centered * scale.reshape(param_shape)
    if beta is not None:
        out += beta.data.reshape(param_shape)

    def backward(g):
        grads = [None]  # one per parent, in the order of `parents`
        sum_g = channel_sum(g)
        sum_g_centered = channel_sum(g, centered)
        if x.requires_grad:
            grad_x = g * scale.reshape(param_shape)
            if training:  # the batch statistics depend on x too
                grad_x += centered * (-scale * inv_std * inv_std * sum_g_centered / count).reshape(param_shape)
                grad_x -= (scale * sum_g / count).reshape(param_shape)
            grads[0] = grad_x
        return grads + _scale_and_shift_grads(gamma, beta, sum_g, sum_g_centered, inv_std)

    return make_result(out, _parents(x, gamma, beta), backward, "batch_norm")


def _scale_and_shift_grads(gamma, beta, sum_g, sum_g_centered, inv_std) -> list:
    """The gradients of gamma and beta, for those given (in parent order)."""
    grads = []
    if gamma is not None:
        grads.append(sum_g_centered * inv_std if gamma.requires_grad else None)
    if beta is not None:
        grads.append(sum_g if beta.requires_grad else None)
    return grads


def _parents(x, gamma, beta) -> tuple:
    return (x,) + tuple(t for t in (gamma, beta) if t is not None)


def _fused_batch_norm(kernels, x, gamma, beta, r_mean, r_var, training, momentum, eps, count) -> Tensor:
    """batch_norm with the fused kernels, the same formulas in two kernels each way (backend/kernels.py): per-channel
    statistics (in training: the batch's, with the running ones updated in the same kernel), then one pass
    out = x * scale + shift; backward, the per-channel sums, then one pass for the input gradient."""
    gamma_data = None if gamma is None else gamma.data
    beta_data = None if beta is None else beta.data
    if training:
        mean, inv_std, scale, shift = kernels.batch_norm_statistics(x.data, gamma_data, beta_data, r_mean, r_var,
                                                                    eps, momentum)
    else:
        mean = r_mean
        inv_std, scale, shift = kernels.batch_norm_eval_scale(r_mean, r_var, gamma_data, beta_data, eps)
    out = kernels.batch_norm_apply(x.data, scale, shift)

    def backward(g):
        sum_g, grad_gamma, coef_centered, coef_const = kernels.batch_norm_backward_statistics(
            g, x.data, mean, scale, inv_std, training)
        grads = [kernels.batch_norm_backward(g, x.data, mean, scale, coef_centered, coef_const)
                 if x.requires_grad else None]
        if gamma is not None:
            grads.append(grad_gamma if gamma.requires_grad else None)
        if beta is not None:
            grads.append(sum_g if beta.requires_grad else None)
        return grads

    return make_result(out, _parents(x, gamma, beta), backward, "batch_norm")
