"""conv2d and pooling against plain nested-loop references (forward and backward), and finite differences."""

import numpy as np
import pytest

import dltrain
import dltrain.functional as F
from dltrain.errors import ShapeError
from dltrain.functional import conv as conv_module
from dltrain.gradcheck import check_gradients

R = np.random.default_rng(21)


def reference_conv2d(x, w, b, stride, padding, dilation):
    n, c, h, width = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, f, oh, ow))
    for ni in range(n):
        for fi in range(f):
            for i in range(oh):
                for j in range(ow):
                    total = 0.0 if b is None else b[fi]
                    for ci in range(c):
                        for a in range(kh):
                            for d in range(kw):
                                row, col = i * stride + a * dilation, j * stride + d * dilation
                                total += w[fi, ci, a, d] * xp[ni, ci, row, col]
                    out[ni, fi, i, j] = total
    return out


def reference_pool(x, k, stride, padding, reduce):
    n, c, h, width = x.shape
    fill = -np.inf if reduce is np.max else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=fill)
    oh = (h + 2 * padding - k) // stride + 1
    ow = (width + 2 * padding - k) // stride + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k], axis=(2, 3))
    return out


CONV_CASES = [  # (x shape, w shape, stride, padding, dilation, bias)
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 0, 1, True),
    ((1, 2, 8, 8), (3, 2, 3, 3), 2, 1, 1, True),
    ((2, 1, 9, 7), (2, 1, 2, 3), 3, 2, 1, False),
    ((1, 2, 9, 9), (2, 2, 3, 3), 1, 2, 2, True),
    ((3, 2, 5, 5), (1, 2, 5, 5), 1, 0, 1, True),  # kernel = image
    ((2, 2, 6, 5), (3, 2, 2, 3), 1, 1, 1, False),  # an even kernel height
    ((2, 2, 4, 5), (3, 2, 1, 1), 1, 1, 1, True),  # padding beyond the kernel's reach
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_nested_loops_forward(case):
    xs, ws, stride, padding, dilation, bias = case
    x, w = R.standard_normal(xs), R.standard_normal(ws)
    b = R.standard_normal(ws[0]) if bias else None
    with dltrain.backend.default_dtype_as(np.float64):
        out = F.conv2d(dltrain.tensor(x), w, b, stride=stride, padding=padding, dilation=dilation)
    np.testing.assert_allclose(out.numpy(), reference_conv2d(x, w, b, stride, padding, dilation), atol=1e-10)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients(case, device):
    xs, ws, stride, padding, dilation, bias = case
    arrays = [R.standard_normal(xs), R.standard_normal(ws)] + ([R.standard_normal(ws[0])] if bias else [])
    check_gradients(lambda x, w, *b: F.conv2d(x, w, *b, stride=stride, padding=padding, dilation=dilation), arrays,
                    device=device)


def test_conv2d_backward_matches_nested_loop_reference():
    """Input gradient of the loop reference by its own finite differences is too slow; use linearity:
    the gradient of sum(r * conv(x)) wrt x equals the transposed convolution, computed by loops here."""
    x, w = R.standard_normal((2, 2, 6, 5)), R.standard_normal((3, 2, 3, 2))
    stride, padding = 2, 1
    with dltrain.backend.default_dtype_as(np.float64):
        xt = dltrain.tensor(x, requires_grad=True)
        wt = dltrain.tensor(w, requires_grad=True)
        out = F.conv2d(xt, wt, stride=stride, padding=padding)
        r = R.standard_normal(out.shape)
        out.backward(r)
    grad_x = np.zeros((2, 2, 6 + 2, 5 + 2))
    grad_w = np.zeros_like(w)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for n in range(2):
        for f in range(3):
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    window = (slice(i * stride, i * stride + 3), slice(j * stride, j * stride + 2))
                    grad_x[n, :, window[0], window[1]] += r[n, f, i, j] * w[f]
                    grad_w[f] += r[n, f, i, j] * xp[n, :, window[0], window[1]]
    np.testing.assert_allclose(xt.grad, grad_x[:, :, 1:-1, 1:-1], atol=1e-10)
    np.testing.assert_allclose(wt.grad, grad_w, atol=1e-10)


@pytest.mark.parametrize("stride, padding", [(1, 1), (1, 0), (2, 1), (1, 3)])
def test_conv2d_input_gradient_is_the_transposed_convolution(stride, padding, device):
    """The input gradient (im2col's column gradients summed back by col2im) equals the nested-loop transposed
    convolution, padding wider than the kernel's reach included."""
    x, w = R.standard_normal((2, 3, 6, 5)), R.standard_normal((4, 3, 3, 3))
    with dltrain.backend.default_dtype_as(np.float64):
        xt = dltrain.tensor(x, device=device, requires_grad=True)
        out = F.conv2d(xt, dltrain.tensor(w, device=device), stride=stride, padding=padding)
        r = R.standard_normal(out.shape)
        out.backward(dltrain.backend.to_device(r, device))
    grad_x = np.zeros((2, 3, 6 + 2 * padding, 5 + 2 * padding))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            grad_x[:, :, i * stride:i * stride + 3, j * stride:j * stride + 3] += np.einsum("nf,fcab->ncab",
                                                                                          r[:, :, i, j], w)
    inner = grad_x[:, :, padding:padding + 6, padding:padding + 5]
    np.testing.assert_allclose(dltrain.backend.to_numpy(xt.grad), inner, atol=1e-10)


