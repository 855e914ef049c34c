"""Fused CUDA kernels: what NumPy-style code cannot do in one pass on the GPU.

Every CuPy call is one kernel launch that reads and writes whole arrays, and a small model's step is
bound by launches, not arithmetic. So the chains that run every step are single kernels here: the ReLU
gradient, the dropout mask and its product, softmax cross-entropy (loss and gradient) and the count of
correct predictions, im2col and col2im (convolution as one GEMM each way), max pooling, batch
normalization (two kernels each way: per-channel statistics, one pass over the images), layer normalization
(one block per row each way, and the scale's and shift's gradients by chunks of rows), a GRU or LSTM
step's pointwise part (forward and backward), exact GELU, and the SGD / Adam updates over one flat parameter
buffer. The ops in dltrain/functional use them through `backend.kernels_for(array)` (the interface of
backend/kernels.py, which backend/cpu.py implements for NumPy arrays and backend/reference.py as plain array code).

Imported only after CuPy has found a GPU; kernels compile on first use and CuPy caches them on disk.
"""

from __future__ import annotations

import cupy

# ---------------------------------------------------------------- elementwise

_relu_backward = cupy.ElementwiseKernel(
    "T grad, T out", "T grad_in",
    "grad_in = out > (T)0 ? grad : (T)0",
    "dltrain_relu_backward")

# GELU, exact: x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2; its derivative Phi(x) + x phi(x).
_gelu_forward = cupy.ElementwiseKernel(
    "T x", "T out",
    "out = x * (T)0.5 * ((T)1 + erf(x * (T)0.70710678118654752))",
    "dltrain_gelu_forward")

_gelu_backward = cupy.ElementwiseKernel(
    "T grad, T x", "T grad_in",
    "grad_in = grad * ((T)0.5 * ((T)1 + erf(x * (T)0.70710678118654752))"
    " + x * exp((T)-0.5 * x * x) * (T)0.39894228040143268)",
    "dltrain_gelu_backward")

_dropout = cupy.ElementwiseKernel(
    "T x, T uniform, T p, T scale", "T y, T mask",
    "mask = uniform >= p ? scale : (T)0; y = x * mask",
    "dltrain_dropout")

# (softmax - onehot(label)) * upstream / n, from the saved log-probabilities; one pass over (n, classes).
_cross_entropy_backward = cupy.ElementwiseKernel(
    "T log_p, raw int64 labels, raw T upstream, int64 classes, T inv_n", "T grad",
    """
    const long long row = i / classes;
    const T hit = labels[row] == i % classes ? (T)1 : (T)0;
    grad = (exp(log_p) - hit) * upstream[0] * inv_n;
    """,
    "dltrain_cross_entropy_backward")

_sgd = cupy.ElementwiseKernel(
    "T grad, T decay, T lr", "T param",
    "param -= lr * (grad + decay * param)",
    "dltrain_sgd")

_sgd_momentum = cupy.ElementwiseKernel(
    "T grad, T decay, T lr, T momentum, int32 nesterov", "T param, T velocity",
    """
    const T g = grad + decay * param;
    const T v = momentum * velocity + g;
    velocity = v;
    param -= lr * (nesterov ? g + momentum * v : v);
    """,
    "dltrain_sgd_momentum")

# torch.optim.Adam / AdamW; bias1 = 1 - beta1^t, bias2_sqrt = sqrt(1 - beta2^t).
_adam = cupy.ElementwiseKernel(
    "T grad, T decay, T lr, T beta1, T beta2, T eps, T bias1, T bias2_sqrt, int32 decoupled",
    "T param, T m, T v",
    """
    T g = grad;
    if (decoupled) { param *= (T)1 - lr * decay; } else { g += decay * param; }
    const T m_new = beta1 * m + ((T)1 - beta1) * g;
    const T v_new = beta2 * v + ((T)1 - beta2) * g * g;
    m = m_new;
    v = v_new;
    param -= (lr / bias1) * m_new / (sqrt(v_new) / bias2_sqrt + eps);
    """,
    "dltrain_adam")

# The convolution GEMM's (F, N*P) product into (N, F, P) order, with the bias.
_filters_to_images = cupy.ElementwiseKernel(
    "raw T product, raw T bias, int64 samples, int64 filters, int64 pixels, int32 has_bias, int32 relu", "T out",
    """
    const long long p = i % pixels;
    const long long f = (i / pixels) % filters;
    const long long n = i / (pixels * filters);
    const T v = product[(f * samples + n) * pixels + p] + (has_bias ? bias[f] : (T)0);
    out = relu && v < (T)0 ? (T)0 : v;  // NaN stays NaN
    """,
    "dltrain_filters_to_images")

# Batch normalization's two passes over the images (the per-channel statistics are raw kernels below):
# out = x * scale[c] + shift[c], and the input gradient
# grad * scale[c] + (x - mean[c]) * coef_centered[c] + coef_const[c].
_batch_norm_apply = cupy.ElementwiseKernel(
    "T x, raw T scale, raw T shift, int64 plane, int64 channels, int32 relu", "T out",
    "const long long c = (i / plane) % channels; const T v = x * scale[c] + shift[c]; "
    "out = relu && v < (T)0 ? (T)0 : v",
    "dltrain_batch_norm_apply")

# A linear layer's bias and ReLU, in place over (rows, features).
_add_bias_relu = cupy.ElementwiseKernel(
    "raw T bias, int64 features, int32 has_bias", "T x",
    "const T v = x + (has_bias ? bias[i % features] : (T)0); x = v < (T)0 ? (T)0 : v",
    "dltrain_add_bias_relu")

_batch_norm_backward = cupy.ElementwiseKernel(
    "T grad, T x, raw T mean, raw T scale, raw T coef_centered, raw T coef_const, int64 plane, int64 channels",
    "T grad_in",
    "const long long c = (i / plane) % channels; "
    "grad_in = grad * scale[c] + (x - mean[c]) * coef_centered[c] + coef_const[c]",
    "dltrain_batch_norm_backward")

