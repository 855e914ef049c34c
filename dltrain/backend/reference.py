"""The kernel interface of backend/kernels.py as plain array operations: the readable reference.

This is where a reader sees the arithmetic of backpropagation for the ops that have kernels (convolution
as im2col and one product, pooling, batch normalization, softmax cross-entropy, the recurrent steps, the
optimizer updates), written as NumPy array expressions. The same code runs on CuPy arrays, so it serves
every device. The ops in dltrain/functional call `backend.kernels_for(array)`, which hands out the compiled
kernels (backend/cpu.py, backend/cuda.py) where they are on and these functions otherwise
(DLTRAIN_FUSED_KERNELS=0, without Numba, other dtypes); the tests check both compiled sets against them.
"""

from __future__ import annotations

import math

import numpy

from . import array_module, erf

MAX_POOL_WINDOW = 1 << 31  # any window: the winner is one byte up to 256 offsets, four beyond
GATHER_GRADIENTS = False  # the optimizers update each parameter's part of the flat buffers in turn
CHANNEL_MAJOR = False  # convolutions write NCHW activations (filters_to_images)


def supports(dtype) -> bool:
    return numpy.dtype(dtype).kind == "f"


# ---------------------------------------------------------------- elementwise


def relu_backward(grad, out):
    """The ReLU passes the gradient where its output is positive."""
    return array_module(grad).where(out > 0, grad, 0).astype(grad.dtype, copy=False)


def _relu_in_place(xp, x) -> None:
    xp.maximum(x, 0, out=x)


def add_bias_relu(x, bias) -> None:
    """x = max(x + bias, 0), in place: a linear layer's bias and ReLU."""
    xp = array_module(x)
    if bias is not None:
        x += bias
    _relu_in_place(xp, x)


def dropout(x, uniform, p: float):
    """Inverted dropout: keep where the draw is >= p and scale the kept values by 1 / (1 - p)."""
    xp = array_module(x)
    mask = xp.where(uniform >= p, x.dtype.type(1.0 / (1.0 - p)), x.dtype.type(0))
    return x * mask, mask


_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x):
    """x * Phi(x), Phi the standard normal CDF: 0.5 (1 + erf(x / sqrt 2))."""
    return (x * (0.5 * (1 + erf(x * _INV_SQRT_2)))).astype(x.dtype, copy=False)


def gelu_backward(grad, x):
    """d/dx x Phi(x) = Phi(x) + x phi(x), phi the standard normal density."""
    xp = array_module(x)
    cdf = 0.5 * (1 + erf(x * _INV_SQRT_2))
    return (grad * (cdf + x * xp.exp(-0.5 * x * x) * _INV_SQRT_2PI)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------- data


def lookup_rows(table, codes, index):
    """The rows `index` of 8-bit codes, each byte replaced by its entry of `table`."""
    return table[codes[index]]


# ---------------------------------------------------------------- softmax cross-entropy


def log_softmax_nll(logits, labels):
    """log p = logits - log(sum(exp(logits))), with the row maximum taken out first (no overflow)."""
    xp = array_module(logits)
    peak = logits.max(axis=1, keepdims=True)
    log_p = logits - (peak + xp.log(xp.exp(logits - peak).sum(axis=1, keepdims=True)))
    return log_p, -log_p[xp.arange(len(labels)), labels]


def cross_entropy_backward(log_p, labels, upstream):
    """The gradient of the mean of -log p[label]: (softmax - onehot) / N."""
    xp = array_module(log_p)
    grad = xp.exp(log_p)
    grad[xp.arange(len(labels)), labels] -= 1
    grad *= upstream / len(labels)
    return grad.astype(log_p.dtype, copy=False)


def add_correct(logits, labels, counter) -> None:
    counter += (array_module(logits).argmax(logits, axis=1) == labels).sum()


# ---------------------------------------------------------------- convolution as one product each way


def _offset_view(padded, i, j, stride, dilation, out_hw):
    """The (N, C, OH, OW) strided view of the padded images read by kernel offset (i, j): no copy."""
    rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (out_hw[0] - 1) + 1, stride[0])
    cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (out_hw[1] - 1) + 1, stride[1])
    return padded[:, :, rows, cols]


def _padded(x, padding, value=0.0):
    if padding == (0, 0):
        return x
    return array_module(x).pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=value)


