"""A NumPy twin of dltrain/backend/cuda.py: the same functions, written as plain array code.

Two uses: on the CPU, tests hand it out in place of the CUDA kernels, so the code that calls the
kernels (flat optimizer buffers, the conv, loss, dropout and relu branches) runs without a GPU
(also on tests/fake_cupy.py's stand-in GPU arrays, hence only array functions, no host constants);
on a GPU, the CUDA kernels are checked against it.
"""

import numpy as np

MAX_POOL_WINDOW = 255
RECURRENT_STEPS = True  # as backend/cuda.py: its step functions are checked through the ops too
GATHER_GRADIENTS = True  # as backend/cuda.py


def supports(dtype) -> bool:
    return np.dtype(dtype) in (np.float32, np.float64)


def relu_backward(grad, out):
    return np.where(out > 0, grad, 0).astype(grad.dtype)


def dropout(x, uniform, p):
    mask = np.where(uniform >= p, x.dtype.type(1.0 / (1.0 - p)), x.dtype.type(0))
    return x * mask, mask


def log_softmax_nll(logits, labels):
    peak = logits.max(axis=1, keepdims=True)
    log_sum = peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
    log_p = logits - log_sum
    return log_p, -np.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]


def add_correct(logits, labels, counter):
    counter += (np.argmax(logits, axis=1) == labels).sum()


def cross_entropy_backward(log_p, labels, upstream):
    grad = np.exp(log_p)
    column = labels[:, None]
    np.put_along_axis(grad, column, np.take_along_axis(grad, column, axis=1) - 1, axis=1)
    return (grad * (upstream / len(labels))).astype(log_p.dtype)


def _window_view(padded, kernel, stride, dilation, out_hw, i, j):
    rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (out_hw[0] - 1) + 1, stride[0])
    cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (out_hw[1] - 1) + 1, stride[1])
    return padded[:, :, rows, cols]


def im2col(image, kernel, stride, padding, dilation, out_hw):
    n, channels = image.shape[:2]
    padded = np.pad(image, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    rows = [_window_view(padded, kernel, stride, dilation, out_hw, i, j)  # each (N, C, OH, OW)
            for i in range(kernel[0]) for j in range(kernel[1])]
    stacked = np.stack(rows, axis=2)  # (N, C, KH*KW, OH, OW)
    return np.ascontiguousarray(stacked.transpose(1, 2, 0, 3, 4)).reshape(
        channels * kernel[0] * kernel[1], n * out_hw[0] * out_hw[1])


def col2im(columns, image, kernel, stride, padding, dilation, out_hw):
    n, channels, height, width = image.shape
    (kh, kw), (oh, ow) = kernel, out_hw
    cols = columns.reshape(channels, kh, kw, n, oh, ow)
    padded = np.zeros_like(columns, shape=(n, channels, height + 2 * padding[0], width + 2 * padding[1]))
    for i in range(kh):
        for j in range(kw):
            _window_view(padded, kernel, stride, dilation, out_hw, i, j)[...] += cols[:, i, j].transpose(1, 0, 2, 3)
    image[...] = padded[:, :, padding[0]:padding[0] + height, padding[1]:padding[1] + width]


def filters_to_images(product, bias, out):
    n, filters = out.shape[:2]
    images = product.reshape((filters, n) + out.shape[2:]).transpose(1, 0, 2, 3)
    out[...] = images if bias is None else images + bias.reshape(1, -1, 1, 1)


def images_to_filters(grad):
    return np.ascontiguousarray(grad.transpose(1, 0, 2, 3)).reshape(grad.shape[1], -1)


def sgd_step(param, grad, velocity, decay, lr, momentum, nesterov):
    t = param.dtype.type
    g = grad + (t(decay) if np.ndim(decay) == 0 else decay) * param
    if velocity is None:
        param -= t(lr) * g
        return
    velocity *= t(momentum)
    velocity += g
    param -= t(lr) * (g + t(momentum) * velocity if nesterov else velocity)


def adam_step(param, grad, m, v, decay, lr, beta1, beta2, eps, step, decoupled):
    t = param.dtype.type
    decay = t(decay) if np.ndim(decay) == 0 else decay
    g = grad
    if decoupled:
        param *= 1 - t(lr) * decay
    else:
        g = grad + decay * param
    m *= t(beta1)
    m += (1 - t(beta1)) * g
    v *= t(beta2)
    v += (1 - t(beta2)) * g * g
    bias1 = t(1.0 - beta1 ** step)
    bias2_sqrt = t((1.0 - beta2 ** step) ** 0.5)
    param -= (t(lr) / bias1) * m / (np.sqrt(v) / bias2_sqrt + t(eps))


def max_pool_forward(x, kernel, stride, padding, out_hw):
    (kh, kw), (oh, ow) = kernel, out_hw
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=-np.inf)
    out = winner = None
    for i in range(kh):
        for j in range(kw):
            view = padded[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]
            if out is None:
                out, winner = view.copy(), np.zeros_like(view, dtype=np.uint8)
                continue
            better = view > out
            out = np.where(better, view, out)
            winner = np.where(better, np.uint8(i * kw + j), winner).astype(np.uint8)
    return out, winner