# In evaluation: scale and shift from the running statistics.
_batch_norm_eval_scale = cupy.ElementwiseKernel(
    "T mean, T var, T gamma, T beta, T eps", "T inv_std, T scale, T shift",
    "inv_std = (T)1 / sqrt(var + eps); scale = gamma * inv_std; shift = beta - mean * scale",
    "dltrain_batch_norm_eval_scale")

# ---------------------------------------------------------------- row- and image-shaped kernels

_SOURCE = r"""
// One warp per row: max, sum of exponentials and log-sum-exp by warp shuffles; writes the
// log-probabilities (saved for the gradient) and the row's loss -log p[label].
template <typename T>
__global__ void log_softmax_nll(const T* logits, const long long* labels, T* log_p, T* row_loss,
                                int rows, int classes) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T* x = logits + (long long)row * classes;
    T* out = log_p + (long long)row * classes;
    T peak = x[0];
    for (int c = lane; c < classes; c += 32) peak = max(peak, x[c]);
    for (int offset = 16; offset > 0; offset /= 2) peak = max(peak, __shfl_xor_sync(0xffffffff, peak, offset));
    T total = 0;
    for (int c = lane; c < classes; c += 32) total += exp(x[c] - peak);
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffff, total, offset);
    const T log_sum = peak + log(total);
    for (int c = lane; c < classes; c += 32) out[c] = x[c] - log_sum;
    if (lane == 0) row_loss[row] = log_sum - x[labels[row]];
}

// Whether a is above b in NumPy's argmax order: the larger value, NaN above everything, the first index on ties.
template <typename T>
__device__ __forceinline__ bool ranks_above(T a, int ia, T b, int ib) {
    const bool a_nan = isnan(a), b_nan = isnan(b);
    if (a_nan || b_nan) return a_nan && (!b_nan || ia < ib);
    return a > b || (a == b && ia < ib);
}

// Adds to *counter the rows whose argmax is the label: one warp per row, the argmax by warp shuffles.
template <typename T>
__global__ void add_correct(const T* logits, const long long* labels, unsigned long long* counter, int rows,
                            int classes) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp
    const T* x = logits + (long long)row * classes;
    T best = 0;
    int best_index = -1;
    for (int c = lane; c < classes; c += 32) {
        if (best_index < 0 || ranks_above(x[c], c, best, best_index)) {
            best = x[c];
            best_index = c;
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const T other = __shfl_xor_sync(0xffffffff, best, offset);
        const int other_index = __shfl_xor_sync(0xffffffff, best_index, offset);
        if (other_index >= 0 && (best_index < 0 || ranks_above(other, other_index, best, best_index))) {
            best = other;
            best_index = other_index;
        }
    }
    if (lane == 0 && best_index == labels[row]) atomicAdd(counter, 1ULL);
}

// Convolution as one GEMM each way over a column matrix (C*KH*KW, N*OH*OW): row (c, i, j), column
// (n, oh, ow). im2col writes it, one thread per entry in memory order (consecutive threads, consecutive
// addresses), reading the unpadded image: padding reads as zero, so no padded copy is made.
template <typename T>
__global__ void im2col(const T* image, T* cols, long long total, int samples, int channels, int height, int width,
                       int kh, int kw, int out_h, int out_w, int stride_h, int stride_w, int pad_h, int pad_w,
                       int dil_h, int dil_w) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const int ow = index % out_w;
        const int oh = (index / out_w) % out_h;
        const long long rest = index / ((long long)out_w * out_h);  // row * samples + n
        const int n = rest % samples;
        const int row = rest / samples;
        const int j = row % kw;
        const int i = (row / kw) % kh;
        const int c = row / (kw * kh);
        const int h = oh * stride_h - pad_h + i * dil_h;
        const int w = ow * stride_w - pad_w + j * dil_w;
        cols[index] = (h >= 0 && h < height && w >= 0 && w < width)
                          ? image[(((long long)n * channels + c) * height + h) * width + w] : (T)0;
    }
}

// col2im as a gather: one thread per input pixel (n, c, h, w) sums the column-matrix entries that read it,
// so there are no atomic adds and the result is deterministic.
template <typename T>
__global__ void col2im(const T* cols, T* image, long long total, int samples, int channels, int height, int width,
                       int kh, int kw, int out_h, int out_w, int stride_h, int stride_w,
                       int pad_h, int pad_w, int dil_h, int dil_w) {
    const long long row_length = (long long)samples * out_h * out_w;  // entries per row of the column matrix
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const int w = index % width;
        const int h = (index / width) % height;
        const long long nc = index / ((long long)width * height);  // n * channels + c
        const int c = nc % channels;
        const int n = nc / channels;
        const T* base = cols + (long long)c * kh * kw * row_length + (long long)n * out_h * out_w;
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int hp = h + pad_h - i * dil_h;  // = oh * stride_h for a window that reads this pixel
            if (hp < 0 || hp % stride_h != 0) continue;
            const int oh = hp / stride_h;
            if (oh >= out_h) continue;
            for (int j = 0; j < kw; ++j) {
                const int wp = w + pad_w - j * dil_w;
                if (wp < 0 || wp % stride_w != 0) continue;
                const int ow = wp / stride_w;
                if (ow >= out_w) continue;
                sum += base[(i * kw + j) * row_length + (long long)oh * out_w + ow];
            }
        }
        image[index] = sum;
    }
}

// The sum of one value per thread over the block (blockDim.x a multiple of 32); every thread gets it.
template <typename T>
__device__ T block_sum(T value) {
    __shared__ T warp_sums[32];
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffff, value, offset);
    __syncthreads();  // a previous call's readers are done with warp_sums
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
    __syncthreads();
    T total = 0;
    for (int w = 0; w < blockDim.x / 32; ++w) total += warp_sums[w];
    return total;
}

// Element k of channel c among the (samples * plane) values of (N, C, plane) input.
__device__ __forceinline__ long long channel_element(long long k, int c, int channels, long long plane) {
    return (k / plane * channels + c) * plane + k % plane;
}

enum { HAS_GAMMA = 1, HAS_BETA = 2, UPDATE_MEAN = 4, UPDATE_VAR = 8 };

// Batch normalization's forward statistics, one block per channel: the mean, then the biased variance of the
// centered values (two passes, as the CPU code); thread 0 then writes 1/std, scale = gamma/std and
// shift = beta - mean * scale, and updates the running statistics in place (the variance unbiased).
template <typename T>
__global__ void batch_norm_statistics(const T* x, const T* gamma, const T* beta, T* running_mean, T* running_var,
                                      T* mean_out, T* inv_std_out, T* scale_out, T* shift_out, long long samples,
                                      int channels, long long plane, T eps, T momentum, int flags) {
    const int c = blockIdx.x;
    const long long count = samples * plane;
    T sum = 0;
    for (long long k = threadIdx.x; k < count; k += blockDim.x) sum += x[channel_element(k, c, channels, plane)];
    const T mean = block_sum(sum) / (T)count;
    T squares = 0;
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
        const T d = x[channel_element(k, c, channels, plane)] - mean;
        squares += d * d;
    }
    const T var = block_sum(squares) / (T)count;
    if (threadIdx.x == 0) {
        const T inv_std = (T)1 / sqrt(var + eps);
        const T scale = (flags & HAS_GAMMA) ? gamma[c] * inv_std : inv_std;
        mean_out[c] = mean;
        inv_std_out[c] = inv_std;
        scale_out[c] = scale;
        shift_out[c] = ((flags & HAS_BETA) ? beta[c] : (T)0) - mean * scale;
        if (flags & UPDATE_MEAN) running_mean[c] = ((T)1 - momentum) * running_mean[c] + momentum * mean;
        if (flags & UPDATE_VAR)
            running_var[c] = ((T)1 - momentum) * running_var[c] + momentum * var * ((T)count / (T)(count - 1));
    }
}

// Its backward statistics, one block per channel: sum(g) and sum(g * (x - mean)) in one pass; thread 0 writes
// sum(g) (beta's gradient), sum(g * (x - mean)) / std (gamma's), and the coefficients of the input gradient's
// terms through the batch statistics (zero in evaluation, where the statistics are constants).
template <typename T>
__global__ void batch_norm_backward_statistics(const T* grad, const T* x, const T* mean, const T* scale,
                                               const T* inv_std, T* sum_g_out, T* grad_gamma_out,
                                               T* coef_centered_out, T* coef_const_out, long long samples,
                                               int channels, long long plane, int training) {
    const int c = blockIdx.x;
    const long long count = samples * plane;
    const T m = mean[c];
    T sum_g = 0, sum_gc = 0;
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
        const long long index = channel_element(k, c, channels, plane);
        const T g = grad[index];
        sum_g += g;
        sum_gc += g * (x[index] - m);
    }
    sum_g = block_sum(sum_g);
    sum_gc = block_sum(sum_gc);
    if (threadIdx.x == 0) {
        const T inv_count = (T)1 / (T)count;
        sum_g_out[c] = sum_g;
        grad_gamma_out[c] = sum_gc * inv_std[c];
        coef_centered_out[c] = training ? -scale[c] * inv_std[c] * inv_std[c] * sum_gc * inv_count : (T)0;
        coef_const_out[c] = training ? -scale[c] * sum_g * inv_count : (T)0;
    }
}

// Layer normalization over the rows of (rows, width), one block per row: the row's mean, then its biased variance
// from the centered values (two passes, as the CPU code), then the output; thread 0 writes the mean and 1/std.
template <typename T>
__global__ void layer_norm_forward(const T* x, const T* gamma, const T* beta, T* out, T* mean_out, T* inv_std_out,
                                   int width, T eps, int flags) {
    const long long row = blockIdx.x;
    const T* in = x + row * width;
    T* o = out + row * width;
    T sum = 0;
    for (int c = threadIdx.x; c < width; c += blockDim.x) sum += in[c];
    const T mean = block_sum(sum) / (T)width;
    T squares = 0;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const T d = in[c] - mean;
        squares += d * d;
    }
    const T inv_std = (T)1 / sqrt(block_sum(squares) / (T)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        T v = (in[c] - mean) * inv_std;
        if (flags & HAS_GAMMA) v *= gamma[c];
        if (flags & HAS_BETA) v += beta[c];
        o[c] = v;
    }
    if (threadIdx.x == 0) {
        mean_out[row] = mean;
        inv_std_out[row] = inv_std;
    }
}

// Its input gradient, one block per row: with xhat = (x - mean) inv_std and gh = grad * gamma, the row means of gh
// and of gh * xhat, then grad_in = inv_std (gh - mean(gh) - xhat mean(gh xhat)).
template <typename T>
__global__ void layer_norm_backward(const T* grad, const T* x, const T* mean, const T* inv_std, const T* gamma,
                                    T* grad_in, int width, int has_gamma) {
    const long long row = blockIdx.x;
    const T* g = grad + row * width;
    const T* in = x + row * width;
    const T m = mean[row], s = inv_std[row];
    T sum_g = 0, sum_gx = 0;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const T gh = has_gamma ? g[c] * gamma[c] : g[c];
        sum_g += gh;
        sum_gx += gh * ((in[c] - m) * s);
    }
    const T mean_g = block_sum(sum_g) / (T)width;
    const T mean_gx = block_sum(sum_gx) / (T)width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const T gh = has_gamma ? g[c] * gamma[c] : g[c];
        grad_in[row * width + c] = s * (gh - mean_g - (in[c] - m) * s * mean_gx);
    }
}

// gamma's and beta's gradients, the sums over the rows of grad * xhat and of grad, as partial sums per chunk of
// `rows_per_chunk` rows (blockIdx.y), added up after: no atomics, so the result is deterministic. A block of 256
// threads takes 32 columns (consecutive threads, consecutive addresses) by 8 interleaved rows of the chunk, and adds
// its 8 partial sums per column in shared memory.
template <typename T>
__global__ void layer_norm_affine_backward(const T* grad, const T* x, const T* mean, const T* inv_std,
                                           T* partial_gamma, T* partial_beta, int rows, int width,
                                           int rows_per_chunk) {
    __shared__ T sums[2][8][32];
    const int lane = threadIdx.x % 32, group = threadIdx.x / 32;
    const int c = blockIdx.x * 32 + lane;
    const int first = blockIdx.y * rows_per_chunk;
    const int last = min(rows, first + rows_per_chunk);
    T sum_gx = 0, sum_g = 0;
    if (c < width) {
        for (int r = first + group; r < last; r += 8) {
            const long long i = (long long)r * width + c;
            sum_gx += grad[i] * ((x[i] - mean[r]) * inv_std[r]);
            sum_g += grad[i];
        }
    }
    sums[0][group][lane] = sum_gx;
    sums[1][group][lane] = sum_g;
    __syncthreads();
    if (group == 0 && c < width) {
        T total_gx = 0, total_g = 0;
        for (int k = 0; k < 8; ++k) {
            total_gx += sums[0][k][lane];
            total_g += sums[1][k][lane];
        }
        partial_gamma[(long long)blockIdx.y * width + c] = total_gx;
        partial_beta[(long long)blockIdx.y * width + c] = total_g;
    }
}

// Max pooling, one thread per output: the window's largest value and which kernel offset (row-major)
// holds it, the first on ties. Padding never wins: it counts as -infinity.
template <typename T>
__global__ void max_pool_forward(const T* x, T* out, unsigned char* winner, long long total, int height,
                                 int width, int out_h, int out_w, int kh, int kw, int stride_h, int stride_w,
                                 int pad_h, int pad_w) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const int ow = index % out_w;
        const int oh = (index / out_w) % out_h;
        const T* plane = x + index / ((long long)out_w * out_h) * height * width;
        T best = 0;
        int best_k = -1;
        for (int i = 0; i < kh; ++i) {
            const int h = oh * stride_h - pad_h + i;
            if (h < 0 || h >= height) continue;
            for (int j = 0; j < kw; ++j) {
                const int w = ow * stride_w - pad_w + j;
                if (w < 0 || w >= width) continue;
                const T value = plane[h * width + w];
                if (best_k < 0 || value > best) {
                    best = value;
                    best_k = i * kw + j;
                }
            }
        }
        out[index] = best;
        winner[index] = (unsigned char)best_k;
    }
}

// Its gradient as a gather: one thread per input pixel adds the upstream gradient of every window
// that it won (windows overlap when stride < kernel). Deterministic, no atomics.
template <typename T>
__global__ void max_pool_backward(const T* grad_out, const unsigned char* winner, T* grad_in, long long total,
                                  int height, int width, int out_h, int out_w, int kh, int kw, int stride_h,
                                  int stride_w, int pad_h, int pad_w) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const int w = index % width;
        const int h = (index / width) % height;
        const long long plane = index / ((long long)width * height) * out_h * out_w;
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            const int hp = h + pad_h - i;  // = oh * stride_h for a window whose offset i lands here
            if (hp < 0 || hp % stride_h != 0 || hp / stride_h >= out_h) continue;
            for (int j = 0; j < kw; ++j) {
                const int wp = w + pad_w - j;
                if (wp < 0 || wp % stride_w != 0 || wp / stride_w >= out_w) continue;
                const long long o = plane + (long long)(hp / stride_h) * out_w + wp / stride_w;
                if (winner[o] == i * kw + j) sum += grad_out[o];
            }
        }
        grad_in[index] = sum;
    }
}

// One GRU step's pointwise part, one thread per (sample, unit). step_in holds x_t W_ih^T + b_ih with rows
// `in_stride` values apart (a time slice of the whole sequence's projection); gh = h W_hh^T, to which the bias
// is added in place (the backward reads it). Gates r, z, n in torch's order; sigmoid(a) written as
// (1 + tanh(a / 2)) / 2, as the NumPy code does. Writes r and z (rows of 2H), n and h_new.
template <typename T>
__global__ void gru_forward(const T* step_in, long long in_stride, T* gh, const T* bias, int has_bias, const T* h,
                            T* h_new, T* rz, T* n_out, long long total, int hidden) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long row = index / hidden;
        const int col = index % hidden;
        const T* in = step_in + row * in_stride;
        T* g = gh + row * 3 * hidden;
        if (has_bias) {
            g[col] += bias[col];
            g[hidden + col] += bias[hidden + col];
            g[2 * hidden + col] += bias[2 * hidden + col];
        }
        const T r = (T)0.5 * ((T)1 + tanh((T)0.5 * (in[col] + g[col])));
        const T z = (T)0.5 * ((T)1 + tanh((T)0.5 * (in[hidden + col] + g[hidden + col])));
        const T n = tanh(in[2 * hidden + col] + r * g[2 * hidden + col]);
        rz[row * 2 * hidden + col] = r;
        rz[row * 2 * hidden + hidden + col] = z;
        n_out[index] = n;
        h_new[index] = n + z * (h[index] - n);
    }
}

// Its backward, one step of backpropagation through time: dh = grad (the output's gradient, rows `grad_stride`
// apart) + carried (d(gh_{t+1}) W_hh) + direct (dh_{t+1} z_{t+1}), the last two from step t+1 when has_next.
// Writes the pre-activation gradients [d_r, d_z, d_n] into d_in (rows `d_in_stride` apart: a time slice of the
// projection's gradient), the same with d_n times r into d_gh (gh_n enters as r * gh_n), and dh z into direct.
template <typename T>
__global__ void gru_backward(const T* grad, long long grad_stride, const T* carried, T* direct, int has_next,
                             const T* h, const T* rz, const T* n_in, const T* gh, T* d_in, long long d_in_stride,
                             T* d_gh, long long total, int hidden) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long row = index / hidden;
        const int col = index % hidden;
        T dh = grad[row * grad_stride + col];
        if (has_next) dh += carried[index] + direct[index];
        const T r = rz[row * 2 * hidden + col], z = rz[row * 2 * hidden + hidden + col], n = n_in[index];
        const T d_n = dh * ((T)1 - z) * ((T)1 - n * n);
        const T d_r = d_n * gh[row * 3 * hidden + 2 * hidden + col] * r * ((T)1 - r);
        const T d_z = dh * (h[index] - n) * z * ((T)1 - z);
        T* d = d_in + row * d_in_stride + col;
        d[0] = d_r;
        d[hidden] = d_z;
        d[2 * hidden] = d_n;
        T* e = d_gh + row * 3 * hidden + col;
        e[0] = d_r;
        e[hidden] = d_z;
        e[2 * hidden] = d_n * r;
        direct[index] = dh * z;
    }
}

// One LSTM step's pointwise part, one thread per (sample, unit): the gate pre-activations are step_in (x_t W_ih^T,
// rows `in_stride` apart) + gates (h_{t-1} W_hh^T) + bias (b_ih + b_hh), in torch's order i, f, g, o; gates is then
// overwritten with the activations (what the backward needs). c_new = f c_prev + i g, h_new = o tanh(c_new).
template <typename T>
__global__ void lstm_forward(const T* step_in, long long in_stride, T* gates, const T* bias, int has_bias,
                             const T* c_prev, T* h_new, T* c_new, long long total, int hidden) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long row = index / hidden;
        const int col = index % hidden;
        const T* in = step_in + row * in_stride + col;
        T* a = gates + row * 4 * hidden + col;
        T pre[4];
        for (int k = 0; k < 4; ++k)
            pre[k] = in[k * hidden] + a[k * hidden] + (has_bias ? bias[k * hidden + col] : (T)0);
        const T i = (T)0.5 * ((T)1 + tanh((T)0.5 * pre[0]));
        const T f = (T)0.5 * ((T)1 + tanh((T)0.5 * pre[1]));
        const T g = tanh(pre[2]);
        const T o = (T)0.5 * ((T)1 + tanh((T)0.5 * pre[3]));
        const T c = f * c_prev[index] + i * g;
        a[0] = i;
        a[hidden] = f;
        a[2 * hidden] = g;
        a[3 * hidden] = o;
        c_new[index] = c;
        h_new[index] = o * tanh(c);
    }
}

// Its backward, one step of backpropagation through time: dh = grad_h (+ carried, d(gates_{t+1}) W_hh) and
// dc = grad_c (+ dc_next, dc_{t+1} f_{t+1}) + dh o (1 - tanh(c)^2), the output gradients' rows `grad_stride`
// apart. Writes the pre-activation gradients into d_in (rows `d_in_stride` apart) and d_gates, and dc f into
// dc_next.
template <typename T>
__global__ void lstm_backward(const T* grad_h, const T* grad_c, long long grad_stride, const T* carried, T* dc_next,
                              int has_next, const T* acts, const T* c_prev, const T* c_new, T* d_in,
                              long long d_in_stride, T* d_gates, long long total, int hidden) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long row = index / hidden;
        const int col = index % hidden;
        const T* a = acts + row * 4 * hidden + col;
        const T i = a[0], f = a[hidden], g = a[2 * hidden], o = a[3 * hidden];
        const T tc = tanh(c_new[index]);
        T dh = grad_h[row * grad_stride + col];
        T dc = grad_c[row * grad_stride + col];
        if (has_next) {
            dh += carried[index];
            dc += dc_next[index];
        }
        dc += dh * o * ((T)1 - tc * tc);
        const T d[4] = {dc * g * i * ((T)1 - i), dc * c_prev[index] * f * ((T)1 - f), dc * i * ((T)1 - g * g),
                        dh * tc * o * ((T)1 - o)};
        T* out_in = d_in + row * d_in_stride + col;
        T* out_gates = d_gates + row * 4 * hidden + col;
        for (int k = 0; k < 4; ++k) {
            out_in[k * hidden] = d[k];
            out_gates[k * hidden] = d[k];
        }
        dc_next[index] = dc * f;
    }
}
"""

