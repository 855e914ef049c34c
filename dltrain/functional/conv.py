"""Convolution and pooling over NCHW images, with torch.nn.functional's names and defaults.

Each op checks its arguments, works out the geometry and calls the kernels (backend/kernels.py): convolution is
im2col into one (C*KH*KW, N*OH*OW) column matrix and one matrix product each way, pooling a window loop each way.
The arithmetic itself, as plain array code, is in backend/reference.py.
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, is_grad_enabled, make_result
from ..errors import ShapeError
from .linear import fused_activation

# Largest im2col matrix built at once (elements); bigger batches are processed in chunks. Without a gradient to
# compute the columns are not kept, and smaller chunks are faster (fashion_resnet in eval mode at batch 1024,
# 2 cores: 976 images/s at 1 << 22, 806 at 1 << 24).
COLUMN_BUDGET = 1 << 24
INFERENCE_COLUMN_BUDGET = 1 << 22


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return value


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_4d(name: str, x: Tensor) -> None:
    if x.ndim != 4:
        raise ShapeError(f"{name}: expected input (N, C, H, W), got shape {x.shape}")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1,
           activation: str | None = None) -> Tensor:
    """Cross-correlation of (N, C, H, W) input with (F, C, KH, KW) weight, plus bias (F,); activation='relu' applies
    a ReLU in the same pass (what a following ReLU layer does, without a pass and an array of its own)."""
    if groups != 1:
        raise ValueError(f"conv2d: groups must be 1 (grouped and depthwise convolutions are not offered), got {groups}")
    x = as_tensor(input)
    w = as_tensor(weight, like=x)
    b = None if bias is None else as_tensor(bias, like=x)
    _check_4d("conv2d", x)
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    n, c, h, width = x.shape
    filters, wc, kh, kw = w.shape
    if wc != c:
        raise ShapeError(f"conv2d: weight {w.shape} expects {wc} input channels, got input {x.shape}")
    oh = output_size(h, kh, stride[0], padding[0], dilation[0])
    ow = output_size(width, kw, stride[1], padding[1], dilation[1])
    if oh < 1 or ow < 1:
        raise ShapeError(f"conv2d: kernel {(kh, kw)} (dilation {dilation}) is larger than the padded input "
                         f"{(h + 2 * padding[0], width + 2 * padding[1])}")
    relu = fused_activation("conv2d", activation)
    return _conv2d(backend.kernels_for(x.data), x, w, b, (kh, kw), stride, padding, dilation, (oh, ow), relu)


def _conv2d(kernels, x, w, b, kernel, stride, padding, dilation, out_hw, relu) -> Tensor:
    """conv2d through the kernels: im2col into one (C*KH*KW, N*OH*OW) column matrix (one kernel, no padded copy),
    so each direction is one large GEMM instead of a batch of small per-sample ones (TF32 in float32 where the GPU
    has it, as PyTorch's cuDNN convolutions by default; DLTRAIN_TF32=0 turns it off):
        forward        (F, C*KH*KW) @ columns           -> (F, N*OH*OW), the activation with the bias added
        weight grad    g (F, N*OH*OW) @ columns.T       -> (F, C*KH*KW)
        input grad     weight.T @ g -> column gradients -> summed into the image by col2im (a gather)
    The product's order is channel-major, (F, N, OH, OW). Kernels with CHANNEL_MAJOR (the compiled CPU ones) keep it:
    the output is that memory seen as (N, F, OH, OW), and g arrives in it, so neither direction moves the activation;
    the others put it into NCHW (filters_to_images) and take g back out of it (images_to_filters).
    Batches whose column matrix exceeds COLUMN_BUDGET go in chunks of samples."""
    xp = backend.array_module(x.data)
    n, filters = x.shape[0], w.shape[0]
    w2 = w.data.reshape(filters, -1)
    bias = None if b is None else b.data
    pixels = out_hw[0] * out_hw[1]
    keep = is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b))
    chunk = max(1, (COLUMN_BUDGET if keep else INFERENCE_COLUMN_BUDGET) // max(1, w2.shape[1] * pixels))
    channel_major = kernels.CHANNEL_MAJOR
    if channel_major:
        products = xp.empty((filters, n) + tuple(out_hw), dtype=x.dtype)
        out = products.transpose(1, 0, 2, 3)
    else:
        out = xp.empty((n, filters) + tuple(out_hw), dtype=x.dtype)
    columns = []
    for start in range(0, n, chunk):
        cols = kernels.im2col(x.data[start:start + chunk], kernel, stride, padding, dilation, out_hw)
        with backend.tf32_products(cols):
            if channel_major:  # the GEMM writes this chunk's samples of every filter's row in place
                xp.matmul(w2, cols, out=products[:, start:start + chunk].reshape(filters, -1))
            else:
                kernels.filters_to_images(w2 @ cols, bias, out[start:start + chunk], relu)
        if keep:
            columns.append(cols)
    if channel_major:
        kernels.bias_relu_rows(products.reshape(filters, -1), bias, relu)

    def backward(g):
        if relu:
            g = kernels.relu_backward(g, out)
        g_filters = kernels.images_to_filters(g)  # (F, N*OH*OW)
        parts = [(cols, g_filters[:, start * pixels:(start + chunk) * pixels])
                 for cols, start in zip(columns, range(0, n, chunk))]
        grad_w = grad_x = None
        if w.requires_grad:
            for cols, g_part in parts:
                with backend.tf32_products(g_part):
                    product = g_part @ cols.T
                grad_w = product if grad_w is None else grad_w + product
            grad_w = grad_w.reshape(w.shape)
        if x.requires_grad:
            # in x's memory order (a channel-major activation gets a channel-major gradient)
            grad_x = xp.empty_like(x.data, dtype=g.dtype) if channel_major else xp.empty(x.shape, dtype=g.dtype)
            for (_, g_part), start in zip(parts, range(0, n, chunk)):
                with backend.tf32_products(g_part):
                    grad_columns = w2.T @ g_part
                kernels.col2im(grad_columns, grad_x[start:start + chunk], kernel, stride, padding, dilation, out_hw)
        grads = [grad_x, grad_w]
        if b is not None:
            grads.append(g_filters.sum(axis=1) if b.requires_grad else None)
        return grads

    parents = (x, w) if b is None else (x, w, b)
    return make_result(out, parents, backward, "conv2d_relu" if relu else "conv2d")


def _pool_geometry(name, x, kernel_size, stride, padding):
    _check_4d(name, x)
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel {kernel}")
    oh = output_size(x.shape[2], kernel[0], stride[0], padding[0])
    ow = output_size(x.shape[3], kernel[1], stride[1], padding[1])
    if oh < 1 or ow < 1:
        raise ShapeError(f"{name}: kernel {kernel} is larger than the padded input "
                         f"{(x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])}")
    return kernel, stride, padding, (oh, ow)


def max_pool2d(input, kernel_size, stride=None, padding=0) -> Tensor:
    """Largest value per window; padding counts as -inf. The gradient goes to one input per window
    (the first maximum in row-major order when several tie)."""
    x = as_tensor(input)
    kernel, stride, padding, out_hw = _pool_geometry("max_pool2d", x, kernel_size, stride, padding)
    kernels = backend.kernels_for(x.data)
    if kernel[0] * kernel[1] > kernels.MAX_POOL_WINDOW:  # the compiled kernels keep the winner in one byte
        kernels = backend.reference
    out, winner = kernels.max_pool_forward(x.data, kernel, stride, padding, out_hw)

    def backward(g):
        return (kernels.max_pool_backward(g, winner, x.shape, kernel, stride, padding, out_hw),)

    return make_result(out, (x,), backward, "max_pool2d")


def avg_pool2d(input, kernel_size, stride=None, padding=0, count_include_pad: bool = True) -> Tensor:
    """Mean per window (padding zeros counted, as torch's default)."""
    x = as_tensor(input)
    kernel, stride, padding, out_hw = _pool_geometry("avg_pool2d", x, kernel_size, stride, padding)
    kernels = backend.kernels_for(x.data)
    out = kernels.avg_pool_forward(x.data, kernel, stride, padding, out_hw, count_include_pad)

    def backward(g):
        return (kernels.avg_pool_backward(g, x.shape, kernel, stride, padding, out_hw, count_include_pad),)

    return make_result(out, (x,), backward, "avg_pool2d")


def global_avg_pool(input) -> Tensor:
    """(N, C, H, W) -> (N, C): the mean of each channel."""
    x = as_tensor(input)
    _check_4d("global_avg_pool", x)
    return x.mean(axis=(2, 3))
