"""The compiled CPU kernels (dltrain/backend/cpu.py, Numba) and how the backend hands them out.

Each kernel runs both ways it is compiled: on one core (small work, any geometry) and spread over the
cores (large work; window loops compiled per geometry), against the reference kernels (dltrain/backend/reference.py)
with the checks the CUDA kernels pass (tests/kernel_checks.py). The ops' gradient checks and comparisons
with PyTorch run through these kernels too, since they are the CPU's default.
"""

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kernel_checks import check_kernels_against_reference

import dltrain.functional as F
from dltrain import backend
from dltrain.autograd import Tensor
from dltrain.backend import cpu, kernels, reference
from dltrain.errors import DeviceError


class HostArrays:
    """What the shared checks call on an array module, for NumPy arrays (asarray copies, as a device copy does)."""

    asarray = staticmethod(lambda a, dtype=None: np.array(a, dtype=dtype))
    asnumpy = staticmethod(np.asarray)
    empty = staticmethod(np.empty)
    zeros = staticmethod(np.zeros)


@pytest.fixture(params=["one core", pytest.param("all cores", marks=pytest.mark.slow)])
def cores(request, monkeypatch):
    """Run each kernel on one core (small work), or spread over the cores however small the work is."""
    monkeypatch.setattr(cpu, "PARALLEL_WORK", 1 << 62 if request.param == "one core" else 0)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_kernels_match_the_reference(cores, dtype):
    check_kernels_against_reference(HostArrays, cpu, dtype)


