"""Compiled CPU kernels (Numba): the kernel interface of backend/kernels.py for NumPy arrays.

A NumPy expression is one single-threaded pass over whole arrays that allocates its result, so a chain
like "max-pool, then its mask, then the ReLU gradient" reads and writes the batch many times. Here each
such chain is one loop compiled by Numba and spread over the cores with `prange` (over samples x
channels, over rows, over parameter chunks); matrix products stay with BLAS. The formulas are those of
the plain NumPy code in dltrain/functional, which stays the readable reference (DLTRAIN_FUSED_KERNELS=0)
and the tests' oracle.

Compiled lazily (a model compiles only the kernels it uses) and cached on disk by Numba, so only the
first run on a machine pays for compilation. Sums run in float64 whatever the data's dtype.
"""

from __future__ import annotations

import math
import types

import numba
import numpy as np
from numba import prange, uint64
from numba.extending import overload

from . import reference

# Below this many values a loop runs on one core: waking the other threads costs more (about 70 us here
# when BLAS ran in between) than a small loop takes.
PARALLEL_WORK = 1 << 18

# cache: compiled code kept on disk; reassoc/contract let LLVM vectorize sums and fuse multiply-adds
# without giving up IEEE NaN and infinity handling; NumPy's error model makes x / 0 inf or NaN, as in NumPy,
# instead of a check that raises (a loop with a division vectorizes only without it: 7x here).
_OPTIONS = {"cache": True, "nogil": True, "fastmath": {"reassoc", "contract"}, "error_model": "numpy"}


def _renamed(function, suffix: str):
    """A copy of `function` under another name, so that a second compilation of it has cache files of its own."""
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__ + suffix,
                              function.__defaults__, function.__closure__)
    copy.__qualname__ = function.__qualname__ + suffix
    return copy


class _Kernel:
    """One loop compiled twice: spread over the cores (prange) for large work, on one core for small work.
    Called as kernel(work, *arrays), `work` being the number of values the loop touches."""

    __slots__ = ("serial", "parallel")

    def __init__(self, loop):
        self.serial = numba.njit(**_OPTIONS)(_renamed(loop, "_serial"))
        self.parallel = numba.njit(parallel=True, **_OPTIONS)(loop)

    def __call__(self, work: int, *args):
        return (self.parallel if work >= PARALLEL_WORK else self.serial)(*args)


MAX_POOL_WINDOW = 255  # the winning offset is kept in one byte, as on the GPU
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def supports(dtype) -> bool:
    return np.dtype(dtype) in _DTYPES


def _flat(array):
    """A contiguous 1-D view (a copy only when `array` is not C-contiguous)."""
    return np.ascontiguousarray(array).reshape(-1)


# ---------------------------------------------------------------- memory order of (N, C, ...) arrays
# A convolution's product (F, N*OH*OW) is its activation (CHANNEL_MAJOR): an (N, C, H, W) array whose memory is
# (C, N, H, W), a view with axes 0 and 1 swapped, as torch's channels_last is a stride permutation under an unchanged
# shape. Each kernel below takes (N, C, ...) arrays in either order and returns its result in its input's, so that
# batch normalization, ReLU, pooling and the next im2col run over the product as it lies; a reshape (flatten) makes
# the one NCHW copy. When N or C is 1 both orders are one and the same memory.
CHANNEL_MAJOR = True


def _channel_major(array) -> bool:
    """Whether an (N, C, ...) array is channel-major: not C-contiguous, but its axes 0 and 1 swapped are."""
    return array.ndim >= 3 and not array.flags.c_contiguous and array.swapaxes(0, 1).flags.c_contiguous


def _in_order(array, channel_major: bool):
    """The C-contiguous (C, N, ...) array under a channel-major (N, C, ...) array, or the (N, C, ...) one: a view
    when `array` lies so, else a copy in that order."""
    return np.ascontiguousarray(array.swapaxes(0, 1) if channel_major else array)


def _empty(shape, dtype, channel_major: bool):
    """An empty (N, C, ...) array of `shape`, channel-major or C-contiguous."""
    if channel_major:
        return np.empty((shape[1], shape[0]) + tuple(shape[2:]), dtype=dtype).swapaxes(0, 1)
    return np.empty(shape, dtype=dtype)


# ---------------------------------------------------------------- elementwise


@_Kernel
def _relu_backward(grad, out, grad_in):
    for i in prange(grad.size):
        grad_in[i] = grad[i] if out[i] > 0 else 0


def relu_backward(grad, out):
    """grad * (out > 0) (the forward keeps no mask), in out's memory order."""
    order = _channel_major(out)
    grad_in = _empty(grad.shape, grad.dtype, order)
    _relu_backward(grad.size, _in_order(grad, order).reshape(-1), _in_order(out, order).reshape(-1),
                   _in_order(grad_in, order).reshape(-1))
    return grad_in