_NAMES = [f"{kernel}<{ctype}>"
          for kernel in ("log_softmax_nll", "add_correct", "im2col", "col2im", "batch_norm_statistics",
                         "batch_norm_backward_statistics", "layer_norm_forward", "layer_norm_backward",
                         "layer_norm_affine_backward", "max_pool_forward", "max_pool_backward", "gru_forward",
                         "gru_backward", "lstm_forward", "lstm_backward")
          for ctype in ("float", "double")]
_module = None
_CTYPES = {cupy.dtype(cupy.float32): "float", cupy.dtype(cupy.float64): "double"}


def _kernel(name: str, dtype):
    global _module
    if _module is None:
        _module = cupy.RawModule(code=_SOURCE, options=("--std=c++17",), name_expressions=_NAMES)
    return _module.get_function(f"{name}<{_CTYPES[cupy.dtype(dtype)]}>")


def supports(dtype) -> bool:
    return cupy.dtype(dtype) in _CTYPES


# ---------------------------------------------------------------- what the ops call


def relu_backward(grad, out):
    """grad * (out > 0), one kernel (the forward keeps no mask)."""
    return _relu_backward(grad, out)


def add_bias_relu(x, bias) -> None:
    """x = max(x + bias, 0) in place, one pass."""
    has_bias = bias is not None
    _add_bias_relu(bias if has_bias else cupy.zeros(1, dtype=x.dtype), x.shape[-1], cupy.int32(has_bias), x)