def test_kernels_do_not_modify_their_inputs(cores):
    """Chainer's check: inputs come back unchanged (only the arrays a contract names are written)."""
    rng = np.random.default_rng(3)
    image = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)
    before = image.copy()
    columns = cpu.im2col(image, (3, 3), (1, 2), (1, 1), (1, 1), (7, 3))
    out, winner = cpu.max_pool_forward(image, (3, 3), (2, 2), (1, 1), (4, 3))
    mean, inv_std, scale, shift = cpu.batch_norm_statistics(image, None, None, None, None, 1e-5, 0.1)
    grad = rng.standard_normal(image.shape).astype(np.float32)
    grad_before = grad.copy()
    cpu.batch_norm_backward(grad, image, mean, scale, *cpu.batch_norm_backward_statistics(grad, image, mean, scale,
                                                                                            inv_std, True)[2:])
    cpu.relu_backward(grad, image)
    columns_before = columns.copy()
    cpu.col2im(columns, np.empty_like(image), (3, 3), (1, 2), (1, 1), (1, 1), (7, 3))
    upstream = rng.standard_normal(out.shape).astype(np.float32)
    upstream_before, winner_before = upstream.copy(), winner.copy()
    cpu.max_pool_backward(upstream, winner, image.shape, (3, 3), (2, 2), (1, 1), (4, 3))
    for now, then in [(image, before), (grad, grad_before), (columns, columns_before), (upstream, upstream_before),
                      (winner, winner_before)]:
        np.testing.assert_array_equal(now, then)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_kernels_take_non_contiguous_inputs(layout):
    """Views (a transposed or sliced batch) give the results of their contiguous copies."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal((6, 3, 10, 12)).astype(np.float32)
    view = base.transpose(0, 1, 3, 2) if layout == "transposed" else base[::2, :, 1::2, ::3]
    assert not view.flags.c_contiguous
    copy = np.ascontiguousarray(view)
    out_hw = (view.shape[2] - 2, view.shape[3] - 2)
    np.testing.assert_array_equal(cpu.im2col(view, (3, 3), (1, 1), (0, 0), (1, 1), out_hw),
                                  cpu.im2col(copy, (3, 3), (1, 1), (0, 0), (1, 1), out_hw))
    pooled = ((view.shape[2] - 2) // 2 + 1, (view.shape[3] - 2) // 2 + 1)
    for a, b in zip(cpu.max_pool_forward(view, (2, 2), (2, 2), (0, 0), pooled),
                    cpu.max_pool_forward(copy, (2, 2), (2, 2), (0, 0), pooled)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(cpu.batch_norm_statistics(view, None, None, None, None, 1e-5, 0.1),
                    cpu.batch_norm_statistics(copy, None, None, None, None, 1e-5, 0.1)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(cpu.relu_backward(view, view), cpu.relu_backward(copy, copy))


def _channel_major(array):
    """The values of `array` (N, C, ...) in channel-major memory: (C, N, ...) C-contiguous, axes 0 and 1 swapped."""
    return np.ascontiguousarray(array.swapaxes(0, 1)).swapaxes(0, 1)


def _is_channel_major(array):
    return not array.flags.c_contiguous and array.swapaxes(0, 1).flags.c_contiguous


def test_channel_major_arrays_give_the_values_of_their_nchw_copies_in_their_own_order(cores):
    """A convolution's activation on the CPU is its product, (F, N, OH, OW) memory under the (N, F, OH, OW) shape
    (cpu.CHANNEL_MAJOR): every kernel that takes (N, C, ...) arrays gives for it exactly what it gives for the NCHW
    copy, and returns its result channel-major too, so nothing between two convolutions moves the activation."""
    rng = np.random.default_rng(6)
    nchw = rng.standard_normal((5, 3, 9, 8)).astype(np.float32)
    x = _channel_major(nchw)
    assert _is_channel_major(x) and np.array_equal(x, nchw)
    geometry = ((3, 3), (2, 1), (1, 1), (1, 1), (5, 8))
    np.testing.assert_array_equal(cpu.im2col(x, *geometry), cpu.im2col(nchw, *geometry))
    np.testing.assert_array_equal(cpu.im2col(x[1:4], *geometry), cpu.im2col(nchw[1:4], *geometry))  # a chunk
    columns = rng.standard_normal((27, 5 * 5 * 8)).astype(np.float32)
    want, got = np.empty_like(nchw), np.empty_like(x)
    cpu.col2im(columns, want, *geometry)
    cpu.col2im(columns, got, *geometry)
    assert _is_channel_major(got)
    np.testing.assert_array_equal(got, want)
    got = np.empty_like(x)
    cpu.col2im(columns[:, :2 * 40], got[:2], *geometry)  # chunks write their samples of the batch in place
    cpu.col2im(columns[:, 2 * 40:], got[2:], *geometry)
    np.testing.assert_array_equal(got, want)
    upstream = rng.standard_normal(nchw.shape).astype(np.float32)
    for arguments in [(upstream, x), (_channel_major(upstream), x)]:  # an NCHW gradient is put into x's order
        got = cpu.relu_backward(*arguments)
        assert _is_channel_major(got)
        np.testing.assert_array_equal(got, cpu.relu_backward(upstream, nchw))
    pool = ((2, 2), (2, 2), (0, 0), (4, 4))
    (out, winner), (want_out, want_winner) = cpu.max_pool_forward(x, *pool), cpu.max_pool_forward(nchw, *pool)
    assert _is_channel_major(out) and _is_channel_major(winner)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(winner, want_winner)
    g = rng.standard_normal(out.shape).astype(np.float32)
    want = cpu.max_pool_backward(g, want_winner, nchw.shape, *pool)
    for upstream_order in (g, _channel_major(g)):
        got = cpu.max_pool_backward(upstream_order, winner, x.shape, *pool)
        assert _is_channel_major(got)
        np.testing.assert_array_equal(got, want)
    got = cpu.avg_pool_forward(x, *pool, True)
    assert _is_channel_major(got)
    np.testing.assert_array_equal(got, cpu.avg_pool_forward(nchw, *pool, True))
    got = cpu.avg_pool_backward(_channel_major(g), x.shape, *pool, True)
    assert _is_channel_major(got)
    np.testing.assert_array_equal(got, cpu.avg_pool_backward(g, nchw.shape, *pool, True))
    gamma, beta = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    running = [np.zeros(3, np.float32), np.ones(3, np.float32)]
    want_running = [np.zeros(3, np.float32), np.ones(3, np.float32)]
    stats = cpu.batch_norm_statistics(x, gamma, beta, *running, 1e-5, 0.1)
    want_stats = cpu.batch_norm_statistics(nchw, gamma, beta, *want_running, 1e-5, 0.1)
    for a, b in zip(list(stats) + running, list(want_stats) + want_running):  # one row per channel: summed otherwise
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    mean, inv_std, scale, shift = want_stats
    got = cpu.batch_norm_apply(x, scale, shift, True)
    assert _is_channel_major(got)
    np.testing.assert_array_equal(got, cpu.batch_norm_apply(nchw, scale, shift, True))
    sums = cpu.batch_norm_backward_statistics(_channel_major(upstream), x, mean, scale, inv_std, True)
    want_sums = cpu.batch_norm_backward_statistics(upstream, nchw, mean, scale, inv_std, True)
    for a, b in zip(sums, want_sums):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    got = cpu.batch_norm_backward(upstream, x, mean, scale, *want_sums[2:])
    assert _is_channel_major(got)
    np.testing.assert_array_equal(got, cpu.batch_norm_backward(upstream, nchw, mean, scale, *want_sums[2:]))
    filters = cpu.images_to_filters(x)
    assert np.shares_memory(filters, x)  # a view: the gradient GEMMs read the activation's memory as it lies
    np.testing.assert_array_equal(filters, cpu.images_to_filters(nchw))
    np.testing.assert_array_equal(filters, reference.images_to_filters(nchw))
    rows, bias = rng.standard_normal((4, 50)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    rows[1, ::7] = np.nan
    for b, relu in [(bias, True), (bias, False), (None, True), (None, False)]:
        got, want = rows.copy(), rows.copy()
        cpu.bias_relu_rows(got, b, relu)
        reference.bias_relu_rows(want, b, relu)
        np.testing.assert_array_equal(got, want)
        plain = rows + (0 if b is None else b[:, None])
        np.testing.assert_array_equal(want, np.maximum(plain, 0) if relu else plain)
    with pytest.raises(ValueError, match="bias_relu_rows works in place on a C-contiguous array"):
        cpu.bias_relu_rows(rows.T, None, True)


def test_a_convolution_on_the_cpu_is_its_product_and_flatten_makes_the_one_nchw_copy():
    """conv2d's output through the compiled CPU kernels is the GEMM's (F, N*OH*OW) product seen as (N, F, OH, OW);
    batch norm, ReLU and pooling keep that order, a reshape copies it into NCHW; the reference kernels write NCHW."""
    rng = np.random.default_rng(8)
    x = Tensor(rng.standard_normal((3, 2, 6, 6)).astype(np.float32))
    w = Tensor(rng.standard_normal((4, 2, 3, 3)).astype(np.float32))
    h = F.conv2d(x, w, padding=1)
    assert h.shape == (3, 4, 6, 6) and h.data.strides == (36 * 4, 3 * 36 * 4, 6 * 4, 4)
    h = F.max_pool2d(F.relu(F.batch_norm(h, None, None, training=True)), 2)
    assert h.shape == (3, 4, 3, 3) and _is_channel_major(h.data)
    assert h.reshape(3, -1).data.flags.c_contiguous
    with backend.fused_kernels(False):
        assert F.conv2d(x, w, padding=1).data.flags.c_contiguous


@pytest.mark.parametrize("geometry", [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 1))])
def test_ops_through_the_cpu_kernels_equal_the_numpy_reference(geometry, cores):
    """conv2d, max_pool2d, batch_norm, relu, a residual sum, a second convolution (with its ReLU fused) over the
    first one's channel-major activation, average pooling, dropout and cross_entropy: values and every gradient of
    the ops with the compiled kernels equal those of the plain NumPy code (DLTRAIN_FUSED_KERNELS=0), up to float32
    rounding."""
    kernel, stride, padding = geometry
    rng = np.random.default_rng(5)
    arrays = {"x": rng.standard_normal((4, 3, 9, 8)), "w": rng.standard_normal((5, 3, 3, 3)) * 0.3,
              "b": rng.standard_normal(5), "gamma": rng.uniform(0.5, 1.5, 5), "beta": rng.standard_normal(5),
              "w2": rng.standard_normal((5, 5, 3, 3)) * 0.3, "b2": rng.standard_normal(5)}
    labels = rng.integers(0, 10, 4)

    def run():
        backend.manual_seed(0)
        t = {k: Tensor(v.astype(np.float32), requires_grad=True) for k, v in arrays.items()}
        h = F.conv2d(t["x"], t["w"], t["b"], stride=stride, padding=padding)
        h = F.batch_norm(h, np.zeros(5, np.float32), np.ones(5, np.float32), t["gamma"], t["beta"], training=True)
        h = F.max_pool2d(F.relu(h), kernel, stride=stride, padding=padding[0] if kernel[0] == kernel[1] else 0)
        h = h + F.conv2d(h, t["w2"], t["b2"], padding=1, activation="relu")
        h = F.avg_pool2d(h, 1) * 0.5 + h * 0.5
        h = F.dropout(h.reshape(4, -1), 0.25)
        logits = h[:, :10] if h.shape[1] >= 10 else F.cat([h] * (10 // h.shape[1] + 1), axis=1)[:, :10]
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        return [loss.data] + [t[k].grad for k in arrays]

    assert backend.fused(np.zeros(1, np.float32)) is cpu
    fused = run()
    with backend.fused_kernels(False):
        assert backend.fused(np.zeros(1, np.float32)) is None
        plain = run()
    for a, b, name in zip(fused, plain, ["loss", *arrays]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=name)


def test_fused_hands_out_the_cpu_kernels_for_float_numpy_arrays_only():
    assert backend.fused(np.zeros(3, np.float32)) is cpu
    assert backend.fused(np.zeros(3, np.float64)) is cpu
    assert backend.fused(np.zeros(3, np.float16)) is None
    assert backend.fused(np.zeros(3, np.int64)) is None
    assert backend.fused(np.zeros(3).view(np.ndarray)[None]) is cpu


def test_without_numba_the_plain_numpy_code_runs_and_says_so_once(tmp_path):
    """A Python where `import numba` fails: one line on stderr, fused() is None, and training still works."""
    script = ("import sys; sys.modules['numba'] = None\n"
              "import numpy as np\nfrom dltrain import backend\n"
              "assert backend.fused(np.zeros(2, np.float32)) is None\n"
              "assert backend.fused(np.zeros(2, np.float32)) is None\n"
              "import dltrain.functional as F\nfrom dltrain.autograd import Tensor\n"
              "x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)\nF.relu(x).sum().backward()\n"
              "print(x.grad.sum())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6.0"
    assert done.stderr.count("dltrain: Numba is not installed") == 1
    assert "running the plain NumPy code, without the compiled CPU kernels (pip install numba)" in done.stderr


def test_an_empty_kernel_cache_is_announced_once_and_then_filled(tmp_path):
    """With a fresh cache directory the first use says the kernels are being compiled; the next process,
    finding them cached, says nothing."""
    script = ("import numpy as np\nfrom dltrain import backend\n"
              "x = np.ones((4, 5), np.float32)\nbackend.fused(x).relu_backward(x, x)\nbackend.fused(x)\n")
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stderr.count("dltrain: compiling the CPU kernels for this machine (once; cached in") == 1
    assert str(tmp_path / "cache") in first.stderr
    assert "compiling" not in second.stderr


def test_threads_default_to_the_cores_or_dltrain_threads(monkeypatch):
    monkeypatch.delenv("DLTRAIN_THREADS", raising=False)
    monkeypatch.setattr(backend.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert backend.default_threads() == 8
    assert backend.default_threads(local_ranks=3) == 2  # MPI ranks on one machine share its cores
    assert backend.default_threads(local_ranks=16) == 1
    monkeypatch.setenv("DLTRAIN_THREADS", "3")
    assert backend.default_threads(local_ranks=4) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("DLTRAIN_THREADS", bad)
        with pytest.raises(DeviceError) as error:
            backend.default_threads()
        assert str(error.value) == f"DLTRAIN_THREADS must be a whole number of at least 1, got {bad!r}"


def test_apply_threads_sets_blas_and_the_kernels():
    import numba
    from threadpoolctl import threadpool_info

    backend.fused(np.zeros(1, np.float32))  # the kernels are loaded
    try:
        assert backend.apply_threads(1) == 1
        assert numba.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        assert backend.threads() == 1
    finally:
        backend.apply_threads()
    assert numba.get_num_threads() == min(backend.default_threads(), numba.config.NUMBA_NUM_THREADS)


def _signatures(tree: ast.Module) -> dict[str, list[str]]:
    return {node.name: [a.arg for a in node.args.args] for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}


def test_every_kernel_set_implements_the_written_interface():
    """Every function of backend/kernels.py's Protocol exists in reference.py, cpu.py and cuda.py with the same
    arguments (cuda.py is read as source: it needs CuPy to import); what a compiled set takes from the reference
    is the reference's own function."""
    wanted = {name: [p for p in inspect.signature(member).parameters if p != "self"]
              for name, member in vars(kernels.Kernels).items() if inspect.isfunction(member) and name[0] != "_"}
    assert len(wanted) == 32
    assert {"gelu_forward", "avg_pool_backward", "lstm_backward", "layer_norm_backward",
            "bias_relu_rows"} <= set(wanted)
    for module in (reference, cpu):
        for function, parameters in wanted.items():
            assert list(inspect.signature(getattr(module, function)).parameters) == parameters, (module, function)
    tree = ast.parse(Path(backend.__file__).with_name("cuda.py").read_text())
    in_cuda = _signatures(tree)
    taken = {alias.name for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module == "dltrain.backend.reference" for alias in node.names}
    assert taken == {"avg_pool_forward", "avg_pool_backward", "bias_relu_rows", "lookup_rows"}
    for function, parameters in wanted.items():
        assert in_cuda.get(function, parameters if function in taken else None) == parameters, function
    cuda_source = Path(backend.__file__).with_name("cuda.py").read_text()
    assert cpu.MAX_POOL_WINDOW == 255 and "MAX_POOL_WINDOW = 255" in cuda_source
    assert (cpu.CHANNEL_MAJOR, reference.CHANNEL_MAJOR) == (True, False) and "CHANNEL_MAJOR = False" in cuda_source