@_Kernel
def _add_bias_relu(x, bias, has_bias):
    features = bias.size
    for row in prange(x.size // features):
        start = row * features
        for f in range(features):
            v = x[start + f] + bias[f] if has_bias else x[start + f]
            x[start + f] = 0 if v < 0 else v


def add_bias_relu(x, bias) -> None:
    """x = max(x + bias, 0) in place (NaN stays NaN): a linear layer's bias and ReLU in one pass."""
    if not x.flags.c_contiguous:
        raise ValueError("add_bias_relu works in place on a C-contiguous array")
    features = x.shape[-1]
    _add_bias_relu(x.size, x.reshape(-1), np.zeros(features, x.dtype) if bias is None else bias, bias is not None)


@_Kernel
def _dropout(x, uniform, p, scale, y, mask):
    for i in prange(x.size):
        keep = scale if uniform[i] >= p else 0
        mask[i] = keep
        y[i] = x[i] * keep


def dropout(x, uniform, p: float):
    """(x * mask, mask) with mask = (uniform >= p) / (1 - p)."""
    y, mask = np.empty(x.shape, dtype=x.dtype), np.empty(x.shape, dtype=x.dtype)
    t = x.dtype.type
    _dropout(x.size, _flat(x), _flat(uniform).astype(x.dtype, copy=False), t(p), t(1.0 / (1.0 - p)), y.reshape(-1),
             mask.reshape(-1))
    return y, mask


_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# libm's erf and exp, value by value: exact to rounding, but about 7 ns a value where a ReLU takes 0.2, so the work
# counts 16 per value (two threads pay off from 16,384 values on). A vectorizable approximation (Abramowitz & Stegun
# 7.1.26 after NumPy's exp) was 2.5x faster but off by up to 3% in the far negative tail: not kept.
_GELU_WORK = 16


@_Kernel
def _gelu_forward(x, out):
    for i in prange(x.size):
        v = x[i]
        out[i] = v * 0.5 * (1.0 + math.erf(v * _INV_SQRT_2))


@_Kernel
def _gelu_backward(grad, x, grad_in):
    for i in prange(x.size):
        v = x[i]
        grad_in[i] = grad[i] * (0.5 * (1.0 + math.erf(v * _INV_SQRT_2)) + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI)


def gelu_forward(x):
    """x Phi(x), Phi the standard normal CDF (computed in float64)."""
    out = np.empty(x.shape, dtype=x.dtype)
    _gelu_forward(x.size * _GELU_WORK, _flat(x), out.reshape(-1))
    return out


def gelu_backward(grad, x):
    """grad (Phi(x) + x phi(x))."""
    grad_in = np.empty(x.shape, dtype=x.dtype)
    _gelu_backward(x.size * _GELU_WORK, _flat(grad), _flat(x), grad_in.reshape(-1))
    return grad_in


# ---------------------------------------------------------------- data


@_Kernel
def _lookup_rows(table, codes, index, out):
    width = codes.shape[1]
    for r in prange(index.size):
        row = index[r]
        for k in range(width):
            out[r, k] = table[codes[row, k]]


def lookup_rows(table, codes, index):
    """table[codes[index]] in one pass over the chosen rows (NumPy's fancy indexing makes the uint8 batch first
    and then gathers from the table: about three times the time for a batch of 128 images)."""
    if not codes.flags.c_contiguous:
        return table[codes[index]]
    index = np.arange(*index.indices(len(codes))) if isinstance(index, slice) else np.asarray(index)
    if index.ndim != 1 or index.dtype.kind not in "iu" or (index.size and (index.min() < 0 or
                                                                        index.max() >= len(codes))):
        return table[codes[index]]  # NumPy's semantics and errors for anything else
    out = np.empty((index.size,) + codes.shape[1:], dtype=table.dtype)
    width = math.prod(codes.shape[1:])
    _lookup_rows(out.size, np.ascontiguousarray(table), codes.reshape(len(codes), width),
                 index.astype(np.int64, copy=False), out.reshape(index.size, width))
    return out


# ---------------------------------------------------------------- softmax cross-entropy


@_Kernel
def _log_softmax_nll(logits, labels, log_p, row_loss):
    rows, classes = logits.shape
    for r in prange(rows):
        peak = logits[r, 0]
        for c in range(1, classes):
            peak = max(peak, logits[r, c])
        total = 0.0
        for c in range(classes):
            total += math.exp(logits[r, c] - peak)
        log_sum = peak + math.log(total)
        for c in range(classes):
            log_p[r, c] = logits[r, c] - log_sum
        row_loss[r] = -log_p[r, labels[r]]


def log_softmax_nll(logits, labels):
    """(log-softmax of (n, classes) logits, per-row loss -log p[label])."""
    logits = np.ascontiguousarray(logits)
    log_p = np.empty_like(logits)
    row_loss = np.empty(logits.shape[0], dtype=logits.dtype)
    _log_softmax_nll(logits.size, logits, np.ascontiguousarray(labels, dtype=np.int64), log_p, row_loss)
    return log_p, row_loss


@_Kernel
def _count_correct(logits, labels):
    rows, classes = logits.shape
    correct = 0
    for r in prange(rows):
        best = 0  # NumPy's argmax: the first maximum, and the first NaN wins outright
        for c in range(1, classes):
            if logits[r, best] != logits[r, best]:
                break
            if logits[r, c] > logits[r, best] or logits[r, c] != logits[r, c]:
                best = c
        if best == labels[r]:
            correct += 1
    return correct


def add_correct(logits, labels, counter) -> None:
    """counter (0-d int64) += the number of rows of (n, classes) logits whose argmax is the label."""
    counter += _count_correct(logits.size, np.ascontiguousarray(logits), np.ascontiguousarray(labels, dtype=np.int64))


@_Kernel
def _cross_entropy_backward(log_p, labels, factor, grad):
    rows, classes = log_p.shape
    for r in prange(rows):
        for c in range(classes):
            grad[r, c] = (math.exp(log_p[r, c]) - (1.0 if labels[r] == c else 0.0)) * factor


def cross_entropy_backward(log_p, labels, upstream):
    """d mean(-log p[label]) / d logits, times the upstream gradient (a 0-d array or a number)."""
    grad = np.empty_like(log_p)
    factor = log_p.dtype.type(float(upstream) / log_p.shape[0])
    _cross_entropy_backward(log_p.size, np.ascontiguousarray(log_p), np.ascontiguousarray(labels, dtype=np.int64),
                            factor, grad)
    return grad


# ---------------------------------------------------------------- convolution as one GEMM each way


class _WindowKernel:
    """A loop over image windows whose last arguments are the window geometry (kernel, stride, padding,
    dilation). For small work it runs on one core, compiled once for any geometry. Spread over the cores, it
    is compiled per geometry, by `for_geometry(*geometry)`, a closure that calls the loop with the geometry as
    constants: loops over a 2x2 or 3x3 window then unroll, and indices known to be non-negative need no
    wraparound check (a 2x2 max-pool ran eight times faster so than with the geometry read at run time)."""

    def __init__(self, loop, for_geometry):
        self.serial = numba.njit(**_OPTIONS)(_renamed(loop.py_func, "_any_geometry"))
        self.for_geometry = for_geometry
        self.parallel = {}  # geometry -> its compiled loop

    def __call__(self, work: int, geometry: tuple, *args):
        if work < PARALLEL_WORK:
            return self.serial(*args, *geometry)
        loop = self.parallel.get(geometry)
        if loop is None:
            loop = self.parallel[geometry] = numba.njit(parallel=True, **_OPTIONS)(self.for_geometry(*geometry))
        return loop(*args)


@numba.njit(inline="always")
def _inside(kernel_offset, stride, padding, size, out_size):
    """The outputs [first, stop) whose input index o * stride - padding + kernel_offset lies in [0, size)."""
    first = max(0, -((kernel_offset - padding) // stride))  # ceil((padding - offset) / stride)
    stop = min(out_size, (size - 1 + padding - kernel_offset) // stride + 1)
    return first, max(first, stop)


# Both loops index flat arrays with unsigned offsets: an index that may be negative gets a wraparound check per
# value, and slices one a row; on a (128, 32, 14, 14) batch, im2col took 7.6 ms so and 2.3 ms this way.
# The image is flat memory in which plane (n, c) starts at n * n_step + c * c_step (_plane_steps): NCHW, channel-major
# and a batch slice of either are all read and written in place.


@numba.njit(inline="always")
def _im2col_loop(source, shape, n_step, c_step, cols, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw):
    samples, channels, height, width = shape
    target, columns = cols.reshape(-1), cols.shape[1]
    for task in prange(channels * samples):  # one (channel, sample) each: its kh * kw rows of columns
        c, n = task // samples, task % samples
        plane = n * n_step + c * c_step
        for i in range(kh):
            y0, y1 = _inside(i * dh, sh, ph, height, oh)
            for j in range(kw):
                x0, x1 = _inside(j * dw, sw, pw, width, ow)
                row = ((c * kh + i) * kw + j) * columns + n * oh * ow
                for y in range(oh):
                    o = row + y * ow
                    if y < y0 or y >= y1:  # the row lies in the padding
                        for x in range(ow):
                            target[uint64(o + x)] = 0
                        continue
                    start = plane + (y * sh - ph + i * dh) * width + j * dw - pw
                    for x in range(x0):
                        target[uint64(o + x)] = 0
                    for x in range(x0, x1):
                        target[uint64(o + x)] = source[uint64(start + x * sw)]
                    for x in range(x1, ow):
                        target[uint64(o + x)] = 0


@numba.njit(inline="always")
def _col2im_loop(cols, target, shape, n_step, c_step, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw):
    samples, channels, height, width = shape
    source, columns = cols.reshape(-1), cols.shape[1]
    for task in prange(samples * channels):  # one image plane each: no two tasks write one pixel
        n, c = task // channels, task % channels
        plane = n * n_step + c * c_step
        for q in range(height * width):
            target[uint64(plane + q)] = 0
        for i in range(kh):
            y0, y1 = _inside(i * dh, sh, ph, height, oh)
            for j in range(kw):
                x0, x1 = _inside(j * dw, sw, pw, width, ow)
                row = ((c * kh + i) * kw + j) * columns + n * oh * ow
                for y in range(y0, y1):
                    start = plane + (y * sh - ph + i * dh) * width + j * dw - pw
                    o = row + y * ow
                    for x in range(x0, x1):
                        target[uint64(start + x * sw)] += source[uint64(o + x)]


# The closures to compile per geometry (their numbers become constants; the loops are inlined into them).
def _im2col_for(kh, kw, sh, sw, ph, pw, dh, dw):
    def loop(source, shape, n_step, c_step, cols, oh, ow):
        _im2col_loop(source, shape, n_step, c_step, cols, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw)
    return loop


def _col2im_for(kh, kw, sh, sw, ph, pw, dh, dw):
    def loop(cols, target, shape, n_step, c_step, oh, ow):
        _col2im_loop(cols, target, shape, n_step, c_step, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw)
    return loop


_im2col = _WindowKernel(_im2col_loop, _im2col_for)
_col2im = _WindowKernel(_col2im_loop, _col2im_for)


def _plane_steps(image):
    """(flat, n_step, c_step) for an (N, C, H, W) image whose (H, W) planes are C-contiguous and lie at
    non-negative distances: a 1-D view of the memory from its first value to its last, and how far (in values)
    plane (n, c) starts from plane (0, 0) per sample and per channel. None when the image does not lie so."""
    samples, channels, height, width = image.shape
    if image.size == 0 or not image[0, 0].flags.c_contiguous:
        return None
    # a step along an axis of length 1 is never taken (NumPy may give such an axis any stride)
    n_step = image.strides[0] // image.itemsize if samples > 1 else 0
    c_step = image.strides[1] // image.itemsize if channels > 1 else 0
    if n_step < 0 or c_step < 0 or image.strides[0] % image.itemsize or image.strides[1] % image.itemsize:
        return None
    extent = (samples - 1) * n_step + (channels - 1) * c_step + height * width
    return np.lib.stride_tricks.as_strided(image, shape=(extent,), strides=(image.itemsize,)), n_step, c_step


def im2col(image, kernel, stride, padding, dilation, out_hw):
    """The column matrix (C*KH*KW, N*OH*OW) of an (N, C, H, W) image, NCHW or channel-major: no padded copy."""
    steps = _plane_steps(image)
    if steps is None:
        image = np.ascontiguousarray(image)
        steps = _plane_steps(image) if image.size else (image.reshape(-1), 0, 0)
    n, channels = image.shape[:2]
    cols = np.empty((channels * kernel[0] * kernel[1], n * out_hw[0] * out_hw[1]), dtype=image.dtype)
    _im2col(cols.size, (*kernel, *stride, *padding, *dilation), steps[0], image.shape, steps[1], steps[2], cols,
            *out_hw)
    return cols


def col2im(columns, image, kernel, stride, padding, dilation, out_hw) -> None:
    """Sum a (C*KH*KW, N*OH*OW) column matrix back onto `image` (N, C, H, W), overwriting it: NCHW, channel-major
    or a batch slice of either (its planes must not overlap)."""
    if image.dtype != columns.dtype:
        raise ValueError(f"col2im writes into an image of the columns' dtype {columns.dtype}, got {image.dtype}")
    steps = _plane_steps(image)
    if steps is None:  # planes that are not contiguous (or no values): through an NCHW copy
        if image.size:
            contiguous = np.empty(image.shape, dtype=image.dtype)
            col2im(columns, contiguous, kernel, stride, padding, dilation, out_hw)
            image[...] = contiguous
        return
    _col2im(columns.size, (*kernel, *stride, *padding, *dilation), np.ascontiguousarray(columns), steps[0], image.shape,
            steps[1], steps[2], *out_hw)


@_Kernel
def _bias_relu_rows(rows, bias, has_bias, relu):
    width = rows.shape[1]
    for f in prange(rows.shape[0]):
        row, shift = rows[f], bias[f] if has_bias else 0
        if relu:
            for p in range(width):
                v = row[p] + shift
                row[p] = 0 if v < 0 else v  # NaN stays NaN, as in np.maximum
        else:
            for p in range(width):
                row[p] += shift


def bias_relu_rows(rows, bias, relu: bool) -> None:
    """rows (F, M), C-contiguous, = rows + bias[:, None] (bias (F,) or None), then the ReLU: in place."""
    if not rows.flags.c_contiguous:
        raise ValueError("bias_relu_rows works in place on a C-contiguous array")
    if bias is not None or relu:
        _bias_relu_rows(rows.size, rows, np.zeros(1, rows.dtype) if bias is None else bias, bias is not None, relu)


@_Kernel
def _images_to_filters(grad, out):
    samples, filters, pixels = grad.shape
    for task in prange(samples * filters):
        n, f = task // filters, task % filters
        out[f, n * pixels:(n + 1) * pixels] = grad[n, f]


# Not on this set's path (its convolutions write their product as the activation: CHANNEL_MAJOR); the interface's.
filters_to_images = reference.filters_to_images


def images_to_filters(grad):
    """(N, F, OH, OW) -> (F, N*OH*OW): the layout the convolution's gradient GEMMs take; a view of a channel-major
    gradient, a copy of an NCHW one."""
    samples, filters = grad.shape[:2]
    if _channel_major(grad):
        return grad.swapaxes(0, 1).reshape(filters, -1)
    out = np.empty((filters, grad.size // max(1, filters)), dtype=grad.dtype)
    _images_to_filters(grad.size, np.ascontiguousarray(grad).reshape(samples, filters, -1), out)
    return out


# ---------------------------------------------------------------- max pooling


@numba.njit(inline="always")
def _window_inside(top, left, kh, kw, height, width):
    """The rows [i0, i1) and columns [j0, j1) of a window at (top, left) that lie inside the image."""
    return max(0, -top), min(kh, height - top), max(0, -left), min(kw, width - left)


@numba.njit(inline="always")
def _max_pool_forward_loop(x, out, winner, kh, kw, sh, sw, ph, pw):
    samples, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for task in prange(samples * channels):
        n, c = task // channels, task % channels
        plane = x[n, c]
        for y in range(oh):
            top = y * sh - ph
            for xo in range(ow):
                left = xo * sw - pw
                # Without padding every window is inside the image (a constant test, once compiled per geometry).
                if (ph == 0 and pw == 0) or (top >= 0 and left >= 0 and top + kh <= height and left + kw <= width):
                    value, offset = plane[top, left], 0
                    for i in range(kh):
                        for j in range(kw):
                            v = plane[top + i, left + j]
                            if v > value:  # strict: on ties the first offset (row-major) keeps the window
                                value, offset = v, i * kw + j
                else:  # at the border: the window's part inside the image (never empty: padding <= kernel / 2)
                    i0, i1, j0, j1 = _window_inside(top, left, kh, kw, height, width)
                    value, offset = plane[top + i0, left + j0], i0 * kw + j0
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            v = plane[top + i, left + j]
                            if v > value:
                                value, offset = v, i * kw + j
                out[n, c, y, xo] = value
                winner[n, c, y, xo] = offset


@numba.njit(inline="always")
def _max_pool_backward_loop(grad_out, winner, grad_in, kh, kw, sh, sw, ph, pw):
    samples, channels, height, width = grad_in.shape
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    for task in prange(samples * channels):
        n, c = task // channels, task % channels
        plane = grad_in[n, c]
        plane[:] = 0
        for y in range(oh):
            for xo in range(ow):
                k = winner[n, c, y, xo]
                plane[y * sh - ph + k // kw, xo * sw - pw + k % kw] += grad_out[n, c, y, xo]


def _max_pool_forward_for(kh, kw, sh, sw, ph, pw):
    def loop(x, out, winner):
        _max_pool_forward_loop(x, out, winner, kh, kw, sh, sw, ph, pw)
    return loop


def _max_pool_backward_for(kh, kw, sh, sw, ph, pw):
    def loop(grad_out, winner, grad_in):
        _max_pool_backward_loop(grad_out, winner, grad_in, kh, kw, sh, sw, ph, pw)
    return loop


_max_pool_forward = _WindowKernel(_max_pool_forward_loop, _max_pool_forward_for)
_max_pool_backward = _WindowKernel(_max_pool_backward_loop, _max_pool_backward_for)


# The pooling loops work plane by plane and never ask which axis is the channel: a channel-major (N, C, H, W) array
# goes in as the C-contiguous (C, N, H, W) array under it, and the result comes back swapped the same way.


def max_pool_forward(x, kernel, stride, padding, out_hw):
    """(output, winner): each window's maximum and the offset (i * kw + j) that holds it (padding is -inf); both
    in x's memory order."""
    order = _channel_major(x)
    planes = _in_order(x, order)
    out = np.empty(planes.shape[:2] + tuple(out_hw), dtype=x.dtype)
    winner = np.empty(out.shape, dtype=np.uint8)
    _max_pool_forward(x.size, (*kernel, *stride, *padding), planes, out, winner)
    return (out.swapaxes(0, 1), winner.swapaxes(0, 1)) if order else (out, winner)


def max_pool_backward(grad_out, winner, input_shape, kernel, stride, padding, out_hw):
    """The input gradient of max pooling: each window's gradient goes to the input that won it; in the memory
    order of the forward's input (the winner's)."""
    order = _channel_major(winner)
    grad_in = _empty(input_shape, grad_out.dtype, order)
    _max_pool_backward(grad_in.size, (*kernel, *stride, *padding), _in_order(grad_out, order), _in_order(winner, order),
                       _in_order(grad_in, order))
    return grad_in


# ---------------------------------------------------------------- average pooling


@numba.njit(inline="always")
def _avg_pool_forward_loop(x, out, kh, kw, sh, sw, ph, pw, include_pad):
    samples, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for task in prange(samples * channels):
        n, c = task // channels, task % channels
        plane = x[n, c]
        for y in range(oh):
            top = y * sh - ph
            for xo in range(ow):
                left = xo * sw - pw
                i0, i1, j0, j1 = _window_inside(top, left, kh, kw, height, width)
                total = 0.0
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        total += plane[top + i, left + j]
                out[n, c, y, xo] = total / (kh * kw if include_pad else (i1 - i0) * (j1 - j0))


@numba.njit(inline="always")
def _avg_pool_backward_loop(grad_out, grad_in, kh, kw, sh, sw, ph, pw, include_pad):
    samples, channels, height, width = grad_in.shape
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    for task in prange(samples * channels):
        n, c = task // channels, task % channels
        plane = grad_in[n, c]
        plane[:] = 0
        for y in range(oh):
            top = y * sh - ph
            for xo in range(ow):
                left = xo * sw - pw
                i0, i1, j0, j1 = _window_inside(top, left, kh, kw, height, width)
                share = grad_out[n, c, y, xo] / (kh * kw if include_pad else (i1 - i0) * (j1 - j0))
                for i in range(i0, i1):
                    for j in range(j0, j1):
                        plane[top + i, left + j] += share


def _avg_pool_forward_for(kh, kw, sh, sw, ph, pw, include_pad):
    def loop(x, out):
        _avg_pool_forward_loop(x, out, kh, kw, sh, sw, ph, pw, include_pad)
    return loop


def _avg_pool_backward_for(kh, kw, sh, sw, ph, pw, include_pad):
    def loop(grad_out, grad_in):
        _avg_pool_backward_loop(grad_out, grad_in, kh, kw, sh, sw, ph, pw, include_pad)
    return loop


_avg_pool_forward = _WindowKernel(_avg_pool_forward_loop, _avg_pool_forward_for)
_avg_pool_backward = _WindowKernel(_avg_pool_backward_loop, _avg_pool_backward_for)


def avg_pool_forward(x, kernel, stride, padding, out_hw, count_include_pad: bool):
    """Each window's mean; padding counts as zeros in it when count_include_pad (torch's default). In x's memory
    order."""
    order = _channel_major(x)
    planes = _in_order(x, order)
    out = np.empty(planes.shape[:2] + tuple(out_hw), dtype=x.dtype)
    _avg_pool_forward(x.size, (*kernel, *stride, *padding, bool(count_include_pad)), planes, out)
    return out.swapaxes(0, 1) if order else out


def avg_pool_backward(grad_out, input_shape, kernel, stride, padding, out_hw, count_include_pad: bool):
    """Each window's gradient shared equally by the values it averaged; in grad_out's memory order (the
    forward's)."""
    order = _channel_major(grad_out)
    grad_in = _empty(input_shape, grad_out.dtype, order)
    _avg_pool_backward(grad_in.size, (*kernel, *stride, *padding, bool(count_include_pad)),
                       _in_order(grad_out, order), _in_order(grad_in, order))
    return grad_in


# ---------------------------------------------------------------- batch normalization


@_Kernel
def _batch_norm_statistics(x, gamma, beta, running_mean, running_var, flags, eps, momentum, mean, inv_std, scale,
                           shift):
    samples, channels, plane = x.shape
    count = samples * plane
    for c in prange(channels):
        total = 0.0
        for n in range(samples):
            for p in range(plane):
                total += x[n, c, p]
        m = total / count
        squares = 0.0
        for n in range(samples):
            for p in range(plane):
                d = x[n, c, p] - m
                squares += d * d
        var = squares / count
        s = 1.0 / math.sqrt(var + eps)
        g = gamma[c] if flags & 1 else 1.0
        b = beta[c] if flags & 2 else 0.0
        mean[c], inv_std[c], scale[c] = m, s, g * s
        shift[c] = b - m * (g * s)
        if flags & 4:
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * m
        if flags & 8:
            running_var[c] = (1 - momentum) * running_var[c] + momentum * var * (count / (count - 1))


def _planes(array, channel_major: bool):
    """A C-contiguous (M, C, P) view in which channel c is [:, c, :]: (N, C, H*W...) for the NCHW order, and for the
    channel-major one (1, C, N*H*W...), each channel one contiguous row (a copy when `array` lies otherwise)."""
    if channel_major:
        return _in_order(array, True).reshape(1, array.shape[1], -1)
    array = np.ascontiguousarray(array)
    return array.reshape(array.shape[0], array.shape[1], -1)


def batch_norm_statistics(x, gamma, beta, running_mean, running_var, eps: float, momentum: float):
    """(mean, 1/std, scale, shift) per channel of (N, C, ...) x from its batch statistics; also updates the
    running statistics given (either may be None) in place. out = x * scale + shift."""
    channels = x.shape[1]
    mean, inv_std, scale, shift = (np.empty(channels, dtype=x.dtype) for _ in range(4))
    dummy = np.zeros(1, dtype=x.dtype)
    flags = ((gamma is not None) * 1 + (beta is not None) * 2 + (running_mean is not None) * 4
             + (running_var is not None) * 8)
    given = (dummy if a is None else a for a in (gamma, beta, running_mean, running_var))
    _batch_norm_statistics(2 * x.size, _planes(x, _channel_major(x)), *given, flags, float(eps), float(momentum), mean,
                           inv_std, scale, shift)
    return mean, inv_std, scale, shift


def batch_norm_eval_scale(mean, var, gamma, beta, eps: float):
    """(1/std, scale, shift) per channel from given (running) statistics; gamma, beta may be None."""
    inv_std = 1 / np.sqrt(var + var.dtype.type(eps))
    scale = inv_std if gamma is None else gamma * inv_std
    return inv_std, scale, (0 if beta is None else beta) - mean * scale


@_Kernel
def _batch_norm_apply(x, scale, shift, relu, out):
    samples, channels, plane = x.shape
    for task in prange(samples * channels):
        n, c = task // channels, task % channels
        if relu:
            for p in range(plane):
                v = x[n, c, p] * scale[c] + shift[c]
                out[n, c, p] = 0 if v < 0 else v
        else:
            for p in range(plane):
                out[n, c, p] = x[n, c, p] * scale[c] + shift[c]


def batch_norm_apply(x, scale, shift, relu: bool):
    """x * scale + shift with per-channel scale and shift, then the ReLU: one pass, in x's memory order."""
    order = _channel_major(x)
    out = _empty(x.shape, x.dtype, order)
    _batch_norm_apply(x.size, _planes(x, order), scale, shift, relu, _planes(out, order))
    return out


@_Kernel
def _batch_norm_backward_statistics(grad, x, mean, scale, inv_std, training, sum_g, grad_gamma, coef_centered,
                                    coef_const):
    samples, channels, plane = x.shape
    count = samples * plane
    for c in prange(channels):
        total = 0.0
        centered = 0.0
        for n in range(samples):
            for p in range(plane):
                total += grad[n, c, p]
                centered += grad[n, c, p] * (x[n, c, p] - mean[c])
        sum_g[c] = total
        grad_gamma[c] = centered * inv_std[c]
        coef_centered[c] = -scale[c] * inv_std[c] * inv_std[c] * centered / count if training else 0.0
        coef_const[c] = -scale[c] * total / count if training else 0.0


def batch_norm_backward_statistics(grad, x, mean, scale, inv_std, training: bool):
    """(sum of grad, gamma's gradient, coef_centered, coef_const) per channel (see batch_norm_backward)."""
    sum_g, grad_gamma, coef_centered, coef_const = (np.empty(x.shape[1], dtype=x.dtype) for _ in range(4))
    order = _channel_major(x)
    _batch_norm_backward_statistics(2 * x.size, _planes(grad, order), _planes(x, order), mean, scale, inv_std,
                                    bool(training), sum_g, grad_gamma, coef_centered, coef_const)
    return sum_g, grad_gamma, coef_centered, coef_const


@_Kernel
def _batch_norm_backward(grad, x, mean, scale, coef_centered, coef_const, grad_in):
    samples, channels, plane = x.shape
    for task in prange(samples * channels):
        n, c = task // channels, task % channels
        for p in range(plane):
            grad_in[n, c, p] = grad[n, c, p] * scale[c] + (x[n, c, p] - mean[c]) * coef_centered[c] + coef_const[c]


def batch_norm_backward(grad, x, mean, scale, coef_centered, coef_const):
    """The input gradient: grad * scale + (x - mean) * coef_centered + coef_const per channel, one pass, in x's
    memory order."""
    order = _channel_major(x)
    grad_in = _empty(grad.shape, grad.dtype, order)
    _batch_norm_backward(grad.size, _planes(grad, order), _planes(x, order), mean, scale, coef_centered, coef_const,
                         _planes(grad_in, order))
    return grad_in


# ---------------------------------------------------------------- recurrent steps
# A step's pointwise part is mostly tanh and sigmoid. libm's tanh, called value by value from a compiled loop, took
# 14 ns a value (NumPy's vectorized one 0.25), and Numba has no SVML since 0.62, so float32 steps use _tanh32: plain
# arithmetic that LLVM vectorizes (16 values an instruction with AVX-512). float64 (gradient checks, not speed) keeps
# libm's math.tanh, exact to rounding, in the backward steps and takes the reference's forward steps (see below).
# Each float32 step is one compiled call that takes one row (sequence) at a time through a few loops over its gates
# while the row is in cache: the gate activations, the new state and all the backward reads; or all the gate
# gradients. The loops run over contiguous row slices, one slice written per array and loop: with more (d_i, d_f,
# d_g and d_o of a row in one loop) LLVM could not tell that they do not overlap and left the loop scalar (the LSTM's
# backward step at 128 x 128 units: 207 us, against 40 so).
#
# _tanh32(x): u = x P(x^2) / Q(x^2) approximates 2 tanh(x / 2), and tanh(x) = u / (1 + u^2 / 4) (the double-angle
# formula). One rational for tanh over [0, 9] in float32 was off by 5 ulp near 1 (3.1e-7): the rounding in P and Q
# adds up; through the double-angle step an error in u counts (1 - u^2/4) / (1 + u^2/4)^2 times, which vanishes as
# |x| grows. P / Q: tanh(y) / y for y in [0, 4.51] as a ratio of polynomials in y^2 of degrees 4 and 3, minimax in
# relative error (6.8e-10 in float64), fitted offline by linearized LP iterations (Loeb's method: scipy's linprog on
# 6,000 points, the error re-weighted by the last Q each time), then written for x = 2y (coefficient k divided by
# 4^k, exactly) and rounded to float32. Measured over every float32 value against np.tanh in float64, compiled with
# this file's flags: max absolute error 1.68e-7 (3 ulp just below 1, at x = 1.103), max relative error 3.25e-7.
# From |x| >= 9.010914 on, where the float32 tanh rounds to 1, the result is exactly +-1 (+-inf included); NaN stays
# NaN (no nnan / ninf flags), -0.0 stays -0.0, tiny and subnormal x come back unchanged (P(0) rounds to 1), and
# tanh(-x) = -tanh(x) exactly. Sigmoid is (1 + tanh(x / 2)) / 2, as in the reference: max absolute error 1.11e-7.
_TANH_P = tuple(np.float32(c) for c in (1.0, 0.032412734, 0.00018538101, 1.4847586e-07, -4.534889e-11))
_TANH_Q = tuple(np.float32(c) for c in (1.0, 0.115746066, 0.0014975545, 3.647808e-06))
_TANH_ONE_FROM = np.float32(9.010914)  # the smallest float32 whose tanh rounds to 1
_ONE32, _HALF32, _QUARTER32 = np.float32(1), np.float32(0.5), np.float32(0.25)
_P0, _P1, _P2, _P3, _P4 = _TANH_P
_Q0, _Q1, _Q2, _Q3 = _TANH_Q


def _tanh32(x):
    """float32 tanh by the rational above, for one float32 value: compiled into the kernels through _tanh and _sigmoid
    (tanh_values and sigmoid_values run it over arrays)."""
    s = x * x
    p = (((_P4 * s + _P3) * s + _P2) * s + _P1) * s + _P0
    q = ((_Q3 * s + _Q2) * s + _Q1) * s + _Q0
    u = x * p / q  # 2 tanh(x / 2)
    t = u / (_QUARTER32 * (u * u) + _ONE32)
    t = _ONE32 if t > _ONE32 else t  # written as selects: NaN passes through them all
    t = -_ONE32 if t < -_ONE32 else t
    t = _ONE32 if x >= _TANH_ONE_FROM else t  # also +inf, and x whose x^2 overflows
    return -_ONE32 if x <= -_TANH_ONE_FROM else t


def _tanh(x):
    """tanh in x's float type: _tanh32 for float32, libm's for float64 (a stand-in; compiled code uses the overload)."""
    return math.tanh(x)


def _sigmoid(x):
    """(1 + tanh(x / 2)) / 2 in x's float type (a stand-in; compiled code uses the overload)."""
    return (math.tanh(0.5 * x) + 1.0) * 0.5


# forceinline: LLVM inlines them into the loops, which then vectorize (inlining Numba's IR instead warns about its
# branches); the loops' fastmath flags carry over.
_INLINE = {"forceinline": True, "fastmath": _OPTIONS["fastmath"], "error_model": "numpy"}
_tanh32_compiled = numba.njit(**_INLINE)(_tanh32)


@overload(_tanh, jit_options=_INLINE)
def _tanh_typed(x):
    if x == numba.float32:
        return lambda x: _tanh32_compiled(x)
    return lambda x: math.tanh(x)


@overload(_sigmoid, jit_options=_INLINE)
def _sigmoid_typed(x):
    if x == numba.float32:
        return lambda x: _HALF32 + _HALF32 * _tanh32_compiled(_HALF32 * x)
    return lambda x: (math.tanh(0.5 * x) + 1.0) * 0.5


@_Kernel
def _tanh_loop(x, out):
    for i in prange(x.size):
        out[i] = _tanh(x[i])


@_Kernel
def _sigmoid_loop(x, out):
    for i in prange(x.size):
        out[i] = _sigmoid(x[i])


def tanh_values(x):
    """tanh of a float array as the recurrent steps compute it (_tanh32 for float32): for the tests and timings."""
    out = np.empty(x.shape, dtype=x.dtype)
    _tanh_loop(x.size, _flat(x), out.reshape(-1))
    return out


def sigmoid_values(x):
    """The sigmoid of a float array as the recurrent steps compute it."""
    out = np.empty(x.shape, dtype=x.dtype)
    _sigmoid_loop(x.size, _flat(x), out.reshape(-1))
    return out


# float64 forward steps (gradient checks) are the reference's: with libm's tanh value by value, the compiled LSTM step
# took 1.5 ms at 128 x 128 units against NumPy's 0.37 (its float64 tanh is vectorized). The backward steps, with one
# tanh a unit for the LSTM's and none for the GRU's, stay compiled in float64 too (0.22 and 0.06 ms against 0.28 and
# 0.20).

# A step counts one value per hidden unit for the choice between one core and all: spread over the two cores here, the
# steps of a batch of 128 or 512 sequences of 128 units were no faster (BLAS's threads hold the cores between the
# steps' products), so a step runs on one core up to 262,144 units (about 1 ms of work each way).
_STEP_WORK = 1


def _rows(array):
    """Check that each row of a 2-D array is contiguous (a time slice (N, K) of (N, T, K) is): the kernels take a row
    as one contiguous vector (np.ascontiguousarray on it is then no copy; a loop over a strided view stays scalar)."""
    if array.strides[1] != array.itemsize:
        raise ValueError(f"expected rows of contiguous values, got strides {array.strides}")
    return array


@_Kernel
def _gru_forward(step_in, gh, bias, has_bias, h, h_new, rz, n):
    rows, hidden = h.shape
    for row in prange(rows):
        x, g, rz_row = np.ascontiguousarray(step_in[row]), gh[row], rz[row]
        if has_bias:
            for k in range(3 * hidden):
                g[k] += bias[k]
        for k in range(2 * hidden):  # r and z
            rz_row[k] = _sigmoid(x[k] + g[k])
        x_n, g_n, r_row, z_row = x[2 * hidden:3 * hidden], g[2 * hidden:], rz_row[:hidden], rz_row[hidden:]
        h_row, n_out, h_out = h[row], n[row], h_new[row]
        for j in range(hidden):
            candidate = _tanh(x_n[j] + r_row[j] * g_n[j])
            n_out[j] = candidate
            h_out[j] = candidate + z_row[j] * (h_row[j] - candidate)


def gru_forward(step_in, gh, bias, h, h_new, rz, n) -> None:
    """One GRU step's pointwise part in one pass (backend/kernels.py): step_in may be a time slice. float64 takes the
    reference's NumPy step, whose float64 tanh is vectorized."""
    if h.dtype != np.float32:
        return reference.gru_forward(step_in, gh, bias, h, h_new, rz, n)
    _gru_forward(h.size * _STEP_WORK, _rows(step_in), gh, gh[0] if bias is None else bias, bias is not None, h, h_new,
                 rz, n)


@_Kernel
def _gru_backward(grad, carried, direct, has_next, h, rz, n, gh, d_in, d_gh, one):
    rows, hidden = h.shape
    for row in prange(rows):
        g, d, e = np.ascontiguousarray(grad[row]), np.ascontiguousarray(d_in[row]), d_gh[row]
        r_row, z_row, n_row, h_row = rz[row, :hidden], rz[row, hidden:], n[row], h[row]
        gh_n, carried_row, dh_row = gh[row, 2 * hidden:], carried[row], direct[row]
        d_n, e_n = d[2 * hidden:3 * hidden], e[2 * hidden:]
        for j in range(hidden):  # `direct` holds dh for now
            dh = g[j] + carried_row[j] + dh_row[j] if has_next else g[j]
            dn = dh * (one - z_row[j]) * (one - n_row[j] * n_row[j])
            dh_row[j], d_n[j], e_n[j] = dh, dn, dn * r_row[j]
        d_r, e_r = d[:hidden], e[:hidden]
        for j in range(hidden):
            r = r_row[j]
            dr = dh_row[j] * (one - z_row[j]) * (one - n_row[j] * n_row[j]) * gh_n[j] * r * (one - r)
            d_r[j], e_r[j] = dr, dr
        d_z, e_z = d[hidden:2 * hidden], e[hidden:2 * hidden]
        for j in range(hidden):
            z, dh = z_row[j], dh_row[j]
            dz = dh * (h_row[j] - n_row[j]) * z * (one - z)
            d_z[j], e_z[j], dh_row[j] = dz, dz, dh * z


def gru_backward(grad, carried, direct, has_next: bool, h, rz, n, gh, d_in, d_gh) -> None:
    """One GRU step of backpropagation through time in one pass (backend/kernels.py): grad and d_in may be time
    slices."""
    _gru_backward(h.size * _STEP_WORK, _rows(grad), carried, direct, bool(has_next), h, rz, n, gh, _rows(d_in), d_gh,
                  h.dtype.type(1))


@_Kernel
def _lstm_forward(step_in, gates, bias, c_prev, h_new, c_new):
    rows, hidden = c_prev.shape
    for row in prange(rows):
        x, a = np.ascontiguousarray(step_in[row]), gates[row]
        for k in range(2 * hidden):  # i and f
            a[k] = _sigmoid(a[k] + x[k] + bias[k])
        x_g, a_g, b_g = x[2 * hidden:3 * hidden], a[2 * hidden:3 * hidden], bias[2 * hidden:3 * hidden]
        for j in range(hidden):
            a_g[j] = _tanh(a_g[j] + x_g[j] + b_g[j])
        x_o, a_o, b_o = x[3 * hidden:], a[3 * hidden:], bias[3 * hidden:]
        for j in range(hidden):
            a_o[j] = _sigmoid(a_o[j] + x_o[j] + b_o[j])
        a_i, a_f, c_row, h_out, c_out = a[:hidden], a[hidden:2 * hidden], c_prev[row], h_new[row], c_new[row]
        for j in range(hidden):
            c = a_f[j] * c_row[j] + a_i[j] * a_g[j]
            c_out[j] = c
            h_out[j] = a_o[j] * _tanh(c)


def lstm_forward(step_in, gates, bias, c_prev, h_new, c_new) -> None:
    """One LSTM step's pointwise part in one pass over each row (backend/kernels.py): step_in may be a time slice.
    float64 takes the reference's NumPy step, whose float64 tanh is vectorized."""
    if c_prev.dtype != np.float32:
        return reference.lstm_forward(step_in, gates, bias, c_prev, h_new, c_new)
    _lstm_forward(c_prev.size * _STEP_WORK, _rows(step_in), gates,
                  np.zeros(gates.shape[1], gates.dtype) if bias is None else bias, c_prev, h_new, c_new)


@_Kernel
def _lstm_backward(grad_h, grad_c, carried, dc_next, has_next, acts, c_prev, c_new, d_in, d_gates, one):
    rows, hidden = c_prev.shape
    for row in prange(rows):
        gh, gc, a, e = np.ascontiguousarray(grad_h[row]), np.ascontiguousarray(grad_c[row]), acts[row], d_gates[row]
        carried_row, dc_row, c_row, cp_row = carried[row], dc_next[row], c_new[row], c_prev[row]
        for j in range(hidden):  # dc_next holds dc until the last loop
            dh = gh[j] + carried_row[j] if has_next else gh[j]
            tc, o = _tanh(c_row[j]), a[uint64(3 * hidden + j)]
            dc_row[j] = (gc[j] + dc_row[j] if has_next else gc[j]) + dh * o * (one - tc * tc)
            e[uint64(3 * hidden + j)] = dh * tc * o * (one - o)
        e_i, e_f, e_g = e[:hidden], e[hidden:2 * hidden], e[2 * hidden:3 * hidden]
        a_i, a_f, a_g = a[:hidden], a[hidden:2 * hidden], a[2 * hidden:3 * hidden]
        for j in range(hidden):
            i = a_i[j]
            e_i[j] = dc_row[j] * a_g[j] * i * (one - i)
        for j in range(hidden):
            g = a_g[j]
            e_g[j] = dc_row[j] * a_i[j] * (one - g * g)
        for j in range(hidden):
            f, dc = a_f[j], dc_row[j]
            e_f[j] = dc * cp_row[j] * f * (one - f)
            dc_row[j] = dc * f
        d = np.ascontiguousarray(d_in[row])
        if d.ctypes.data != e.ctypes.data:  # d_in may be d_gates itself
            for k in range(4 * hidden):
                d[k] = e[k]


def lstm_backward(grad_h, grad_c, carried, dc_next, has_next: bool, acts, c_prev, c_new, d_in, d_gates) -> None:
    """One LSTM step of backpropagation through time in one pass over each row (backend/kernels.py), tanh(c) computed
    again; grad_h, grad_c and d_in may be time slices, d_in may be d_gates."""
    _lstm_backward(c_prev.size * _STEP_WORK, _rows(grad_h), _rows(grad_c), carried, dc_next, bool(has_next), acts,
                   c_prev, c_new, _rows(d_in), d_gates, c_prev.dtype.type(1))


# The optimizers update each parameter's part of the flat buffers in turn: gathering the gradients into one
# buffer first cost a copy of them all (0.4 ms of a 3.5 ms MLP step), and a call each costs microseconds.
GATHER_GRADIENTS = False


# ---------------------------------------------------------------- optimizers over one flat buffer


def _decay_array(decay, dtype):
    """(weight decay per element, whether it is): a per-element array, or a number as a one-element array."""
    if np.ndim(decay) == 0:
        return np.full(1, decay, dtype=dtype), False
    return decay, True


# Constants come in the parameters' dtype (a Python number in the loop would make float32 math float64), and
# each loop has a version with the decay per element and one with a single number: a loop with a branch or
# an index into the decay that may be 0 is not vectorized, and ran at half NumPy's speed.


@_Kernel
def _sgd(param, grad, decay, per_element, lr):
    if per_element:
        for i in prange(param.size):
            param[i] -= lr * (grad[i] + decay[i] * param[i])
    else:
        d = decay[0]
        for i in prange(param.size):
            param[i] -= lr * (grad[i] + d * param[i])


@_Kernel
def _sgd_momentum(param, grad, velocity, decay, per_element, lr, momentum, nesterov):
    d = decay[0]
    for i in prange(param.size):
        g = grad[i] + (decay[i] if per_element else d) * param[i]
        v = momentum * velocity[i] + g
        velocity[i] = v
        param[i] -= lr * (g + momentum * v if nesterov else v)


def sgd_step(param, grad, velocity, decay, lr: float, momentum: float, nesterov: bool) -> None:
    """One SGD update of flat buffers in place; `decay` is a per-element weight-decay array or a number."""
    t = param.dtype.type
    decay, per_element = _decay_array(decay, param.dtype)
    if velocity is None:
        _sgd(param.size, param, grad, decay, per_element, t(lr))
    else:
        _sgd_momentum(param.size, param, grad, velocity, decay, per_element, t(lr), t(momentum), bool(nesterov))


@_Kernel
def _adam(param, grad, m, v, decay, per_element, one, lr, beta1, beta2, eps, step_size, bias2_sqrt, decoupled):
    d = decay[0]
    for i in prange(param.size):
        decay_i = decay[i] if per_element else d
        g = grad[i]
        if decoupled:
            param[i] *= one - lr * decay_i
        else:
            g += decay_i * param[i]
        m_new = beta1 * m[i] + (one - beta1) * g
        v_new = beta2 * v[i] + (one - beta2) * g * g
        m[i], v[i] = m_new, v_new
        param[i] -= step_size * m_new / (np.sqrt(v_new) / bias2_sqrt + eps)


def adam_step(param, grad, m, v, decay, lr, beta1, beta2, eps, step: int, decoupled: bool) -> None:
    """One Adam/AdamW update of flat buffers in place (torch.optim's formulas)."""
    t = param.dtype.type
    decay, per_element = _decay_array(decay, param.dtype)
    _adam(param.size, param, grad, m, v, decay, per_element, t(1), t(lr), t(beta1), t(beta2), t(eps),
          t(lr / (1.0 - beta1 ** step)), t((1.0 - beta2 ** step) ** 0.5), bool(decoupled))


# ---------------------------------------------------------------- layer normalization over the rows of (R, D)
# One task per row, parallel over rows: its mean, then its variance from the centered values (a row is in cache by
# then), then the output. The row's mean and 1/std are written first and read back in the data's dtype, so the last
# loop runs in float32 for float32 data (vectorized) while the sums run in float64.


@_Kernel
def _layer_norm_forward(x, gamma, beta, eps, out, mean, inv_std):
    rows, width = x.shape
    for r in prange(rows):
        total = 0.0
        for c in range(width):
            total += x[r, c]
        m = total / width
        squares = 0.0
        for c in range(width):
            d = x[r, c] - m
            squares += d * d
        mean[r] = m
        inv_std[r] = 1.0 / math.sqrt(squares / width + eps)
        m, s = mean[r], inv_std[r]
        for c in range(width):
            out[r, c] = (x[r, c] - m) * s * gamma[c] + beta[c]


def layer_norm_forward(x, gamma, beta, eps: float):
    """(out, mean, 1/std) of each row of (R, D) x: out = (x - mean) / std * gamma + beta, one task per row."""
    x = np.ascontiguousarray(x)
    rows, width = x.shape
    out = np.empty_like(x)
    mean, inv_std = np.empty(rows, dtype=x.dtype), np.empty(rows, dtype=x.dtype)
    gamma = np.ones(width, x.dtype) if gamma is None else np.ascontiguousarray(gamma)
    beta = np.zeros(width, x.dtype) if beta is None else np.ascontiguousarray(beta)
    _layer_norm_forward(3 * x.size, x, gamma, beta, float(eps), out, mean, inv_std)
    return out, mean, inv_std


@_Kernel
def _layer_norm_backward(grad, x, mean, inv_std, gamma, affine, chunks, grad_in, coef, partial_gamma, partial_beta):
    rows, width = x.shape
    per_chunk = (rows + chunks - 1) // chunks
    for k in prange(chunks):  # a chunk of rows each: the affine sums go to the chunk's own row of the partials
        sums_gamma, sums_beta = partial_gamma[k], partial_beta[k]
        for r in range(k * per_chunk, min(rows, (k + 1) * per_chunk)):
            m, s = mean[r], inv_std[r]
            sum_g = 0.0
            sum_gx = 0.0
            for c in range(width):
                gh = grad[r, c] * gamma[c]
                sum_g += gh
                sum_gx += gh * ((x[r, c] - m) * s)
            coef[r, 0] = sum_g / width
            coef[r, 1] = sum_gx / width
            a, b = coef[r, 0], coef[r, 1]
            for c in range(width):
                xhat = (x[r, c] - m) * s
                grad_in[r, c] = s * (grad[r, c] * gamma[c] - a - xhat * b)
            if affine:
                for c in range(width):
                    sums_gamma[c] += grad[r, c] * ((x[r, c] - m) * s)
                    sums_beta[c] += grad[r, c]


def layer_norm_backward(grad, x, mean, inv_std, gamma, affine: bool):
    """(grad_x, grad_gamma, grad_beta) of layer normalization over the rows of (R, D), one task per chunk of rows;
    gamma's and beta's sums go into one row of partial sums per chunk, added up after."""
    grad, x = np.ascontiguousarray(grad), np.ascontiguousarray(x)
    rows, width = x.shape
    work = 3 * x.size
    chunks = max(1, min(rows, 4 * numba.get_num_threads())) if work >= PARALLEL_WORK else 1
    grad_in, coef = np.empty_like(x), np.empty((rows, 2), x.dtype)
    partial_gamma = np.zeros((chunks, width if affine else 0), np.float64)  # float64 sums, one row per chunk
    partial_beta = np.zeros_like(partial_gamma)
    gamma = np.ones(width, x.dtype) if gamma is None else np.ascontiguousarray(gamma)
    _layer_norm_backward(work, grad, x, mean, inv_std, gamma, bool(affine), chunks, grad_in, coef, partial_gamma,
                         partial_beta)
    if not affine:
        return grad_in, None, None
    return grad_in, partial_gamma.sum(axis=0).astype(x.dtype), partial_beta.sum(axis=0).astype(x.dtype)