def gelu_forward(x):
    return _gelu_forward(x)


def gelu_backward(grad, x):
    return _gelu_backward(grad, x)


def dropout(x, uniform, p: float):
    """(x * mask, mask) with mask = (uniform >= p) / (1 - p), one kernel."""
    return _dropout(x, uniform, x.dtype.type(p), x.dtype.type(1.0 / (1.0 - p)))


def log_softmax_nll(logits, labels):
    """(log-softmax of (n, classes) logits, per-row loss -log p[label]) in one kernel."""
    logits = cupy.ascontiguousarray(logits)
    labels = cupy.ascontiguousarray(labels, dtype=cupy.int64)
    rows, classes = logits.shape
    log_p = cupy.empty_like(logits)
    row_loss = cupy.empty(rows, dtype=logits.dtype)
    rows_per_block = 8
    _kernel("log_softmax_nll", logits.dtype)(
        ((rows + rows_per_block - 1) // rows_per_block,), (32 * rows_per_block,),
        (logits, labels, log_p, row_loss, cupy.int32(rows), cupy.int32(classes)))
    return log_p, row_loss


def add_correct(logits, labels, counter) -> None:
    """counter (0-d int64) += the number of rows of (n, classes) logits whose argmax is the label, one kernel."""
    logits = cupy.ascontiguousarray(logits)
    labels = cupy.ascontiguousarray(labels, dtype=cupy.int64)
    rows, classes = logits.shape
    rows_per_block = 8
    _kernel("add_correct", logits.dtype)(
        ((rows + rows_per_block - 1) // rows_per_block,), (32 * rows_per_block,),
        (logits, labels, counter, cupy.int32(rows), cupy.int32(classes)))


def cross_entropy_backward(log_p, labels, upstream):
    """d mean(-log p[label]) / d logits, times the upstream gradient (a 0-d device array)."""
    rows, classes = log_p.shape
    upstream = cupy.asarray(upstream, dtype=log_p.dtype).reshape(1)
    return _cross_entropy_backward(log_p, cupy.ascontiguousarray(labels, dtype=cupy.int64), upstream,
                                   classes, log_p.dtype.type(1.0 / rows))


def _conv_geometry_args(image_shape, kernel, stride, padding, dilation, out_hw):
    i32 = cupy.int32
    return (*(i32(size) for size in image_shape), i32(kernel[0]), i32(kernel[1]), i32(out_hw[0]), i32(out_hw[1]),
            i32(stride[0]), i32(stride[1]), i32(padding[0]), i32(padding[1]), i32(dilation[0]), i32(dilation[1]))


def im2col(image, kernel, stride, padding, dilation, out_hw):
    """The column matrix (C*KH*KW, N*OH*OW) of an (N, C, H, W) image, one kernel, no padded copy."""
    image = cupy.ascontiguousarray(image)
    n, channels = image.shape[:2]
    cols = cupy.empty((channels * kernel[0] * kernel[1], n * out_hw[0] * out_hw[1]), dtype=image.dtype)
    _kernel("im2col", image.dtype)(
        *_grid(cols.size),
        (image, cols, cupy.int64(cols.size), *_conv_geometry_args(image.shape, kernel, stride, padding, dilation,
                                                                    out_hw)))
    return cols


def col2im(columns, image, kernel, stride, padding, dilation, out_hw) -> None:
    """Sum a (C*KH*KW, N*OH*OW) column matrix back onto `image` (N, C, H, W, C-contiguous), one thread per pixel."""
    columns = cupy.ascontiguousarray(columns)
    if not image.flags.c_contiguous or image.dtype != columns.dtype:
        raise ValueError("col2im writes into a C-contiguous image of the columns' dtype")
    _kernel("col2im", columns.dtype)(
        *_grid(image.size),
        (columns, image, cupy.int64(image.size), *_conv_geometry_args(image.shape, kernel, stride, padding, dilation,
                                                                        out_hw)))


def filters_to_images(product, bias, out, relu: bool) -> None:
    """out (N, F, OH, OW) = the (F, N*OH*OW) product of a convolution GEMM, plus bias (F,) or None, then the ReLU:
    one pass."""
    samples, filters = out.shape[:2]
    has_bias = bias is not None
    bias = bias if has_bias else cupy.zeros(1, dtype=out.dtype)
    _filters_to_images(product, bias, samples, filters, out.size // max(1, samples * filters), cupy.int32(has_bias),
                       cupy.int32(relu), out)


def images_to_filters(grad):
    """(N, F, OH, OW) -> (F, N*OH*OW): the layout the convolution's gradient GEMMs take, one copy."""
    samples, filters = grad.shape[:2]
    return cupy.ascontiguousarray(grad.reshape(samples, filters, -1).transpose(1, 0, 2)).reshape(filters, -1)


def _grid(total: int, threads: int = 256) -> tuple[tuple[int], tuple[int]]:
    """Blocks and threads for a grid-stride loop over `total` elements."""
    return (min((total + threads - 1) // threads, 65535 * 8),), (threads,)


def _pool_geometry_args(height, width, kernel, stride, padding, out_hw):
    i32 = cupy.int32
    return (i32(height), i32(width), i32(out_hw[0]), i32(out_hw[1]), i32(kernel[0]), i32(kernel[1]),
            i32(stride[0]), i32(stride[1]), i32(padding[0]), i32(padding[1]))


MAX_POOL_WINDOW = 255  # the winning offset is kept in one byte
GATHER_GRADIENTS = True  # the optimizers gather all gradients into one buffer: one launch instead of one each
CHANNEL_MAJOR = False  # convolutions write NCHW activations (filters_to_images), the layout cuDNN-style code expects


# Average pooling runs as the reference's CuPy array code (one strided add per window offset), and so does the lookup
# of 8-bit inputs (two CuPy gathers: a batch of bytes, then the table); bias_relu_rows is not on this set's path.
from dltrain.backend.reference import avg_pool_backward, avg_pool_forward, bias_relu_rows, lookup_rows  # noqa: E402, F401 (absolute: the tests load this file on its own)


def max_pool_forward(x, kernel, stride, padding, out_hw):
    """(output, winner): each window's maximum and the offset (i * kw + j) that holds it, one kernel."""
    x = cupy.ascontiguousarray(x)
    n, channels, height, width = x.shape
    out = cupy.empty((n, channels) + tuple(out_hw), dtype=x.dtype)
    winner = cupy.empty(out.shape, dtype=cupy.uint8)
    _kernel("max_pool_forward", x.dtype)(
        *_grid(out.size), (x, out, winner, cupy.int64(out.size),
                           *_pool_geometry_args(height, width, kernel, stride, padding, out_hw)))
    return out, winner


def max_pool_backward(grad_out, winner, input_shape, kernel, stride, padding, out_hw):
    """The input gradient of max pooling: each input pixel gathers the gradient of the windows it won."""
    grad_out = cupy.ascontiguousarray(grad_out)
    grad_in = cupy.empty(input_shape, dtype=grad_out.dtype)
    _kernel("max_pool_backward", grad_out.dtype)(
        *_grid(grad_in.size), (grad_out, winner, grad_in, cupy.int64(grad_in.size),
                               *_pool_geometry_args(input_shape[2], input_shape[3], kernel, stride, padding,
                                                    out_hw)))
    return grad_in


_dummies = {}


def _reduction_block(count: int) -> tuple[int]:
    """Threads per block of a per-channel reduction over `count` values: up to 256, no more warps than values."""
    return (min(256, 32 * -(-count // 32)),)


def _or_dummy(array, dtype):
    """`array`, or a one-element stand-in for an absent one (a kernel argument must be an array)."""
    if array is not None:
        return array
    if dtype not in _dummies:
        _dummies[dtype] = cupy.zeros(1, dtype=dtype)
    return _dummies[dtype]


def batch_norm_statistics(x, gamma, beta, running_mean, running_var, eps: float, momentum: float):
    """(mean, 1/std, scale, shift) per channel of (N, C, ...) x from its batch statistics, one kernel, which
    also updates the running statistics given (either may be None) in place. out = x * scale + shift."""
    x = cupy.ascontiguousarray(x)
    samples, channels = x.shape[:2]
    t = x.dtype.type
    mean, inv_std, scale, shift = (cupy.empty(channels, dtype=x.dtype) for _ in range(4))
    flags = ((gamma is not None) * 1 + (beta is not None) * 2 + (running_mean is not None) * 4
             + (running_var is not None) * 8)
    _kernel("batch_norm_statistics", x.dtype)(
        (channels,), _reduction_block(x.size // channels),
        (x, *(_or_dummy(a, x.dtype) for a in (gamma, beta, running_mean, running_var)), mean, inv_std, scale,
         shift, cupy.int64(samples), cupy.int32(channels), cupy.int64(_plane(x)), t(eps), t(momentum),
         cupy.int32(flags)))
    return mean, inv_std, scale, shift


def batch_norm_eval_scale(mean, var, gamma, beta, eps: float):
    """(1/std, scale, shift) per channel from given (running) statistics; gamma, beta may be None."""
    t = var.dtype.type
    return _batch_norm_eval_scale(mean, var, t(1) if gamma is None else gamma, t(0) if beta is None else beta, t(eps))


def batch_norm_apply(x, scale, shift, relu: bool):
    """x * scale + shift with per-channel scale and shift, then the ReLU: one pass."""
    x = cupy.ascontiguousarray(x)
    return _batch_norm_apply(x, scale, shift, _plane(x), x.shape[1], cupy.int32(relu))


def batch_norm_backward_statistics(grad, x, mean, scale, inv_std, training: bool):
    """(sum of grad, gamma's gradient, coef_centered, coef_const) per channel, one kernel (see batch_norm_backward)."""
    grad, x = cupy.ascontiguousarray(grad), cupy.ascontiguousarray(x)
    samples, channels = x.shape[:2]
    sum_g, grad_gamma, coef_centered, coef_const = (cupy.empty(channels, dtype=x.dtype) for _ in range(4))
    _kernel("batch_norm_backward_statistics", x.dtype)(
        (channels,), _reduction_block(x.size // channels),
        (grad, x, mean, scale, inv_std, sum_g, grad_gamma, coef_centered, coef_const, cupy.int64(samples),
         cupy.int32(channels), cupy.int64(_plane(x)), cupy.int32(training)))
    return sum_g, grad_gamma, coef_centered, coef_const


def batch_norm_backward(grad, x, mean, scale, coef_centered, coef_const):
    """The input gradient: grad * scale + (x - mean) * coef_centered + coef_const per channel, one pass."""
    grad = cupy.ascontiguousarray(grad)
    return _batch_norm_backward(grad, cupy.ascontiguousarray(x), mean, scale, coef_centered, coef_const, _plane(grad),
                                grad.shape[1])


def layer_norm_forward(x, gamma, beta, eps: float):
    """(out, mean, 1/std) of each row of (R, D) x: out = (x - mean) / std * gamma + beta, one block per row."""
    x = cupy.ascontiguousarray(x)
    rows, width = x.shape
    out = cupy.empty_like(x)
    mean, inv_std = cupy.empty(rows, dtype=x.dtype), cupy.empty(rows, dtype=x.dtype)
    if rows and width:
        flags = (gamma is not None) * 1 + (beta is not None) * 2
        gamma, beta = (cupy.ascontiguousarray(_or_dummy(a, x.dtype)) for a in (gamma, beta))
        _kernel("layer_norm_forward", x.dtype)(
            (rows,), _reduction_block(width),
            (x, gamma, beta, out, mean, inv_std, cupy.int32(width), x.dtype.type(eps), cupy.int32(flags)))
    return out, mean, inv_std


_AFFINE_CHUNKS = 128  # row chunks of layer_norm_affine_backward, at most: with 32 columns a block, enough blocks


def layer_norm_backward(grad, x, mean, inv_std, gamma, affine: bool):
    """(grad_x, grad_gamma, grad_beta) of layer normalization over the rows of (R, D): the input gradient one block
    per row, gamma's and beta's sums over the rows as partial sums per chunk of rows (one more kernel), added up."""
    grad, x = cupy.ascontiguousarray(grad), cupy.ascontiguousarray(x)
    rows, width = x.shape
    grad_in = cupy.empty_like(x)
    if rows and width:
        _kernel("layer_norm_backward", x.dtype)(
            (rows,), _reduction_block(width),
            (grad, x, mean, inv_std, cupy.ascontiguousarray(_or_dummy(gamma, x.dtype)), grad_in, cupy.int32(width),
             cupy.int32(gamma is not None)))
    if not affine:
        return grad_in, None, None
    rows_per_chunk = max(64, -(-rows // _AFFINE_CHUNKS))
    chunks = max(1, -(-rows // rows_per_chunk))
    partial_gamma, partial_beta = cupy.zeros((chunks, width), x.dtype), cupy.zeros((chunks, width), x.dtype)
    if rows and width:
        _kernel("layer_norm_affine_backward", x.dtype)(
            (-(-width // 32), chunks), (256,),
            (grad, x, mean, inv_std, partial_gamma, partial_beta, cupy.int32(rows), cupy.int32(width),
             cupy.int32(rows_per_chunk)))
    return grad_in, partial_gamma.sum(axis=0), partial_beta.sum(axis=0)


def _plane(array) -> int:
    """Values per (sample, channel): H * W for images, 1 for (N, C)."""
    return array.size // max(1, array.shape[0] * array.shape[1])


def _row_stride(array) -> int:
    """Values between rows of a 2-D array whose rows are each contiguous (a time slice (N, K) of (N, T, K))."""
    if array.strides[1] != array.itemsize:
        raise ValueError(f"expected rows of contiguous values, got strides {array.strides}")
    return array.strides[0] // array.itemsize


def gru_forward(step_in, gh, bias, h, h_new, rz, n) -> None:
    """One GRU step's pointwise part in one kernel: writes r and z (into rz), n and h_new, and adds the bias
    (or None) into gh. step_in (N, 3H) may be a time slice; gh, h and the outputs are C-contiguous."""
    _kernel("gru_forward", h.dtype)(
        *_grid(h.size), (step_in, cupy.int64(_row_stride(step_in)), gh, _or_dummy(bias, h.dtype),
                         cupy.int32(bias is not None), h, h_new, rz, n, cupy.int64(h.size), cupy.int32(h.shape[1])))


def gru_backward(grad, carried, direct, has_next: bool, h, rz, n, gh, d_in, d_gh) -> None:
    """One step of the GRU's backpropagation through time in one kernel (see the CUDA source): grad and d_in
    may be time slices; writes d_in, d_gh and, into `direct`, this step's dh * z."""
    _kernel("gru_backward", h.dtype)(
        *_grid(h.size), (grad, cupy.int64(_row_stride(grad)), carried, direct, cupy.int32(has_next), h, rz, n, gh,
                         d_in, cupy.int64(_row_stride(d_in)), d_gh, cupy.int64(h.size), cupy.int32(h.shape[1])))


def lstm_forward(step_in, gates, bias, c_prev, h_new, c_new) -> None:
    """One LSTM step's pointwise part in one kernel: writes h_new and c_new, and overwrites gates (h W_hh^T)
    with the activations i, f, g, o. step_in (N, 4H) may be a time slice; the others are C-contiguous."""
    _kernel("lstm_forward", c_prev.dtype)(
        *_grid(c_prev.size), (step_in, cupy.int64(_row_stride(step_in)), gates, _or_dummy(bias, c_prev.dtype),
                              cupy.int32(bias is not None), c_prev, h_new, c_new, cupy.int64(c_prev.size),
                              cupy.int32(c_prev.shape[1])))


def lstm_backward(grad_h, grad_c, carried, dc_next, has_next: bool, acts, c_prev, c_new, d_in, d_gates) -> None:
    """One step of the LSTM's backpropagation through time in one kernel (see the CUDA source); grad_h and grad_c
    are time slices with the same row stride, d_in a time slice."""
    if grad_h.strides != grad_c.strides:
        raise ValueError("grad_h and grad_c must be laid out alike")
    _kernel("lstm_backward", c_prev.dtype)(
        *_grid(c_prev.size), (grad_h, grad_c, cupy.int64(_row_stride(grad_h)), carried, dc_next, cupy.int32(has_next),
                              acts, c_prev, c_new, d_in, cupy.int64(_row_stride(d_in)), d_gates,
                              cupy.int64(c_prev.size), cupy.int32(c_prev.shape[1])))


def sgd_step(param, grad, velocity, decay, lr: float, momentum: float, nesterov: bool) -> None:
    """One SGD update of flat buffers in place; `decay` is a per-element weight-decay array or 0."""
    t = param.dtype.type
    if velocity is None:
        _sgd(grad, decay, t(lr), param)
    else:
        _sgd_momentum(grad, decay, t(lr), t(momentum), cupy.int32(nesterov), param, velocity)


def adam_step(param, grad, m, v, decay, lr, beta1, beta2, eps, step: int, decoupled: bool) -> None:
    """One Adam/AdamW update of flat buffers in place (torch.optim's formulas)."""
    t = param.dtype.type
    bias1 = 1.0 - beta1 ** step
    bias2_sqrt = (1.0 - beta2 ** step) ** 0.5
    _adam(grad, decay, t(lr), t(beta1), t(beta2), t(eps), t(bias1), t(bias2_sqrt), cupy.int32(decoupled),
          param, m, v)