def test_the_cpu_compiles_every_recurrent_step():
    """The GRU's and the LSTM's steps, forward and backward, are the CPU's own compiled passes, not the reference's
    NumPy code (whose tanh the compiled float32 tanh replaced); in float64 the forward steps hand over to the
    reference (NumPy's float64 tanh is vectorized, libm's is not)."""
    for name in ("gru_forward", "gru_backward", "lstm_forward", "lstm_backward"):
        assert getattr(cpu, name) is not getattr(reference, name), name


# Bounds for the float32 tanh and sigmoid of backend/cpu.py, measured on every float32 on the development machine at
# 1.684e-7, 3.247e-7 and 1.114e-7; with headroom, as another CPU or LLVM may round the polynomials differently.
TANH_ABS, TANH_REL, SIGMOID_ABS = 2.5e-7, 5e-7, 1.5e-7


def _float32_sweep():
    """Every 509th float32 from 0 to +inf (bit patterns, subnormals included), the values where the bounds are
    tight or the rules change, and their negatives."""
    positive = np.arange(0, int(np.float32(np.inf).view(np.uint32)) + 1, 509, dtype=np.uint32).view(np.float32)
    special = np.array([0.0, 1e-45, 1.1754942e-38, 1.1754944e-38, 1e-30, 2.0 ** -13, 2.0 ** -12, 1e-3, 0.5, 1.1027967,
                        2.4506519, 4.0, 9.010913, 9.010914, 9.5, 20.0, 88.7, 1e30, 3.4028235e38, np.inf], np.float32)
    x = np.concatenate([positive, special])
    return np.concatenate([x, -x])


