"""The CUDA-on-CPU runner of tests/cuda_on_cpu.py must fail where a GPU would misbehave, else the kernel
tests that rely on it could not fail."""

import numpy as np
import pytest
from cuda_on_cpu import ElementwiseKernel, KernelError, RawModule, ReductionKernel
from fake_cupy import asnumpy

BLOCK_SUM = r"""
// Sum of each block's values by a shared-memory tree, then by warp shuffles: the result per block.
template <typename T>
__global__ void block_sum(const T* x, T* out, int n) {
    __shared__ T partial[256];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    partial[t] = i < n ? x[i] : (T)0;
    __syncthreads();
    for (int half = blockDim.x / 2; half >= 32; half /= 2) {
        if (t < half) partial[t] += partial[t + half];
        __syncthreads();
    }
    if (t < 32) {
        T v = partial[t];
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
        if (t == 0) out[blockIdx.x] = v;
    }
}

// Wrong: threads past n return before the barrier the others wait at.
__global__ void early_return(const float* x, float* out, int n) {
    __shared__ float tile[64];
    const int i = threadIdx.x;
    if (i >= n) return;
    tile[i] = x[i];
    __syncthreads();
    out[i] = tile[(i + 1) % n];
}

// Wrong: half a warp shuffles.
__global__ void half_warp_shuffle(float* out) {
    float v = threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffff, v, 1);
    out[threadIdx.x] = v;
}

// Wrong: one element past the end.
__global__ void off_by_one(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;
}

__global__ void fill(float* out, long long n, float value) {
    for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) out[i] = value;
}
"""


@pytest.fixture(scope="module")
def module():
    return RawModule(code=BLOCK_SUM, name_expressions=["block_sum<float>", "block_sum<double>", "early_return",
                                                       "half_warp_shuffle", "off_by_one", "fill"])


def test_barriers_shared_memory_and_shuffles_compute_a_block_sum(module):
    x = np.arange(1, 601, dtype=np.float64)  # three blocks of 256: 1..256, 257..512, 513..600
    out = np.zeros(3)
    module.get_function("block_sum<double>")((3,), (256,), (x, out, np.int32(600)))
    assert out.tolist() == [256 * 257 / 2, (257 + 512) * 256 / 2, (513 + 600) * 88 / 2]


def test_a_barrier_that_some_threads_skip_is_reported(module):
    x, out = np.ones(64, np.float32), np.zeros(64, np.float32)
    with pytest.raises(KernelError, match=r"early_return: divergent __syncthreads: block \(0, 0, 0\) thread 0 "
                                          r"waits at one, thread 40 has returned"):
        module.get_function("early_return")((1,), (64,), (x, out, np.int32(40)))
    module.get_function("early_return")((1,), (64,), (x, out, np.int32(64)))  # every thread reaches it: fine
    assert out.tolist() == [1.0] * 64


def test_a_shuffle_by_part_of_a_warp_is_reported(module):
    with pytest.raises(KernelError, match="divergent warp shuffle/sync: block \\(0, 0, 0\\) thread 0 waits at one, "
                                          "thread 16 has returned"):
        module.get_function("half_warp_shuffle")((1,), (32,), (np.zeros(32, np.float32),))


def test_a_write_past_the_end_is_reported(module):
    with pytest.raises(KernelError, match=r"off_by_one wrote outside an array of shape \(100,\)"):
        module.get_function("off_by_one")((1,), (128,), (np.zeros(100, np.float32), np.int32(100)))


def test_arguments_are_checked_against_the_kernel_signature(module):
    fill = module.get_function("fill")
    out = np.zeros(10, np.float32)
    fill((2,), (4,), (out, np.int64(10), np.float32(2.5)))
    assert out.tolist() == [2.5] * 10
    with pytest.raises(KernelError, match="fill argument 0: the kernel takes p4, got an array of float64"):
        fill((1,), (4,), (np.zeros(10), np.int64(10), np.float32(1)))
    with pytest.raises(KernelError, match="fill argument 1: the kernel takes i8, got int32 10"):
        fill((1,), (4,), (out, np.int32(10), np.float32(1)))
    with pytest.raises(KernelError, match="fill argument 2: pass arrays or NumPy-typed scalars .* got 1.0"):
        fill((1,), (4,), (out, np.int64(10), 1.0))
    with pytest.raises(KernelError, match="fill takes 3 arguments, got 2"):
        fill((1,), (4,), (out, np.int64(10)))


def test_arguments_that_share_memory_are_refused_unless_they_are_the_same_array(module):
    """The runner copies each array, so two views of one buffer would not see each other's writes as on a GPU."""
    x = np.arange(64, dtype=np.float32)
    with pytest.raises(KernelError, match="early_return arguments 0 and 1 share memory"):
        module.get_function("early_return")((1,), (64,), (x, x[::-1], np.int32(64)))
    module.get_function("early_return")((1,), (64,), (x, x, np.int32(64)))  # the same array twice is one buffer
    assert x[0] == 1.0  # each thread read its neighbour before any wrote (the barrier), in place


def test_a_strided_view_is_handed_over_as_laid_out_in_memory(module):
    """A kernel sees raw memory: a column slice of a (4, 6) array is 4 rows 6 values apart, and the
    kernel's writes land in the original array."""
    base = np.zeros((4, 6), np.float32)
    module.get_function("fill")((1,), (32,), (base[:, 1:], np.int64(5), np.float32(7)))
    assert base.ravel().tolist() == [0, 7, 7, 7, 7, 7] + [0] * 18


def test_elementwise_kernels_broadcast_and_index_raw_arguments():
    kernel = ElementwiseKernel("T x, T y, raw T table, int64 width", "T z",
                               "z = x * y + table[i % width]", "broadcast")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.array([1, 10, 100], np.float32)
    z = kernel(x, y, np.array([0.5, 0.25, 0.125], np.float32), 3)
    np.testing.assert_array_equal(asnumpy(z), [[0.5, 10.25, 200.125], [3.5, 40.25, 500.125]])
    out = np.zeros((2, 3), np.float64)  # T is float32, from the first input: a float64 output is refused
    with pytest.raises(KernelError, match=r"broadcast: output z must be float32 of shape \(2, 3\), got float64"):
        kernel(x, y, np.zeros(3, np.float32), 3, out)


def test_elementwise_kernels_update_outputs_in_place():
    step = ElementwiseKernel("T grad, T lr", "T param", "param -= lr * grad", "step")
    param = np.ones(4, np.float64)
    step(np.array([1.0, 2.0, 3.0, 4.0]), np.float64(0.5), param)
    assert param.tolist() == [0.5, 0.0, -0.5, -1.0]


def test_reduction_kernels_reduce_over_the_given_axes():
    dot = ReductionKernel("T a, T b", "T total", "a * b", "a + b", "total = a", "0", "dot")
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    b = np.ones_like(a) * 2
    np.testing.assert_array_equal(asnumpy(dot(a, b, axis=(0, 2))), (a * b).sum(axis=(0, 2)))
    assert float(dot(a, b)) == (a * b).sum()