def test_conv2d_chunks_give_the_same_result(monkeypatch, device):
    x, w, b = R.standard_normal((5, 2, 6, 6)), R.standard_normal((3, 2, 3, 3)), R.standard_normal(3)
    monkeypatch.setattr(conv_module, "COLUMN_BUDGET", 2 * 18 * 36)  # with a gradient: two samples per chunk
    monkeypatch.setattr(conv_module, "INFERENCE_COLUMN_BUDGET", 3 * 18 * 36)  # without: three
    kernels = dltrain.backend.kernels_for(dltrain.tensor(x, device=device).data)
    original, chunks = kernels.im2col, []
    monkeypatch.setattr(kernels, "im2col", lambda image, *geometry: chunks.append(len(image)) or original(image,
                                                                                                        *geometry))
    for requires_grad, expected_chunks in ((True, [2, 2, 1]), (False, [3, 2])):
        chunks.clear()
        with dltrain.backend.default_dtype_as(np.float64):
            args = [dltrain.tensor(a, device=device, requires_grad=requires_grad) for a in (x, w, b)]
            chunked = dltrain.backend.to_numpy(F.conv2d(*args, padding=1).data)
        np.testing.assert_allclose(chunked, reference_conv2d(x, w, b, 1, 1, 1), atol=1e-12)
        assert chunks == expected_chunks
    monkeypatch.setattr(conv_module, "COLUMN_BUDGET", 18 * 36)  # one sample per chunk
    check_gradients(lambda x, w, b: F.conv2d(x, w, b, padding=1), [x[:3], w, b], device=device)


@pytest.mark.parametrize("k, stride, padding", [(2, 2, 0), (3, 2, 1), (3, 1, 0), (2, 3, 1)])
def test_pools_match_nested_loops(k, stride, padding):
    x = R.standard_normal((2, 3, 7, 8))
    with dltrain.backend.default_dtype_as(np.float64):
        mx = F.max_pool2d(dltrain.tensor(x), k, stride, padding).numpy()
        av = F.avg_pool2d(dltrain.tensor(x), k, stride, padding).numpy()
    np.testing.assert_allclose(mx, reference_pool(x, k, stride, padding, np.max))
    np.testing.assert_allclose(av, reference_pool(x, k, stride, padding, np.sum) / (k * k))


@pytest.mark.parametrize("k, stride, padding", [(2, 2, 0), (3, 2, 1), (3, 1, 0)])
def test_pool_gradients(k, stride, padding, device):
    x = R.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) * 0.1  # distinct values: no ties near the step
    check_gradients(lambda t: F.max_pool2d(t, k, stride, padding), [x], device=device)
    check_gradients(lambda t: F.avg_pool2d(t, k, stride, padding), [R.standard_normal((2, 2, 5, 6))], device=device)
    check_gradients(lambda t: F.avg_pool2d(t, k, stride, padding, count_include_pad=False),
                    [R.standard_normal((1, 2, 5, 6))], device=device)


def test_max_pool_routes_a_tie_to_exactly_one_input():
    x = dltrain.tensor(np.ones((1, 1, 2, 2), np.float32), requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    assert x.grad.sum() == 1.0 and x.grad[0, 0, 0, 0] == 1.0


def test_overlapping_max_pool_gradient_sums_per_input():
    x = np.array([[[[0.0, 5.0, 1.0], [2.0, 3.0, 4.0], [6.0, 0.5, 7.0]]]])
    t = dltrain.tensor(x, requires_grad=True)
    F.max_pool2d(t, 2, stride=1).sum().backward()
    # windows' maxima: 5, 5, 6, 7 -> input 5 gets two gradients
    np.testing.assert_array_equal(t.grad[0, 0], [[0, 2, 0], [0, 0, 0], [1, 0, 1]])


def test_global_avg_pool():
    x = R.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(F.global_avg_pool(dltrain.tensor(x)).numpy(), x.mean(axis=(2, 3)), rtol=1e-6)
    check_gradients(F.global_avg_pool, [x])


def test_kernel_larger_than_input_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"conv2d: kernel \(5, 5\) .* is larger than the padded input \(3, 3\)"):
        F.conv2d(dltrain.tensor(np.zeros((1, 1, 3, 3))), np.zeros((1, 1, 5, 5)))
    with pytest.raises(ShapeError, match="expects 2 input channels"):
        F.conv2d(dltrain.tensor(np.zeros((1, 1, 3, 3))), np.zeros((1, 2, 1, 1)))