def test_float32_tanh_and_sigmoid_stay_within_their_stated_bounds():
    """The recurrent steps' float32 tanh (a rational approximation LLVM vectorizes) and sigmoid (1 + tanh(x/2)) / 2
    against NumPy in float64, over the whole float32 range: the stated absolute and relative error; exactly odd;
    exactly +-1 where float32 tanh rounds to +-1 (|x| >= 9.010914) and at +-inf; NaN stays NaN; -0.0 stays -0.0;
    subnormal and tiny x come back unchanged (tanh(x) rounds to x below 2^-12)."""
    x = _float32_sweep()
    exact = np.tanh(x.astype(np.float64))
    t = cpu.tanh_values(x)
    assert t.dtype == np.float32
    error = np.abs(t.astype(np.float64) - exact)
    assert error.max() <= TANH_ABS, (error.max(), x[np.argmax(error)])
    nonzero = exact != 0
    assert (error[nonzero] / np.abs(exact[nonzero])).max() <= TANH_REL
    half = x.size // 2
    np.testing.assert_array_equal(t[half:], -t[:half])  # odd, bit for bit (-0.0 included)
    np.testing.assert_array_equal(np.signbit(t), np.signbit(x))
    assert np.all(np.abs(t) <= 1)
    saturated = np.abs(x) >= np.float32(9.010914)
    assert saturated.any() and np.all(t[saturated] == np.sign(x[saturated]))
    np.testing.assert_array_equal(exact[saturated].astype(np.float32), t[saturated])  # where float32 tanh is +-1
    tiny = np.abs(x) < 2.0 ** -12
    assert np.any(tiny & (x != 0)) and np.all(t[tiny] == x[tiny])
    nan = np.array([np.nan, -np.nan, np.float32(np.nan) * 0], np.float32)
    assert np.all(np.isnan(cpu.tanh_values(nan))) and np.all(np.isnan(cpu.sigmoid_values(nan)))

    s = cpu.sigmoid_values(x)
    with np.errstate(over="ignore"):
        exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert np.abs(s - exact).max() <= SIGMOID_ABS
    assert np.all((s >= 0) & (s <= 1))
    assert cpu.sigmoid_values(np.array([-np.inf, 0, np.inf], np.float32)).tolist() == [0, 0.5, 1]


