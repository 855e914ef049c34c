"""The compiled CPU kernels (dltrain/backend/cpu.py, Numba) and how the backend hands them out.

Each kernel runs both ways it is compiled: on one core (small work, any geometry) and spread over the
cores (large work; window loops compiled per geometry), against the reference kernels (dltrain/backend/reference.py)
with the checks the CUDA kernels pass (tests/kernel_checks.py). The ops' gradient checks and comparisons
with PyTorch run through these kernels too, since they are the CPU's default.
"""

import ast
import inspect
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


@pytest.mark.parametrize("geometry", [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 1))])
def test_ops_through_the_cpu_kernels_equal_the_numpy_reference(geometry, cores):
    """conv2d, max_pool2d, batch_norm, relu, dropout and cross_entropy: values and every gradient of the ops with
    the compiled kernels equal those of the plain NumPy code (DLTRAIN_FUSED_KERNELS=0), up to float32 rounding."""
    kernel, stride, padding = geometry
    rng = np.random.default_rng(5)
    arrays = {"x": rng.standard_normal((4, 3, 9, 8)), "w": rng.standard_normal((5, 3, 3, 3)) * 0.3,
              "b": rng.standard_normal(5), "gamma": rng.uniform(0.5, 1.5, 5), "beta": rng.standard_normal(5)}
    labels = rng.integers(0, 10, 4)

    def run():
        backend.manual_seed(0)
        t = {k: Tensor(v.astype(np.float32), requires_grad=True) for k, v in arrays.items()}
        h = F.conv2d(t["x"], t["w"], t["b"], stride=stride, padding=padding)
        h = F.batch_norm(h, np.zeros(5, np.float32), np.ones(5, np.float32), t["gamma"], t["beta"], training=True)
        h = F.max_pool2d(F.relu(h), kernel, stride=stride, padding=padding[0] if kernel[0] == kernel[1] else 0)
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
    assert len(wanted) == 30
    assert {"gelu_forward", "avg_pool_backward", "lstm_backward", "layer_norm_backward"} <= set(wanted)
    for module in (reference, cpu):
        for function, parameters in wanted.items():
            assert list(inspect.signature(getattr(module, function)).parameters) == parameters, (module, function)
    tree = ast.parse(Path(backend.__file__).with_name("cuda.py").read_text())
    in_cuda = _signatures(tree)
    taken = {alias.name for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module == "dltrain.backend.reference" for alias in node.names}
    assert taken == {"avg_pool_forward", "avg_pool_backward"}
    for function, parameters in wanted.items():
        assert in_cuda.get(function, parameters if function in taken else None) == parameters, function
    assert cpu.MAX_POOL_WINDOW == 255 and "MAX_POOL_WINDOW = 255" in Path(backend.__file__).with_name(
        "cuda.py").read_text()


def test_the_cpu_takes_the_reference_steps_that_need_tanh():
    """A compiled loop calls tanh value by value, NumPy's is vectorized: the CPU takes the reference's forward steps
    and LSTM backward step, and compiles the GRU's backward step (arithmetic only)."""
    for name in ("gru_forward", "lstm_forward", "lstm_backward"):
        assert getattr(cpu, name) is getattr(reference, name)
    assert cpu.gru_backward is not reference.gru_backward
