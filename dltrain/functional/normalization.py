"""Batch normalization over the channel axis (axis 1) of (N, C) or (N, C, H, W, ...) input; layer normalization
over the trailing axes of each sample."""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result
from ..errors import ShapeError
from .linear import fused_activation


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, activation: str | None = None) -> Tensor:
    """Normalize with batch statistics (training) or running ones (evaluation), then scale and shift (then a ReLU in
    the same pass with activation='relu').

    In training the running statistics are updated in place, as torch does:
    running = (1 - momentum) * running + momentum * batch (the variance unbiased).
    """
    x = as_tensor(input)
    xp = backend.array_module(x.data)
    if x.ndim < 2:
        raise ShapeError(f"batch_norm: expected input (N, C, ...), got shape {x.shape}")
    channels = x.shape[1]
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
    relu = fused_activation("batch_norm", activation)
    kernels = backend.kernels_for(x.data)
    gamma_data = None if gamma is None else gamma.data
    beta_data = None if beta is None else beta.data
    if training:  # the batch's statistics; the running ones move toward them
        mean, inv_std, scale, shift = kernels.batch_norm_statistics(x.data, gamma_data, beta_data, r_mean, r_var,
                                                                    eps, momentum)
    else:
        mean = r_mean
        inv_std, scale, shift = kernels.batch_norm_eval_scale(r_mean, r_var, gamma_data, beta_data, eps)
    out = kernels.batch_norm_apply(x.data, scale, shift, relu)  # x * scale + shift = gamma (x - mean) inv_std + beta

    def backward(g):
        if relu:
            g = kernels.relu_backward(g, out)
        sum_g, grad_gamma, coef_centered, coef_const = kernels.batch_norm_backward_statistics(
            g, x.data, mean, scale, inv_std, training)
        grads = [kernels.batch_norm_backward(g, x.data, mean, scale, coef_centered, coef_const)
                 if x.requires_grad else None]
        if gamma is not None:
            grads.append(grad_gamma if gamma.requires_grad else None)
        if beta is not None:
            grads.append(sum_g if beta.requires_grad else None)
        return grads

    return make_result(out, _parents(x, gamma, beta), backward, "batch_norm_relu" if relu else "batch_norm")


def _parents(x, gamma, beta) -> tuple:
    return (x,) + tuple(t for t in (gamma, beta) if t is not None)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalize over the trailing axes `normalized_shape` (an int or a tuple: input (..., *normalized_shape)) with
    each slice's own mean and biased variance, then scale by weight and shift by bias (both of normalized_shape, or
    None), as torch.nn.functional.layer_norm. There are no running statistics: training and evaluation agree.

    As torch, and as scaled_dot_product_attention: the input must be floating point, and a weight or bias Tensor
    must have its dtype (TypeError otherwise; a float64 weight of float32 input would get a float32 gradient);
    arrays and numbers given as weight or bias are constants, cast to the input's dtype (autograd.as_tensor).

    The slices are the rows of an (R, D) view, D the product of normalized_shape; the kernels keep each row's mean
    and 1 / std for the backward (backend/kernels.py layer_norm_forward / layer_norm_backward)."""
    x = as_tensor(input)
    if x.dtype.kind != "f":  # as torch, which has no integer layer norm
        raise TypeError(f"layer_norm: input must be floating point, got {x.dtype}")
    shape = (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(int(n) for n in normalized_shape)
    trailing = len(shape)
    if not shape or x.ndim < trailing or tuple(x.shape[x.ndim - trailing:]) != shape:
        raise ShapeError(f"layer_norm: expected input (..., {', '.join(map(str, shape))}) for normalized_shape "
                         f"{shape}; got input {tuple(x.shape)}")
    gamma = None if weight is None else as_tensor(weight, like=x)
    beta = None if bias is None else as_tensor(bias, like=x)
    for name, param in (("weight", gamma), ("bias", beta)):
        if param is not None and tuple(param.shape) != shape:
            raise ShapeError(f"layer_norm: expected {name} of shape {shape} (normalized_shape), got "
                             f"{tuple(param.shape)}")
        if param is not None and param.dtype != x.dtype:  # its gradient would come back in the input's dtype
            raise TypeError(f"layer_norm: input, weight and bias must share one floating-point dtype, got input "
                            f"{x.dtype}, {name} {param.dtype}")
    width = 1
    for n in shape:
        width *= n
    rows = x.size // width if width else 0
    rows_view = x.data.reshape(rows, width)  # a view unless x is laid out otherwise
    gamma_flat = None if gamma is None else gamma.data.reshape(width)
    beta_flat = None if beta is None else beta.data.reshape(width)
    kernels = backend.kernels_for(x.data)
    out, mean, inv_std = kernels.layer_norm_forward(rows_view, gamma_flat, beta_flat, eps)

    def backward(g):
        affine = (gamma is not None and gamma.requires_grad) or (beta is not None and beta.requires_grad)
        grad_x, grad_gamma, grad_beta = kernels.layer_norm_backward(g.reshape(rows, width), rows_view, mean, inv_std,
                                                                    gamma_flat, affine)
        grads = [grad_x.reshape(x.shape) if x.requires_grad else None]
        if gamma is not None:
            grads.append(grad_gamma.reshape(shape) if gamma.requires_grad else None)
        if beta is not None:
            grads.append(grad_beta.reshape(shape) if beta.requires_grad else None)
        return grads

    return make_result(out.reshape(x.shape), _parents(x, gamma, beta), backward, "layer_norm")