def test_float64_tanh_and_sigmoid_are_libms():
    """float64 steps keep libm's tanh (gradient checks want every digit)."""
    x = np.concatenate([np.linspace(-30, 30, 10001), [0.0, -0.0, 1e-300, np.inf, -np.inf]])
    np.testing.assert_allclose(cpu.tanh_values(x), np.tanh(x), rtol=1e-15, atol=0)
    np.testing.assert_allclose(cpu.sigmoid_values(x), (np.tanh(0.5 * x) + 1) * 0.5, rtol=0, atol=1e-15)
    assert np.isnan(cpu.tanh_values(np.array([np.nan]))[0])


def test_the_float32_tanh_loop_vectorizes():
    """The point of the rational tanh: compiled with the kernels' flags, the loop over float32 values runs on vectors
    (LLVM's <N x float> divisions), not value by value."""
    import numba

    loop = numba.njit(**{**cpu._OPTIONS, "cache": False})(cpu._tanh_loop.serial.py_func)
    x = np.linspace(-5, 5, 100, dtype=np.float32)
    out = np.empty_like(x)
    loop(x, out)
    np.testing.assert_array_equal(out, cpu.tanh_values(x))
    ir = loop.inspect_llvm(loop.signatures[0])
    assert re.search(r"fdiv [a-z ]*<(4|8|16|32) x float>", ir), "the float32 tanh loop was not vectorized"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch, hidden, scale", [(3, 5, 1.0), (1, 37, 1.0), (6, 16, 12.0)])
