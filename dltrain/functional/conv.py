"""Convolution and pooling over NCHW images, with torch.nn.functional's names and defaults.

The plain code is im2col on a strided view plus one (batched) matrix product per batch chunk; its input
gradient (col2im) adds one strided slice per kernel offset, so no scatter (np.add.at) is needed: the readable
reference. With the fused kernels (Numba on the CPU, CUDA on the GPU) it is one GEMM each way over a column matrix
built and summed back by kernels (_conv2d_fused).
Pooling also works on strided views: each output reads a window, each kernel offset writes back.
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result
from ..errors import ShapeError

# Largest im2col matrix built at once (elements); bigger batches are processed in chunks.
COLUMN_BUDGET = 1 << 24


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return value


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _windows(xp_padded, kernel, stride, dilation, out_hw):
    """A (N, C, KH, KW, OH, OW) view: element [n, c, i, j, oh, ow] is input pixel
    (oh * stride + i * dilation, ow * stride + j * dilation) of the padded image. No copy."""
    xp = backend.array_module(xp_padded)
    n_stride, c_stride, h_stride, w_stride = xp_padded.strides
    shape = xp_padded.shape[:2] + kernel + out_hw
    strides = (n_stride, c_stride, h_stride * dilation[0], w_stride * dilation[1],
               h_stride * stride[0], w_stride * stride[1])
    return xp.lib.stride_tricks.as_strided(xp_padded, shape=shape, strides=strides)


def _pad(x, padding, value=0.0):
    if padding == (0, 0):
        return x
    xp = backend.array_module(x)
    return xp.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=value)


def _check_4d(name: str, x: Tensor) -> None:
    if x.ndim != 4:
        raise ShapeError(f"{name}: expected input (N, C, H, W), got shape {x.shape}")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """Cross-correlation of (N, C, H, W) input with (F, C, KH, KW) weight, plus bias (F,)."""
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
    kernels = backend.fused(x.data)
    if kernels:
        return _conv2d_fused(kernels, x, w, b, (kh, kw), stride, padding, dilation, (oh, ow))
    xp = backend.array_module(x.data)
    w2 = w.data.reshape(filters, c * kh * kw)
    out, columns, chunk = _correlate(x.data, w2, (kh, kw), stride, padding, dilation, (oh, ow))
    if b is not None:
        out += b.data.reshape(1, filters, 1, 1)

    def backward(g):
        g3 = g.reshape(n, filters, oh * ow)
        grad_w = None
        if w.requires_grad:
            grad_w = xp.zeros_like(w2)
            for index, start in enumerate(range(0, n, chunk)):
                cols = columns[index]
                grad_w += (g3[start:start + len(cols)] @ cols.transpose(0, 2, 1)).sum(axis=0)
            grad_w = grad_w.reshape(w.shape)
        grad_x = None
        if x.requires_grad:  # (as a correlation with the flipped kernel it measured slower: 21 vs 18 ms)
            grad_x = _col2im(g3, w2, x.shape, (kh, kw), stride, padding, dilation, (oh, ow), chunk)
        grads = [grad_x, grad_w]
        if b is not None:
            grads.append(g.sum(axis=(0, 2, 3)) if b.requires_grad else None)
        return grads

    parents = (x, w) if b is None else (x, w, b)
    return make_result(out, parents, backward, "conv2d")


def _conv2d_fused(kernels, x, w, b, kernel, stride, padding, dilation, out_hw) -> Tensor:
    """conv2d with the fused kernels: im2col into one (C*KH*KW, N*OH*OW) column matrix (one kernel, no padded copy),
    so each direction is one large GEMM instead of a batch of small per-sample ones (TF32 in float32 where the GPU
    has it, as PyTorch's cuDNN convolutions by default; DLTRAIN_TF32=0 turns it off):
        forward        (F, C*KH*KW) @ columns           -> (F, N*OH*OW), put into NCHW with the bias by one kernel
        weight grad    g (F, N*OH*OW) @ columns.T       -> (F, C*KH*KW)
        input grad     weight.T @ g -> column gradients -> summed into the image by col2im (a gather)
    Batches whose column matrix exceeds COLUMN_BUDGET go in chunks of samples."""
    xp = backend.array_module(x.data)
    n, filters = x.shape[0], w.shape[0]
    w2 = w.data.reshape(filters, -1)
    pixels = out_hw[0] * out_hw[1]
    chunk = max(1, COLUMN_BUDGET // max(1, w2.shape[1] * pixels))
    out = xp.empty((n, filters) + tuple(out_hw), dtype=x.dtype)
    columns = []
    for start in range(0, n, chunk):
        cols = kernels.im2col(x.data[start:start + chunk], kernel, stride, padding, dilation, out_hw)
        with backend.tf32_products(cols):
            product = w2 @ cols
        kernels.filters_to_images(product, None if b is None else b.data, out[start:start + chunk])
        columns.append(cols)

    def backward(g):
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
            grad_x = xp.empty(x.shape, dtype=g.dtype)
            for (_, g_part), start in zip(parts, range(0, n, chunk)):
                with backend.tf32_products(g_part):
                    grad_columns = w2.T @ g_part
                kernels.col2im(grad_columns, grad_x[start:start + chunk], kernel, stride, padding, dilation, out_hw)
        grads = [grad_x, grad_w]
        if b is not None:
            grads.append(g_filters.sum(axis=1) if b.requires_grad else None)
        return grads

    parents = (x, w) if b is None else (x, w, b)
    return make_result(out, parents, backward, "conv2d")


def _correlate(data, w2, kernel, stride, padding, dilation, out_hw):
    """(N, C, H, W) data correlated with w2 (F, C*KH*KW): im2col copy + one batched product per chunk.

    Returns (output (N, F, OH, OW), the column matrices per chunk, chunk size)."""
    xp = backend.array_module(data)
    n = data.shape[0]
    filters, ckk = w2.shape
    pixels = out_hw[0] * out_hw[1]
    padded = _pad(data, padding)
    chunk = max(1, COLUMN_BUDGET // max(1, ckk * pixels))
    out = xp.empty((n, filters, pixels), dtype=data.dtype)
    columns = []
    for start in range(0, n, chunk):
        view = _windows(padded[start:start + chunk], kernel, stride, dilation, out_hw)
        # The one copy: (N, C, KH, KW, OH, OW) windows -> per-sample column matrices, read row by row.
        cols = view.reshape(view.shape[0], ckk, pixels)
        # One matrix product per sample, straight into NCHW order: no transpose of the output.
        xp.matmul(w2, cols, out=out[start:start + len(cols)])
        columns.append(cols)
    return out.reshape((n, filters) + tuple(out_hw)), columns, chunk


def _col2im(g3, w2, x_shape, kernel, stride, padding, dilation, out_hw, chunk):
    """Input gradient of a convolution: for each kernel offset, one matrix product gives that offset's
    contribution for every output pixel, added into a channels-last buffer (rows of N*C values, so the
    adds run over long contiguous rows), which is turned back into NCHW at the end."""
    xp = backend.array_module(g3)
    n, c, h, width = x_shape
    kh, kw = kernel
    oh, ow = out_hw
    filters = g3.shape[1]
    weight = w2.reshape(filters, c, kh, kw)
    grad = xp.zeros((h + 2 * padding[0], width + 2 * padding[1], n, c), dtype=g3.dtype)
    for start in range(0, n, chunk):
        g_chunk = g3[start:start + chunk]
        m = len(g_chunk)
        rows = xp.ascontiguousarray(g_chunk.transpose(2, 0, 1)).reshape(oh * ow * m, filters)  # (pixel, n) x F
        target = grad[:, :, start:start + m]
        for i in range(kh):
            hs = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1, stride[0])
            for j in range(kw):
                ws = slice(j * dilation[1], j * dilation[1] + stride[1] * (ow - 1) + 1, stride[1])
                target[hs, ws] += (rows @ weight[:, :, i, j]).reshape(oh, ow, m, c)
    grad = grad[padding[0]:padding[0] + h, padding[1]:padding[1] + width]
    return xp.ascontiguousarray(grad.transpose(2, 3, 0, 1))


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


def _window_slices(padded, kernel, stride, out_hw):
    """For each kernel offset (i, j): the (N, C, OH, OW) strided view of the inputs at that offset."""
    oh, ow = out_hw
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield padded[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]


def max_pool2d(input, kernel_size, stride=None, padding=0) -> Tensor:
    """Largest value per window; padding counts as -inf. The gradient goes to one input per window
    (the first maximum in row-major order when several tie)."""
    x = as_tensor(input)
    kernel, stride, padding, out_hw = _pool_geometry("max_pool2d", x, kernel_size, stride, padding)
    kernels = backend.fused(x.data)
    if kernels and kernel[0] * kernel[1] <= kernels.MAX_POOL_WINDOW:  # one kernel each way
        out, winner = kernels.max_pool_forward(x.data, kernel, stride, padding, out_hw)
        return make_result(out, (x,), lambda g: (kernels.max_pool_backward(g, winner, x.shape, kernel, stride,
                                                                            padding, out_hw),), "max_pool2d")
    xp = backend.array_module(x.data)
    padded = _pad(x.data, padding, value=-xp.inf)
    offsets = _window_slices(padded, kernel, stride, out_hw)
    out = next(offsets).copy()
    winner = xp.zeros(out.shape, dtype=xp.uint8)  # which kernel offset holds each window's maximum
    for k, view in enumerate(offsets, start=1):  # a running maximum: elementwise, no window copies
        better = view > out  # strict: on ties the first offset (row-major) keeps the window
        xp.maximum(out, view, out=out)
        winner += better * (xp.uint8(k) - winner)  # = where(better, k, winner); masked writes are slower
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]

    def backward(g):
        grad_padded = xp.zeros(padded.shape, dtype=g.dtype)
        for k, grad_view in enumerate(_window_slices(grad_padded, kernel, stride, out_hw)):
            if disjoint:  # each input is in one window at most: write, no read-modify-write
                xp.multiply(g, winner == k, out=grad_view)
            else:
                grad_view += g * (winner == k)
        return (grad_padded[:, :, padding[0]:padding[0] + x.shape[2], padding[1]:padding[1] + x.shape[3]],)

    return make_result(out, (x,), backward, "max_pool2d")


def avg_pool2d(input, kernel_size, stride=None, padding=0, count_include_pad: bool = True) -> Tensor:
    """Mean per window (padding zeros counted, as torch's default)."""
    x = as_tensor(input)
    kernel, stride, padding, out_hw = _pool_geometry("avg_pool2d", x, kernel_size, stride, padding)
    xp = backend.array_module(x.data)
    padded = _pad(x.data, padding)
    if count_include_pad or padding == (0, 0):
        counts = kernel[0] * kernel[1]
    else:
        ones = _pad(xp.ones((1, 1) + x.shape[2:], dtype=x.dtype), padding)
        counts = sum(v.copy() for v in _window_slices(ones, kernel, stride, out_hw))
    offsets = _window_slices(padded, kernel, stride, out_hw)
    total = next(offsets).copy()
    for view in offsets:
        total += view
    out = total / counts

    def backward(g):
        grad_padded = xp.zeros(padded.shape, dtype=g.dtype)
        share = g / counts
        for grad_view in _window_slices(grad_padded, kernel, stride, out_hw):
            grad_view += share
        return (grad_padded[:, :, padding[0]:padding[0] + x.shape[2], padding[1]:padding[1] + x.shape[3]],)

    return make_result(out, (x,), backward, "avg_pool2d")


def global_avg_pool(input) -> Tensor:
    """(N, C, H, W) -> (N, C): the mean of each channel."""
    x = as_tensor(input)
    _check_4d("global_avg_pool", x)
    return x.mean(axis=(2, 3))