def max_pool_backward(grad_out, winner, input_shape, kernel, stride, padding, out_hw):
    (kh, kw), (oh, ow) = kernel, out_hw
    n, channels, height, width = input_shape
    padded = np.zeros_like(grad_out, shape=(n, channels, height + 2 * padding[0], width + 2 * padding[1]))
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + stride[0] * (oh - 1) + 1, stride[0])
            cols = slice(j, j + stride[1] * (ow - 1) + 1, stride[1])
            padded[:, :, rows, cols] += np.where(winner == i * kw + j, grad_out, 0).astype(grad_out.dtype)
    return padded[:, :, padding[0]:padding[0] + height, padding[1]:padding[1] + width].copy()


def _channel_axes(a):
    return (0,) + tuple(range(2, a.ndim))


def _per_channel(vector, like):
    return vector.reshape((1, -1) + (1,) * (like.ndim - 2))


def batch_norm_statistics(x, gamma, beta, running_mean, running_var, eps, momentum):
    t = x.dtype.type
    count = x.size // x.shape[1]
    mean = x.mean(axis=_channel_axes(x))
    var = ((x - _per_channel(mean, x)) ** 2).mean(axis=_channel_axes(x))
    inv_std = 1 / np.sqrt(var + t(eps))
    scale = inv_std if gamma is None else gamma * inv_std
    shift = (0 if beta is None else beta) - mean * scale
    if running_mean is not None:
        running_mean[...] = (1 - t(momentum)) * running_mean + t(momentum) * mean
    if running_var is not None:
        running_var[...] = (1 - t(momentum)) * running_var + t(momentum) * var * t(count / (count - 1))
    return mean, inv_std, scale, shift


def batch_norm_eval_scale(mean, var, gamma, beta, eps):
    inv_std = 1 / np.sqrt(var + var.dtype.type(eps))
    scale = inv_std if gamma is None else gamma * inv_std
    return inv_std, scale, (0 if beta is None else beta) - mean * scale


def batch_norm_apply(x, scale, shift):
    return x * _per_channel(scale, x) + _per_channel(shift, x)


def batch_norm_backward_statistics(grad, x, mean, scale, inv_std, training):
    count = x.size // x.shape[1]
    sum_g = grad.sum(axis=_channel_axes(x))
    sum_gc = (grad * (x - _per_channel(mean, x))).sum(axis=_channel_axes(x))
    zeros = np.zeros_like(sum_g)
    coef_centered = -scale * inv_std * inv_std * sum_gc / count if training else zeros
    coef_const = -scale * sum_g / count if training else zeros
    return sum_g, sum_gc * inv_std, coef_centered, coef_const


def batch_norm_backward(grad, x, mean, scale, coef_centered, coef_const):
    return (grad * _per_channel(scale, x) + (x - _per_channel(mean, x)) * _per_channel(coef_centered, x)
            + _per_channel(coef_const, x))


def _sigmoid(a):
    return 0.5 * (1 + np.tanh(0.5 * a))


def gru_forward(step_in, gh, bias, h, h_new, rz, n):
    hidden = h.shape[1]
    if bias is not None:
        gh += bias
    r = _sigmoid(step_in[:, :hidden] + gh[:, :hidden])
    z = _sigmoid(step_in[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
    n[...] = np.tanh(step_in[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
    rz[...] = np.concatenate([r, z], axis=1)
    h_new[...] = n + z * (h - n)


def gru_backward(grad, carried, direct, has_next, h, rz, n, gh, d_in, d_gh):
    hidden = h.shape[1]
    dh = grad + carried + direct if has_next else grad
    r, z = rz[:, :hidden], rz[:, hidden:]
    d_n = dh * (1 - z) * (1 - n * n)
    d_r = d_n * gh[:, 2 * hidden:] * r * (1 - r)
    d_z = dh * (h - n) * z * (1 - z)
    d_in[...] = np.concatenate([d_r, d_z, d_n], axis=1)
    d_gh[...] = np.concatenate([d_r, d_z, d_n * r], axis=1)
    direct[...] = dh * z


def lstm_forward(step_in, gates, bias, c_prev, h_new, c_new):
    hidden = c_prev.shape[1]
    a = step_in + gates + (0 if bias is None else bias)
    i, f, o = (_sigmoid(a[:, k * hidden:(k + 1) * hidden]) for k in (0, 1, 3))
    g = np.tanh(a[:, 2 * hidden:3 * hidden])
    gates[...] = np.concatenate([i, f, g, o], axis=1)
    c_new[...] = f * c_prev + i * g
    h_new[...] = o * np.tanh(c_new)


def lstm_backward(grad_h, grad_c, carried, dc_next, has_next, acts, c_prev, c_new, d_in, d_gates):
    hidden = c_prev.shape[1]
    i, f, g, o = (acts[:, k * hidden:(k + 1) * hidden] for k in range(4))
    tc = np.tanh(c_new)
    dh = grad_h + carried if has_next else grad_h
    dc = (grad_c + dc_next if has_next else grad_c) + dh * o * (1 - tc * tc)
    d = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                        dh * tc * o * (1 - o)], axis=1)
    d_in[...] = d
    d_gates[...] = d
    dc_next[...] = dc * f