def test_recurrent_steps_match_the_reference_on_odd_shapes(cores, dtype, batch, hidden, scale):
    """Each compiled step against the reference: odd batch and unit counts (a vector's width and its remainder),
    time slices as functional/recurrent.py passes them (rows T * G * H values apart) next to contiguous arrays, with
    and without bias and a next step, saturated gates; the LSTM's backward also with d_in the very array d_gates
    (the time-major sequences pass it so). Inputs come back unchanged."""
    rng = np.random.default_rng(batch * 100 + hidden)

    def normal(*shape):  # pre-activations and gradients; scaled up, the gates saturate
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def unit(*shape):  # gate activations
        return rng.uniform(0.02, 0.98, shape).astype(dtype)

    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}

    def check(function, arguments, written):
        """Runs `function` of the reference and of the CPU kernels on copies of `arguments` (3-D ones as the time
        slice [:, 2]); the arrays at the `written` positions must agree, the others be left alone."""
        runs = []
        for module in (reference, cpu):
            copies = [a.copy() if isinstance(a, np.ndarray) else a for a in arguments]
            views = [c[:, 2] if isinstance(a, np.ndarray) and a.ndim == 3 else c for a, c in zip(arguments, copies)]
            getattr(module, function)(*views)
            runs.append(copies)
        for k, (want, got, given) in enumerate(zip(*runs, arguments)):
            if not isinstance(given, np.ndarray):
                continue
            if k in written:
                np.testing.assert_allclose(got, want, **tol, err_msg=f"{function}: argument {k}")
            else:
                np.testing.assert_array_equal(got, given, err_msg=f"{function}: argument {k} was modified")

    h3 = 3 * hidden
    for bias in (normal(h3), None):
        # gru_forward(step_in, gh, bias, h, h_new, rz, n): step_in a time slice; gh gets the bias added
        check("gru_forward", [normal(batch, 4, h3), normal(batch, h3), bias, normal(batch, hidden),
                              np.zeros((batch, hidden), dtype), np.zeros((batch, 2 * hidden), dtype),
                              np.zeros((batch, hidden), dtype)], written={1, 4, 5, 6})
    for has_next in (True, False):
        # gru_backward(grad, carried, direct, has_next, h, rz, n, gh, d_in, d_gh): grad and d_in time slices
        check("gru_backward", [normal(batch, 4, hidden), normal(batch, hidden), normal(batch, hidden), has_next,
                               normal(batch, hidden), unit(batch, 2 * hidden), unit(batch, hidden) * 2 - 1,
                               normal(batch, h3), np.zeros((batch, 4, h3), dtype), np.zeros((batch, h3), dtype)],
              written={2, 8, 9})
    h4 = 4 * hidden
    for bias in (normal(h4), None):
        # lstm_forward(step_in, gates, bias, c_prev, h_new, c_new)
        check("lstm_forward", [normal(batch, 4, h4), normal(batch, h4), bias, normal(batch, hidden),
                               np.zeros((batch, hidden), dtype), np.zeros((batch, hidden), dtype)], written={1, 4, 5})
    acts = np.concatenate([unit(batch, 2 * hidden), unit(batch, hidden) * 2 - 1, unit(batch, hidden)], axis=1)
    for has_next in (True, False):
        # lstm_backward(grad_h, grad_c, carried, dc_next, has_next, acts, c_prev, c_new, d_in, d_gates)
        grads = normal(2, batch, 4, hidden)
        arguments = [grads[0], grads[1], normal(batch, hidden), normal(batch, hidden), has_next, acts,
                     normal(batch, hidden), normal(batch, hidden), np.zeros((batch, 4, h4), dtype),
                     np.zeros((batch, h4), dtype)]
        check("lstm_backward", arguments, written={3, 8, 9})
        results = []
        for module in (reference, cpu):
            dc_next, d_gates = arguments[3].copy(), np.zeros((batch, h4), dtype)
            module.lstm_backward(grads[0][:, 2], grads[1][:, 2], arguments[2], dc_next, has_next, *arguments[5:8],
                                 d_gates, d_gates)
            results.append((dc_next, d_gates))
        for a, b in zip(*results):
            np.testing.assert_allclose(b, a, **tol, err_msg="lstm_backward with d_in = d_gates")
