"""The kernel interface: what `backend.kernels_for(array)` hands out to the ops, written down once.

Three modules implement it: backend/reference.py as plain array code (NumPy or CuPy: the readable reference
and the tests' oracle), backend/cpu.py compiled with Numba for NumPy arrays, and backend/cuda.py as CUDA
kernels for GPU arrays. The compiled sets take a function from the reference where it measured no slower (the
GPU's average pooling). DLTRAIN_FUSED_KERNELS=0 selects the reference everywhere.
Arrays are float32 or float64 (`supports`), all of one dtype; labels are int64; "writes" means the function
fills an array it was given, "returns" that it allocates its result. Inputs are never modified unless a
contract says so.

Geometry arguments are pairs: kernel (KH, KW), stride, padding and dilation (rows, columns), out_hw
(OH, OW) with OH = (H + 2 * padding - dilation * (KH - 1) - 1) // stride + 1.
"""

from __future__ import annotations

from typing import Protocol


class Kernels(Protocol):
    MAX_POOL_WINDOW: int  # largest KH * KW that max_pool_forward takes (the winner is one byte)
    GATHER_GRADIENTS: bool  # optimizers: gather all gradients into one buffer (True) or update parameter by parameter
    # Convolutions keep their activations channel-major (True: the (F, N*OH*OW) product is the activation, an
    # (N, F, OH, OW) view of (F, N, OH, OW) memory, and bias_relu_rows finishes it in place) or NCHW (False:
    # filters_to_images). Either way every function below that takes (N, C, ...) arrays takes them in any memory order
    # and returns its result in its input's where it can.
    CHANNEL_MAJOR: bool

    def supports(self, dtype) -> bool:
        """Whether the kernels take arrays of `dtype`."""

    # ------------------------------------------------------------ elementwise
    def relu_backward(self, grad, out):
        """Returns grad * (out > 0): the ReLU gradient read off the forward output (no mask kept)."""

    def add_bias_relu(self, x, bias) -> None:
        """Overwrites x (C-contiguous, (..., F)) with max(x + bias, 0), bias (F,) or None; NaN stays NaN (as
        np.maximum): a linear layer's bias and a following ReLU in one pass."""

    def dropout(self, x, uniform, p: float):
        """Returns (x * mask, mask), mask = (uniform >= p) / (1 - p); uniform holds [0, 1) draws of x's shape."""

    def gelu_forward(self, x):
        """Returns x * Phi(x), Phi the standard normal CDF (erf, exact to the dtype's rounding)."""

    def gelu_backward(self, grad, x):
        """Returns grad * (Phi(x) + x * phi(x)), phi the standard normal density."""

    # ------------------------------------------------------------ data
    def lookup_rows(self, table, codes, index):
        """Returns table[codes[index]] in table's dtype: rows `index` (a slice, or integers in [0, N)) of 8-bit codes
        (N, ...) uint8, each byte replaced by its entry of table (256,): a batch of 8-bit images normalized in one
        pass (data/splits.py's NormalizedRows)."""

    # ------------------------------------------------------------ softmax cross-entropy, (N, classes) logits
    def log_softmax_nll(self, logits, labels):
        """Returns (log_p, row_loss): the row-wise log-softmax (N, classes) and -log_p[row, label] (N,)."""

    def cross_entropy_backward(self, log_p, labels, upstream):
        """Returns (exp(log_p) - onehot(labels)) * upstream / N: the gradient of the mean loss; upstream 0-d."""

    def add_correct(self, logits, labels, counter) -> None:
        """counter (0-d int64) += rows whose argmax (NumPy's: the first maximum, a NaN wins) is the label."""

    # ------------------------------------------------------------ convolution as one GEMM each way
    def im2col(self, image, kernel, stride, padding, dilation, out_hw):
        """Returns the column matrix (C*KH*KW, N*OH*OW) of an (N, C, H, W) image: row (c, i, j), column
        (n, oh, ow) holds pixel (oh * stride + i * dilation - padding, ...) or 0 in the padding."""

    def col2im(self, columns, image, kernel, stride, padding, dilation, out_hw) -> None:
        """Overwrites `image` (N, C, H, W, the columns' dtype; C-contiguous, or with CHANNEL_MAJOR any array whose
        (H, W) planes are contiguous and apart) with the sum of each entry of a (C*KH*KW, N*OH*OW) column matrix at
        the pixel im2col read it from: the input gradient."""

    def filters_to_images(self, product, bias, out, relu: bool) -> None:
        """Writes out (N, F, OH, OW) = the (F, N*OH*OW) GEMM product in image order, plus bias (F,) or None, then
        max(., 0) when relu (a following ReLU layer fused in)."""

    def bias_relu_rows(self, rows, bias, relu: bool) -> None:
        """Overwrites rows (F, M), C-contiguous, with rows + bias[:, None] (bias (F,) or None), then max(., 0) when
        relu: a channel-major convolution's bias and ReLU on its product in place (CHANNEL_MAJOR)."""

    def images_to_filters(self, grad):
        """Returns (N, F, OH, OW) as (F, N*OH*OW): the layout the gradient GEMMs take (may be a view of grad)."""

    # ------------------------------------------------------------ pooling, (N, C, H, W)
    def max_pool_forward(self, x, kernel, stride, padding, out_hw):
        """Returns (out, winner): each window's maximum (padding is -inf) and the offset i * KW + j (uint8)
        holding it, the first in row-major order on ties."""

    def max_pool_backward(self, grad_out, winner, input_shape, kernel, stride, padding, out_hw):
        """Returns the input gradient: each window's gradient added at the input that won it."""

    def avg_pool_forward(self, x, kernel, stride, padding, out_hw, count_include_pad: bool):
        """Returns each window's mean: over the whole window with padding as zeros (count_include_pad), else over
        its values inside the image."""

    def avg_pool_backward(self, grad_out, input_shape, kernel, stride, padding, out_hw, count_include_pad: bool):
        """Returns the input gradient: each window's gradient shared equally by the values it averaged."""

    # ------------------------------------------------------------ batch normalization over axis 1 of (N, C, ...)
    def batch_norm_statistics(self, x, gamma, beta, running_mean, running_var, eps: float, momentum: float):
        """Returns (mean, inv_std, scale, shift) per channel from the batch (biased variance), with
        scale = gamma * inv_std and shift = beta - mean * scale (gamma, beta may be None); updates the
        running statistics given in place: running = (1 - momentum) running + momentum batch (variance unbiased)."""

    def batch_norm_eval_scale(self, mean, var, gamma, beta, eps: float):
        """Returns (inv_std, scale, shift) per channel from given (running) statistics."""

    def batch_norm_apply(self, x, scale, shift, relu: bool):
        """Returns x * scale[c] + shift[c], then max(., 0) when relu."""

    def batch_norm_backward_statistics(self, grad, x, mean, scale, inv_std, training: bool):
        """Returns per channel (sum_g, gamma's gradient sum(g (x - mean)) inv_std, coef_centered, coef_const);
        in training coef_centered = -scale inv_std^2 sum(g (x - mean)) / count and coef_const = -scale sum_g /
        count (the batch statistics depend on x), else both 0."""

    def batch_norm_backward(self, grad, x, mean, scale, coef_centered, coef_const):
        """Returns the input gradient grad * scale + (x - mean) * coef_centered + coef_const, per channel."""

    # ------------------------------------------------------------ layer normalization over the rows of (R, D)
    def layer_norm_forward(self, x, gamma, beta, eps: float):
        """Returns (out, mean, inv_std) for x (R, D), any layout: each row's mean and 1 / sqrt(var + eps) (R,), var
        the biased variance, and out = (x - mean) * inv_std * gamma + beta (R, D), gamma and beta (D,)
        or None (1 and 0). All in x's dtype."""

    def layer_norm_backward(self, grad, x, mean, inv_std, gamma, affine: bool):
        """Returns (grad_x, grad_gamma, grad_beta) for grad and x (R, D), mean and inv_std from layer_norm_forward,
        gamma (D,) or None: with xhat = (x - mean) inv_std and gh = grad * gamma, grad_x = inv_std (gh - mean(gh) -
        xhat mean(gh xhat)), the means over each row (R, D); grad_gamma = sum(grad xhat) and grad_beta = sum(grad)
        over the rows (D,) when affine, else None for both."""

    # ------------------------------------------------------------ recurrent steps, (N, H) states
    def gru_forward(self, step_in, gh, bias, h, h_new, rz, n) -> None:
        """One GRU step's pointwise part (torch's gate order r, z, n): adds bias (3H,) or None into gh
        (h W_hh^T, N x 3H, kept for the backward); writes rz = [r, z], n and h_new = (1 - z) n + z h.
        step_in (N, 3H) may be a time slice of the time-major projections (T, N, 3H)."""

    def gru_backward(self, grad, carried, direct, has_next: bool, h, rz, n, gh, d_in, d_gh) -> None:
        """One step of backpropagation through time: dh = grad (+ carried + direct when has_next); writes
        d_in = [d_r, d_z, d_n], d_gh = [d_r, d_z, d_n r] and overwrites `direct` with dh z. grad and d_in may
        be time slices."""

    def lstm_forward(self, step_in, gates, bias, c_prev, h_new, c_new) -> None:
        """One LSTM step's pointwise part: a = step_in + gates + bias; overwrites gates (h W_hh^T, N x 4H) with
        the activations i, f, g, o; writes c_new = f c_prev + i g and h_new = o tanh(c_new)."""

    def lstm_backward(self, grad_h, grad_c, carried, dc_next, has_next: bool, acts, c_prev, c_new, d_in,
                      d_gates) -> None:
        """One step of backpropagation through time: dh = grad_h (+ carried), dc = grad_c (+ dc_next) +
        dh o (1 - tanh(c)^2); writes the gate pre-activation gradients into d_in and d_gates (d_in may be d_gates
        itself) and overwrites dc_next with dc f. grad_h, grad_c and d_in may be time slices."""

    # ------------------------------------------------------------ optimizers, in place over flat buffers
    def sgd_step(self, param, grad, velocity, decay, lr: float, momentum: float, nesterov: bool) -> None:
        """param -= lr * update (torch.optim.SGD); velocity None without momentum; decay per element or a number."""

    def adam_step(self, param, grad, m, v, decay, lr, beta1, beta2, eps, step: int, decoupled: bool) -> None:
        """One Adam (decoupled: AdamW) update of param, m and v in place, bias-corrected for `step`."""