def im2col(image, kernel, stride, padding, dilation, out_hw):
    """Row (c, i, j), column (n, oh, ow) of the result is what filter weight (c, i, j) multiplies at output
    pixel (n, oh, ow), so the convolution is one matrix product: weights (F, C*KH*KW) @ columns."""
    xp = array_module(image)
    n, channels = image.shape[:2]
    (kh, kw), (oh, ow) = kernel, out_hw
    padded = _padded(image, padding)
    cols = xp.empty((channels, kh, kw, n, oh, ow), dtype=image.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = _offset_view(padded, i, j, stride, dilation, out_hw).transpose(1, 0, 2, 3)
    return cols.reshape(channels * kh * kw, n * oh * ow)


def col2im(columns, image, kernel, stride, padding, dilation, out_hw) -> None:
    """The transpose of im2col: every column entry is added back at the pixel it was read from."""
    xp = array_module(columns)
    n, channels, height, width = image.shape
    (kh, kw), (oh, ow) = kernel, out_hw
    cols = columns.reshape(channels, kh, kw, n, oh, ow)
    padded = xp.zeros((n, channels, height + 2 * padding[0], width + 2 * padding[1]), dtype=columns.dtype)
    for i in range(kh):
        for j in range(kw):
            _offset_view(padded, i, j, stride, dilation, out_hw)[...] += cols[:, i, j].transpose(1, 0, 2, 3)
    image[...] = padded[:, :, padding[0]:padding[0] + height, padding[1]:padding[1] + width]


def filters_to_images(product, bias, out, relu: bool) -> None:
    """The product's (F, N*OH*OW) order to the images' (N, F, OH, OW), plus the bias, then the ReLU."""
    xp = array_module(out)
    n, filters = out.shape[:2]
    images = product.reshape((filters, n) + out.shape[2:]).transpose(1, 0, 2, 3)
    if bias is None:
        out[...] = images
    else:
        xp.add(images, bias.reshape(1, -1, 1, 1), out=out)
    if relu:
        _relu_in_place(xp, out)


def bias_relu_rows(rows, bias, relu: bool) -> None:
    """rows (F, M) = rows + bias[:, None] (bias None: none), then the ReLU, in place."""
    if bias is not None:
        rows += bias[:, None]
    if relu:
        _relu_in_place(array_module(rows), rows)


def images_to_filters(grad):
    return array_module(grad).ascontiguousarray(grad.transpose(1, 0, 2, 3)).reshape(grad.shape[1], -1)


# ---------------------------------------------------------------- pooling


def _window_views(padded, kernel, stride, out_hw):
    """For each kernel offset (i, j), row-major: the (N, C, OH, OW) view of the inputs at that offset."""
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield _offset_view(padded, i, j, stride, (1, 1), out_hw)


def _crop(padded, padding, input_shape):
    return padded[:, :, padding[0]:padding[0] + input_shape[2], padding[1]:padding[1] + input_shape[3]]


def max_pool_forward(x, kernel, stride, padding, out_hw):
    """A running maximum over the window offsets (padding is -inf); `winner` records the offset that holds it,
    the first one on ties (the comparison is strict)."""
    xp = array_module(x)
    offsets = _window_views(_padded(x, padding, value=-xp.inf), kernel, stride, out_hw)
    out = next(offsets).copy()
    index_type = xp.uint8 if kernel[0] * kernel[1] <= 256 else xp.int32
    winner = xp.zeros(out.shape, dtype=index_type)
    for k, view in enumerate(offsets, start=1):  # elementwise over whole views: no window copies
        better = view > out
        xp.maximum(out, view, out=out)
        winner += better * (index_type(k) - winner)  # = where(better, k, winner); masked writes are slower
    return out, winner


def max_pool_backward(grad_out, winner, input_shape, kernel, stride, padding, out_hw):
    """Each window's gradient goes to the input that won it."""
    xp = array_module(grad_out)
    n, channels, height, width = input_shape
    grad = xp.zeros((n, channels, height + 2 * padding[0], width + 2 * padding[1]), dtype=grad_out.dtype)
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    for k, view in enumerate(_window_views(grad, kernel, stride, out_hw)):
        if disjoint:  # each input is in one window at most: write, no read-modify-write
            xp.multiply(grad_out, winner == k, out=view)
        else:
            view += grad_out * (winner == k)
    return xp.ascontiguousarray(_crop(grad, padding, input_shape))


def _window_counts(xp, input_shape, kernel, stride, padding, out_hw, count_include_pad, dtype):
    """How many values each window averages: the whole window, or (count_include_pad false) those inside."""
    if count_include_pad or padding == (0, 0):
        return dtype.type(kernel[0] * kernel[1])
    ones = _padded(xp.ones((1, 1) + tuple(input_shape[2:]), dtype=dtype), padding)
    return sum(view.copy() for view in _window_views(ones, kernel, stride, out_hw))


def avg_pool_forward(x, kernel, stride, padding, out_hw, count_include_pad: bool):
    xp = array_module(x)
    offsets = _window_views(_padded(x, padding), kernel, stride, out_hw)
    total = next(offsets).copy()
    for view in offsets:
        total += view
    total /= _window_counts(xp, x.shape, kernel, stride, padding, out_hw, count_include_pad, x.dtype)
    return total


def avg_pool_backward(grad_out, input_shape, kernel, stride, padding, out_hw, count_include_pad: bool):
    """Each window's gradient shared equally by the values it averaged."""
    xp = array_module(grad_out)
    n, channels, height, width = input_shape
    grad = xp.zeros((n, channels, height + 2 * padding[0], width + 2 * padding[1]), dtype=grad_out.dtype)
    share = grad_out / _window_counts(xp, input_shape, kernel, stride, padding, out_hw, count_include_pad,
                                      grad_out.dtype)
    for view in _window_views(grad, kernel, stride, out_hw):
        view += share
    return xp.ascontiguousarray(_crop(grad, padding, input_shape))


# ---------------------------------------------------------------- batch normalization over axis 1 of (N, C, ...)


def _channel_sum(a, b=None):
    """Per-channel sum of a (or of a * b) as an einsum contraction: much faster than sum(axis=(0, 2, 3))."""
    xp = array_module(a)
    letters = "nc" + "hwdxyz"[:a.ndim - 2]
    return xp.einsum(f"{letters}->c", a) if b is None else xp.einsum(f"{letters},{letters}->c", a, b)


def _per_channel(vector, like):
    return vector.reshape((1, -1) + (1,) * (like.ndim - 2))


def batch_norm_statistics(x, gamma, beta, running_mean, running_var, eps: float, momentum: float):
    """mean and biased variance per channel; out = x * scale + shift normalizes with them. The running statistics
    move toward the batch's (the variance unbiased), as torch does."""
    count = x.size // x.shape[1]
    mean = _channel_sum(x) / count
    centered = x - _per_channel(mean, x)
    var = _channel_sum(centered, centered) / count
    if running_mean is not None:
        running_mean *= 1 - momentum
        running_mean += momentum * mean
    if running_var is not None:
        running_var *= 1 - momentum
        running_var += momentum * var * (count / (count - 1))
    return (mean,) + batch_norm_eval_scale(mean, var, gamma, beta, eps)


def batch_norm_eval_scale(mean, var, gamma, beta, eps: float):
    inv_std = 1 / array_module(var).sqrt(var + eps)
    scale = inv_std if gamma is None else gamma * inv_std
    shift = -mean * scale if beta is None else beta - mean * scale
    return inv_std, scale, shift


def batch_norm_apply(x, scale, shift, relu: bool):
    out = x * _per_channel(scale, x)
    out += _per_channel(shift, x)
    if relu:
        _relu_in_place(array_module(out), out)
    return out


def batch_norm_backward_statistics(grad, x, mean, scale, inv_std, training: bool):
    """With out = gamma (x - mean) inv_std + beta: beta's gradient is sum(g), gamma's sum(g (x - mean)) inv_std.
    In training mean and inv_std depend on x too, which adds to the input gradient
    (x - mean) * coef_centered + coef_const (batch_norm_backward)."""
    count = x.size // x.shape[1]
    sum_g = _channel_sum(grad)
    sum_g_centered = _channel_sum(grad, x - _per_channel(mean, x))
    if training:
        coef_centered = -scale * inv_std * inv_std * sum_g_centered / count
        coef_const = -scale * sum_g / count
    else:
        coef_centered = coef_const = array_module(grad).zeros_like(sum_g)
    return sum_g, sum_g_centered * inv_std, coef_centered, coef_const


def batch_norm_backward(grad, x, mean, scale, coef_centered, coef_const):
    grad_in = grad * _per_channel(scale, grad)
    grad_in += (x - _per_channel(mean, x)) * _per_channel(coef_centered, x)
    grad_in += _per_channel(coef_const, x)
    return grad_in


# ---------------------------------------------------------------- layer normalization over the rows of (R, D)


def layer_norm_forward(x, gamma, beta, eps: float):
    """Each row normalized by its own mean and biased variance: xhat = (x - mean) / sqrt(var + eps), then
    out = xhat * gamma + beta."""
    xp = array_module(x)
    mean = x.mean(axis=1)
    out = x - mean[:, None]
    var = xp.einsum("rd,rd->r", out, out) / x.dtype.type(x.shape[1])
    inv_std = 1 / xp.sqrt(var + x.dtype.type(eps))
    out *= inv_std[:, None]
    if gamma is not None:
        out *= gamma
    if beta is not None:
        out += beta
    return out, mean, inv_std


def layer_norm_backward(grad, x, mean, inv_std, gamma, affine: bool):
    """out = xhat gamma + beta with xhat = (x - mean) inv_std, and mean, inv_std functions of the row: through
    them, d xhat / dx takes from gh = grad * gamma its row mean and its part along xhat, so
    grad_x = inv_std (gh - mean(gh) - xhat mean(gh xhat)). gamma's gradient is sum(grad xhat) over the rows,
    beta's sum(grad)."""
    xp = array_module(x)
    width = x.dtype.type(x.shape[1])
    xhat = (x - mean[:, None]) * inv_std[:, None]
    gh = grad if gamma is None else grad * gamma
    along = xp.einsum("rd,rd->r", gh, xhat) / width
    grad_x = gh - (gh.sum(axis=1) / width)[:, None]
    grad_x -= xhat * along[:, None]
    grad_x *= inv_std[:, None]
    if not affine:
        return grad_x, None, None
    return grad_x, xp.einsum("rd,rd->d", grad, xhat), grad.sum(axis=0)


# ---------------------------------------------------------------- recurrent steps, in place: a step is many small
# arrays, so allocations and passes are the cost. Sigmoid as (1 + tanh(a / 2)) / 2: never overflows.


def _sigmoid_in_place(xp, a) -> None:
    a *= 0.5
    xp.tanh(a, out=a)
    a += 1
    a *= 0.5


def gru_forward(step_in, gh, bias, h, h_new, rz, n) -> None:
    """r, z = sigmoid(x parts + gh parts); n = tanh(x_n + r gh_n); h_new = (1 - z) n + z h = n + z (h - n)."""
    xp = array_module(h)
    hidden = h.shape[1]
    if bias is not None:
        gh += bias
    xp.add(step_in[:, :2 * hidden], gh[:, :2 * hidden], out=rz)
    _sigmoid_in_place(xp, rz)
    r, z = rz[:, :hidden], rz[:, hidden:]
    xp.multiply(r, gh[:, 2 * hidden:], out=n)
    n += step_in[:, 2 * hidden:]
    xp.tanh(n, out=n)
    xp.subtract(h, n, out=h_new)
    h_new *= z
    h_new += n


def gru_backward(grad, carried, direct, has_next: bool, h, rz, n, gh, d_in, d_gh) -> None:
    """dh = grad (+ carried + direct from step t+1); d_n = dh (1 - z) (1 - n^2), d_r = d_n gh_n r (1 - r),
    d_z = dh (h - n) z (1 - z); the input part gets [d_r, d_z, d_n], the hidden part [d_r, d_z, d_n r]
    (gh_n enters as r gh_n), and `direct` becomes dh z (this step's direct part of dh_{t-1})."""
    xp = array_module(h)
    hidden = h.shape[1]
    dh = grad + carried + direct if has_next else grad
    r, z = rz[:, :hidden], rz[:, hidden:]
    d_r, d_z, d_n = d_gh[:, :hidden], d_gh[:, hidden:2 * hidden], d_gh[:, 2 * hidden:]
    xp.multiply(n, n, out=d_n)
    xp.subtract(1, d_n, out=d_n)
    d_n *= 1 - z
    d_n *= dh
    xp.subtract(1, r, out=d_r)
    d_r *= r
    d_r *= gh[:, 2 * hidden:]
    d_r *= d_n
    xp.subtract(1, z, out=d_z)
    d_z *= z
    d_z *= h - n
    d_z *= dh
    d_in[...] = d_gh
    d_gh[:, 2 * hidden:] *= r
    xp.multiply(dh, z, out=direct)


def lstm_forward(step_in, gates, bias, c_prev, h_new, c_new) -> None:
    """a = x W_ih^T + h W_hh^T + b; i, f, o = sigmoid, g = tanh of its four parts (kept in `gates`);
    c_new = f c_prev + i g; h_new = o tanh(c_new)."""
    xp = array_module(c_prev)
    hidden = c_prev.shape[1]
    gates += step_in
    if bias is not None:
        gates += bias
    _sigmoid_in_place(xp, gates[:, :2 * hidden])  # i and f together
    _sigmoid_in_place(xp, gates[:, 3 * hidden:])  # o
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    xp.tanh(g, out=g)
    xp.multiply(f, c_prev, out=c_new)
    c_new += i * g
    xp.tanh(c_new, out=h_new)
    h_new *= o


def lstm_backward(grad_h, grad_c, carried, dc_next, has_next: bool, acts, c_prev, c_new, d_in, d_gates) -> None:
    """dh = grad_h (+ carried); dc = grad_c (+ dc_next) + dh o (1 - tanh(c)^2); the gate pre-activation gradients
    [dc g i (1 - i), dc c_prev f (1 - f), dc i (1 - g^2), dh tanh(c) o (1 - o)]; dc_next becomes dc f."""
    xp = array_module(c_prev)
    hidden = c_prev.shape[1]
    i, f, g, o = (acts[:, k * hidden:(k + 1) * hidden] for k in range(4))
    d_i, d_f, d_g, d_o = (d_gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dh = grad_h + carried if has_next else grad_h
    tc = xp.tanh(c_new)
    xp.multiply(dh, tc, out=d_o)  # d_o = dh tanh(c) o (1 - o)
    d_o *= o
    d_o *= 1 - o
    xp.multiply(tc, tc, out=tc)  # dc = grad_c (+ dc_next) + dh o (1 - tanh(c)^2)
    xp.subtract(1, tc, out=tc)
    tc *= o
    tc *= dh
    dc = tc
    dc += grad_c
    if has_next:
        dc += dc_next
    xp.multiply(dc, g, out=d_i)  # d_i = dc g i (1 - i)
    d_i *= i
    d_i *= 1 - i
    xp.multiply(dc, c_prev, out=d_f)  # d_f = dc c_prev f (1 - f)
    d_f *= f
    d_f *= 1 - f
    xp.multiply(g, g, out=d_g)  # d_g = dc i (1 - g^2)
    xp.subtract(1, d_g, out=d_g)
    d_g *= i
    d_g *= dc
    d_in[...] = d_gates
    xp.multiply(dc, f, out=dc_next)


# ---------------------------------------------------------------- optimizers, in place over flat buffers
# (torch.optim's formulas; decay is a number or one value per element, 0 where a parameter is not decayed)


def _no_decay(decay) -> bool:
    return numpy.ndim(decay) == 0 and float(decay) == 0.0


def sgd_step(param, grad, velocity, decay, lr: float, momentum: float, nesterov: bool) -> None:
    """g = grad + decay * param; with momentum v = momentum v + g and the step is v (Nesterov: g + momentum v)."""
    g = grad if _no_decay(decay) else grad + decay * param
    if velocity is not None:
        velocity *= momentum
        velocity += g
        g = g + momentum * velocity if nesterov else velocity
    param -= lr * g


def adam_step(param, grad, m, v, decay, lr, beta1, beta2, eps, step: int, decoupled: bool) -> None:
    """m, v: moving averages of g and g^2; param -= lr m_hat / (sqrt(v_hat) + eps) with the bias-corrected
    m_hat = m / (1 - beta1^step), v_hat = v / (1 - beta2^step). Weight decay is added to g (Adam, L2) or
    shrinks the parameter directly (AdamW, decoupled)."""
    xp = array_module(param)
    g = grad
    if decoupled and not _no_decay(decay):
        param *= 1 - lr * decay
    elif not _no_decay(decay):
        g = grad + decay * param
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    step_size = lr / (1 - beta1 ** step)
    param -= step_size * m / (xp.sqrt(v) / math.sqrt(1 - beta2 ** step) + eps)
