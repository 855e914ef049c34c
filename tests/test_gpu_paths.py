"""The GPU code paths.

Everywhere: the ops' gradients through the reference kernels (backend/reference.py), training through the
compiled kernels against training through the reference; the deferred loss reads of the GPU loop run on the
CPU too; each CUDA kernel, compiled for the CPU (tests/cuda_on_cpu.py), is checked against the reference;
and the training tests run on the stand-in GPU of tests/fake_cupy.py, whose
arrays refuse host arrays as CuPy's do, through those same compiled kernels. Where CuPy finds a GPU,
the same tests run on it too.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from kernel_checks import check_kernels_against_reference

import dltrain.functional as F
from dltrain import backend
from dltrain.autograd import Tensor
from dltrain.config import validate
from dltrain.gradcheck import check_gradients
from dltrain.inference.evaluate import evaluate_checkpoint
from dltrain.optim.optimizers import SGD, Adam, AdamW
from dltrain.training import rundir as files
from dltrain.training.checkpoint import load_checkpoint
from dltrain.training.reporting import SilentReporter
from dltrain.training.trainer import DEVICE_READ_EVERY, Diverged, Trainer

needs_gpu = pytest.mark.skipif(not backend.gpu_available(), reason=f"no GPU here: {backend.gpu_unavailable_reason()}")

R = np.random.default_rng(11)

BLOBS = {
    "seed": 5,
    "data": {"name": "blobs", "n_samples": 400, "classes": 4, "spread": 1.5},
    "model": [{"linear": {"units": 32}}, "relu", {"dropout": {"rate": 0.2}}, {"linear": {"units": 4}}],
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.001},
    "training": {"epochs": 3, "batch_size": 16, "early_stopping": False},
}


def config(**changes):
    values = json.loads(json.dumps(BLOBS))
    values.update(changes)
    return validate(values, {}, "test")


def trained(cfg, run_dir, device="cpu", defer=None, resume=None):
    trainer = Trainer(cfg, files.RunDir(run_dir), device, SilentReporter(), resume=resume)
    trainer.setup()
    if defer is not None:
        trainer.defer_loss_reads = defer
    if resume is None:
        trainer.run.create()
    trainer.fit()
    return trainer


def metrics(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in files.RunDir(run_dir).read_metrics()]


def close_metrics(a, b, rtol):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for key in row_a:
            if row_a[key] != "":
                assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=rtol, abs=rtol), key


# ---------------------------------------------------------------- the ops through each kernel set, on the CPU


@pytest.mark.parametrize("name, fn, arrays", [
    ("relu", F.relu, [np.where(np.abs(a := R.standard_normal((4, 5))) < 0.05, 0.1, a)]),
    ("dropout", lambda x: (backend.manual_seed(2), F.dropout(x, 0.3))[1], [R.standard_normal((6, 5))]),
    ("gelu", F.gelu, [R.standard_normal((4, 5)) * 2]),
    ("cross_entropy", lambda x: F.cross_entropy(x, np.array([0, 3, 1, 1, 2])), [R.standard_normal((5, 4))]),
    ("conv2d", lambda x, w: F.conv2d(x, w, stride=2, padding=1), [R.standard_normal((2, 3, 7, 6)),
                                                                  R.standard_normal((4, 3, 3, 3))]),
    ("conv2d_dilated", lambda x, w: F.conv2d(x, w, dilation=2), [R.standard_normal((2, 2, 7, 7)),
                                                                 R.standard_normal((3, 2, 2, 3))]),
    ("max_pool_disjoint", lambda x: F.max_pool2d(x, 2), [R.permutation(2 * 3 * 6 * 7).reshape(2, 3, 6, 7) * 0.1]),
    ("max_pool_overlapping_padded", lambda x: F.max_pool2d(x, 3, stride=2, padding=1),
     [R.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) * 0.1]),
    ("avg_pool_padded", lambda x: F.avg_pool2d(x, 3, stride=2, padding=1), [R.standard_normal((2, 2, 7, 6))]),
    ("avg_pool_inside_only", lambda x: F.avg_pool2d(x, (3, 2), stride=(1, 2), padding=1, count_include_pad=False),
     [R.standard_normal((2, 2, 5, 6))]),
    ("batch_norm", lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True),
     [R.standard_normal((4, 3, 2, 2)), R.uniform(0.5, 1.5, 3), R.standard_normal(3)]),
    ("gru", lambda x, h0, w_ih, w_hh, b_ih, b_hh: F.gru(x, h0, w_ih, w_hh, b_ih, b_hh)[0],
     [R.standard_normal((2, 4, 3)), R.standard_normal((2, 5)), R.standard_normal((15, 3)),
      R.standard_normal((15, 5)), R.standard_normal(15), R.standard_normal(15)]),
    ("lstm", lambda x, h0, c0, w_ih, w_hh, b: F.lstm(x, (h0, c0), w_ih, w_hh, b)[0],
     [R.standard_normal((2, 4, 3)), R.standard_normal((2, 5)), R.standard_normal((2, 5)),
      R.standard_normal((20, 3)), R.standard_normal((20, 5)), R.standard_normal(20)]),
])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
def test_ops_have_correct_gradients_through_each_kernel_set(name, fn, arrays, compiled):
    with backend.fused_kernels(compiled):
        check_gradients(fn, arrays)


def test_ops_through_the_compiled_kernels_give_the_values_of_the_reference():
    x = R.standard_normal((6, 4)).astype(np.float32)
    labels = np.array([0, 1, 3, 3, 2, 0])
    with backend.fused_kernels(False):
        plain = F.cross_entropy(x, labels).data
    fused = F.cross_entropy(x, labels).data
    np.testing.assert_allclose(fused, plain, rtol=1e-6)
    images = np.round(R.standard_normal((2, 3, 7, 8)), 1).astype(np.float32)  # ties: the first offset wins
    for kernel, stride, padding in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 3, 1)]:
        results = []
        for fused in (False, True):
            with backend.fused_kernels(fused):
                x = Tensor(images.copy(), requires_grad=True)
                out = F.max_pool2d(x, kernel, stride, padding)
                out.backward(np.arange(out.size, dtype=np.float32).reshape(out.shape))
            results.append((out.data, x.grad))
        np.testing.assert_array_equal(results[1][0], results[0][0])
        np.testing.assert_array_equal(results[1][1], results[0][1])


@pytest.mark.parametrize("shape, training, affine", [((5, 3, 4, 2), True, True), ((6, 4), True, False),
                                                      ((5, 3, 4, 2), False, True)])
def test_compiled_batch_norm_matches_the_reference(shape, training, affine):
    x0 = R.standard_normal(shape).astype(np.float32) * 3 + 1
    gamma0, beta0 = R.standard_normal(shape[1]).astype(np.float32), R.standard_normal(shape[1]).astype(np.float32)
    upstream = R.standard_normal(shape).astype(np.float32)
    results = []
    for fused in (False, True):
        x = Tensor(x0.copy(), requires_grad=True)
        gamma, beta = Tensor(gamma0.copy(), requires_grad=True), Tensor(beta0.copy(), requires_grad=True)
        running = [np.full(shape[1], 0.5, np.float32), np.full(shape[1], 2.0, np.float32)]
        with backend.fused_kernels(fused):
            out = F.batch_norm(x, *running, gamma if affine else None, beta if affine else None, training=training)
            out.backward(upstream)
        grads = [x.grad] + ([gamma.grad, beta.grad] if affine else [])
        results.append([out.data, *grads, *running])
    for plain, fused in zip(*results):
        np.testing.assert_allclose(fused, plain, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("optimizer", [
    lambda ps: SGD(ps, lr=0.1),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: Adam(ps, lr=0.01, weight_decay=0.01),
    lambda ps: AdamW(ps, lr=0.01),
])
@pytest.mark.parametrize("way", ["gathered", "parts", "compiled", "each"])
def test_every_way_of_updating_gives_the_same_steps(monkeypatch, way, optimizer):
    """The GPU's way (all gradients gathered into one buffer), the CPU's (each parameter's part of the flat buffers
    in turn, reference or compiled) and one parameter at a time (some parameter has no gradient) take the same
    steps as the reference kernels over the flat buffers, state slots included."""
    from dltrain.layers.module import Parameter

    shapes = [(5, 3), (5,), (2, 5)]
    start = [R.standard_normal(s) for s in shapes]
    grads = [[R.standard_normal(s) for s in shapes] for _ in range(3)]

    def run(way):
        params = [Parameter(a.copy(), decay=len(a.shape) > 1) for a in start]
        params.append(Parameter(np.zeros(2)))  # without a gradient in the "each" way
        opt = optimizer(params if way == "each" else params[:-1])
        with backend.fused_kernels(way == "compiled"):
            for step_grads in grads:
                for p, g in zip(params, step_grads):
                    p.grad = g.copy()
                opt.step()
        state = opt.state_dict()
        state["slots"] = {k: v for k, v in state["slots"].items() if not k.endswith("/3")}
        return [p.data.copy() for p in params[:-1]], state

    with monkeypatch.context() as patch:
        if way == "gathered":
            patch.setattr(backend.reference, "GATHER_GRADIENTS", True)
        params, state = run(way)
    want_params, want_state = run("parts")
    for a, b in zip(params, want_params):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert set(state["slots"]) == set(want_state["slots"])
    for key, array in want_state["slots"].items():
        np.testing.assert_allclose(state["slots"][key], array, rtol=1e-12, atol=1e-12)


def test_training_through_the_compiled_kernels_matches_the_reference(tmp_path):
    cfg = config()
    with backend.fused_kernels(False):
        trained(cfg, tmp_path / "plain")
    trained(cfg, tmp_path / "fused")
    close_metrics(metrics(tmp_path / "fused"), metrics(tmp_path / "plain"), rtol=1e-5)


def test_flat_buffers_are_rebuilt_after_resuming(tmp_path):
    cfg = config(optimizer={"name": "adamw", "lr": 0.01})
    trained(cfg, tmp_path / "whole")
    short = config(optimizer={"name": "adamw", "lr": 0.01}, training={**BLOBS["training"], "epochs": 2})
    trained(short, tmp_path / "parts")
    trained(cfg, tmp_path / "parts", resume=load_checkpoint(tmp_path / "parts" / files.LAST))
    assert metrics(tmp_path / "parts") == metrics(tmp_path / "whole")


# ---------------------------------------------------------------- losses read from the device every few steps


def test_deferred_loss_reads_give_the_same_metrics(tmp_path):
    cfg = config(training={**BLOBS["training"], "batch_size": 4})  # 80 steps: more than one read per epoch
    assert len(BLOBS["model"]) and 320 // 4 > DEVICE_READ_EVERY
    trained(cfg, tmp_path / "every_step", defer=False)
    trained(cfg, tmp_path / "deferred", defer=True)
    assert metrics(tmp_path / "deferred") == metrics(tmp_path / "every_step")


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_deferred_reads_name_the_step_whose_loss_was_not_finite(tmp_path, grad_clip):
    cfg = config(loss="mse", model=[{"linear": {"units": 1}}], optimizer={"name": "sgd", "lr": 0.01},
                 data={"name": "blobs", "n_samples": 400, "classes": 2, "normalize_targets": False},
                 training={"epochs": 1, "batch_size": 4, "shuffle": False, "early_stopping": False,
                           "grad_clip": grad_clip})
    messages = []
    for defer in (False, True):
        trainer = Trainer(cfg, files.RunDir(tmp_path / f"run{defer}"), "cpu", SilentReporter())
        trainer.setup()
        trainer.defer_loss_reads = defer
        trainer.run.create()
        trainer.splits.train.x[70 * 4 + 1] = np.inf  # a sample of step 71
        with pytest.raises(Diverged) as caught:
            trainer.fit()
        messages.append(str(caught.value))
    assert "loss became inf at epoch 1, step 71 " in messages[0]
    assert "loss became inf at epoch 1, step 71 " in messages[1]
    assert "first non-finite: the output of model[0].linear" in messages[0]
    # the weights took the infinite step before the loss was read: said so, instead of a wrong layer
    assert f"not traced: the weights were already non-finite when it was read (on the GPU losses are read " \
           f"every {DEVICE_READ_EVERY} steps" in messages[1]


def test_clipping_on_the_device_scales_like_clipping_on_the_host():
    from dltrain.layers.module import Parameter
    from dltrain.optim import clip_grad_norm

    for max_norm in (0.5, 100.0):
        results = []
        for read in (True, False):
            params = [Parameter(np.zeros((3, 2), np.float32)), Parameter(np.zeros(4, np.float32))]
            params[0].grad = np.arange(6, dtype=np.float32).reshape(3, 2)
            params[1].grad = -np.ones(4, np.float32)
            norm = clip_grad_norm(params, max_norm, read=read)
            results.append((float(norm), [p.grad.copy() for p in params]))
        assert results[0][0] == results[1][0] == pytest.approx(np.sqrt(55 + 4))
        for host, device in zip(results[0][1], results[1][1]):
            np.testing.assert_array_equal(device, host)


# ---------------------------------------------------------------- the CUDA kernels: on a GPU, and on the CPU


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_kernels_match_the_reference(cuda_kernels, dtype):
    """Each CUDA kernel against the reference kernels: on the GPU, and compiled for the CPU (tests/cuda_on_cpu.py)."""
    check_kernels_against_reference(*cuda_kernels, dtype)


@pytest.mark.parametrize("model, optimizer", [
    ([{"linear": {"units": 32}}, "relu", {"linear": {"units": 4}}], {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
    ([{"linear": {"units": 32}}, "tanh", {"batchnorm": {}}, {"linear": {"units": 4}}], {"name": "adam", "lr": 0.01}),
])
def test_cpu_and_gpu_train_alike(tmp_path, gpu, model, optimizer):
    """Same seed and config (no dropout: the devices draw different masks): the same losses within float32."""
    cfg = config(model=model, optimizer=optimizer, training={**BLOBS["training"], "epochs": 2})
    trained(cfg, tmp_path / "cpu", "cpu")
    trained(cfg, tmp_path / "gpu", gpu)
    close_metrics(metrics(tmp_path / "gpu"), metrics(tmp_path / "cpu"), rtol=1e-4)


def test_checkpoints_move_between_cpu_and_gpu(tmp_path, gpu):
    cfg = config()
    for trained_on, evaluated_on in ((gpu, "cpu"), ("cpu", gpu)):
        trainer = trained(cfg, tmp_path / trained_on, trained_on)
        summary = json.loads((tmp_path / trained_on / files.SUMMARY).read_text())
        report = evaluate_checkpoint(tmp_path / trained_on / files.BEST, "test", device=evaluated_on)
        assert report["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
        assert trainer.device == trained_on


def test_fused_and_plain_gpu_code_train_alike(tmp_path, gpu):
    cfg = config(model=[{"conv2d": {"filters": 4, "kernel_size": 3, "padding": 1}}, "relu",
                        {"max_pool2d": {"kernel_size": 2}}, "flatten", {"linear": {"units": 4}}],
                 data={"name": "npz", "path": str(_images(tmp_path))})
    with backend.fused_kernels(False):
        trained(cfg, tmp_path / "plain", gpu)
    trained(cfg, tmp_path / "fused", gpu)
    close_metrics(metrics(tmp_path / "fused"), metrics(tmp_path / "plain"), rtol=1e-4)


def _images(tmp_path):
    x = R.standard_normal((200, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(np.int64) + 2 * (x[:, 0, :, :4].mean(axis=(1, 2)) > 0)
    path = tmp_path / "images.npz"
    np.savez(path, x=x[:150], y=y[:150], x_test=x[150:], y_test=y[150:])
    return path


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    """Fashion-MNIST-shaped data, small: 1x28x28 images of 10 classes."""
    rng = np.random.default_rng(0)
    y = np.arange(300) % 10
    x = rng.normal(size=(300, 1, 28, 28)).astype(np.float32) * 0.5 + y[:, None, None, None] / 10
    path = tmp_path_factory.mktemp("data") / "images.npz"
    np.savez(path, x=x[:240], y=y[:240], x_test=x[240:], y_test=y[240:])
    return path


SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_trains_on_the_gpu_through_the_cli(tmp_path, gpu, small_images, name):
    """One short epoch of each shipped config with --device gpu (image configs on small images of the same
    shape); its checkpoint then evaluates on the CPU to the test accuracy the GPU run reported."""
    from typer.testing import CliRunner

    from dltrain.cli import app

    config = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    overrides = ["--set", "training.epochs=1", "--set", "training.batch_size=32"]
    if "fashion" in name:
        overrides += ["--set", f"data={{name: npz, path: '{small_images}', val_fraction: 0.1}}"]
    if "wordlists" in name:
        if not Path("/usr/share/dict/ngerman").is_file():
            pytest.skip("Debian's word lists are not installed (apt-get install wamerican wngerman wfrench "
                        "wspanish witalian wportuguese wdutch)")
        overrides += ["--set", "data.words_per_language=30"]
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--device", gpu, "--run-dir", str(run), "--quiet", *overrides])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / files.SUMMARY).read_text())
    assert summary["device"] == "gpu" and summary["epochs_run"] == 1
    result = runner.invoke(app, ["eval", str(run), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    if "test_accuracy" in summary:
        assert report["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)


def test_convolution_products_use_tf32_where_pytorch_would(fake_gpu, monkeypatch):
    """The GPU convolution's three products run with CuPy's float32 compute type set to TF32 (then restored),
    as PyTorch's cuDNN convolutions by default; not in float64, not with TF32 turned off, not on a GPU without
    TF32 (compute capability < 8.0), and never for other products (linear layers stay full float32)."""
    import fake_cupy

    seen = []
    ufunc = fake_cupy.DeviceArray.__array_ufunc__

    def recording(self, u, method, *args, **kwargs):
        if u is np.matmul:
            seen.append(fake_gpu._core.get_compute_type(np.float32))
        return ufunc(self, u, method, *args, **kwargs)

    monkeypatch.setattr(fake_cupy.DeviceArray, "__array_ufunc__", recording)

    def products(dtype, layer="conv"):
        seen.clear()
        with backend.default_dtype_as(dtype):
            x = Tensor(backend.to_device(R.standard_normal((2, 3, 6, 6)).astype(dtype), "gpu"), requires_grad=True)
            w = Tensor(backend.to_device(R.standard_normal((4, 3, 3, 3)).astype(dtype), "gpu"), requires_grad=True)
            if layer == "conv":
                out = F.conv2d(x, w, padding=1)
            else:
                out = F.linear(x.reshape(12, -1), w.reshape(4, -1)[:, :18])
            out.sum().backward()
        assert fake_gpu._core.get_compute_type(np.float32) == 1  # restored
        return list(seen)

    with backend.tf32_convolutions(True):
        assert products(np.float32) == [7, 7, 7]  # forward, weight gradient, input gradient
        assert products(np.float64) == [1, 1, 1]
        assert products(np.float32, "linear") == [1, 1, 1]
        monkeypatch.setattr(fake_cupy._Device, "compute_capability", "75")
        monkeypatch.setattr(backend, "_tf32_devices", {})
        assert products(np.float32) == [1, 1, 1]
    monkeypatch.setattr(fake_cupy._Device, "compute_capability", "90")
    monkeypatch.setattr(backend, "_tf32_devices", {})
    assert products(np.float32) == [1, 1, 1]  # the tests' default: off


@needs_gpu
def test_tf32_convolutions_stay_close_to_float32():
    """On a real GPU: a float32 convolution and its gradients with TF32 within 1e-2 (relative to the largest value)
    of the full-float32 ones."""
    results = []
    x_array = R.standard_normal((8, 16, 14, 14)).astype(np.float32)  # the same inputs on both paths
    w_array = R.standard_normal((32, 16, 3, 3)).astype(np.float32)
    for tf32 in (False, True):
        with backend.tf32_convolutions(tf32):
            x = Tensor(backend.to_device(x_array, "gpu"), requires_grad=True)
            w = Tensor(backend.to_device(w_array, "gpu"), requires_grad=True)
            out = F.conv2d(x, w, padding=1)
            (out * out).sum().backward()
            results.append([backend.to_numpy(a) for a in (out.data, x.grad, w.grad)])
    for full, tf32 in zip(*results):
        assert np.abs(tf32 - full).max() <= 1e-2 * np.abs(full).max()


def test_devices_lists_what_there_is(fake_gpu):
    from typer.testing import CliRunner

    from dltrain.cli import app

    result = CliRunner().invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("cpu: NumPy ")
    assert lines[1].startswith("gpu: CuPy stand-in, ")
    assert lines[2] == "  gpu 0: Stand-in GPU, 80.0 GiB"
    assert lines[-1] == "device: auto trains on the gpu here"


def test_the_fused_kernels_can_be_turned_off_from_the_environment():
    import os
    import subprocess
    import sys

    code = "from dltrain import backend; print(backend.fused_enabled())"
    for value, expected in (("0", "False"), ("1", "True")):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, "DLTRAIN_FUSED_KERNELS": value})
        assert result.stdout.strip() == expected, result.stderr


def test_gpu_kernel_sources_compile_with_nvrtc():
    """Every CUDA kernel of backend/cuda.py compiles for float and double (NVRTC needs no GPU, only CuPy)."""
    import subprocess
    import sys

    pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy (with its NVRTC) is not installed here")
    script = Path(__file__).parents[1] / "benchmarks" / "compile_cuda_kernels.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "FAILED" not in result.stdout and "raw kernels" in result.stdout


@pytest.mark.parametrize("loss, classes", [("cross_entropy", 4), ("binary_cross_entropy", 2)])
@pytest.mark.parametrize("defer", [False, True])
def test_train_accuracy_counts_what_evaluation_counts(tmp_path, loss, classes, defer):
    """Correct predictions are counted in one place (Model.count_correct) whichever way steps are read: with a
    learning rate too small to move the weights, epoch 1's train_accuracy is the accuracy of evaluating the
    training split."""
    cfg = config(loss=loss, data={"name": "blobs", "n_samples": 400, "classes": classes, "spread": 3.0},
                 model=[{"linear": {"units": 16}}, "relu", {"linear": {"units": classes if classes > 2 else 1}}],
                 optimizer={"name": "sgd", "lr": 1e-30},
                 training={"epochs": 1, "batch_size": 16, "early_stopping": False})
    trainer = trained(cfg, tmp_path / "run", defer=defer)
    row = files.RunDir(tmp_path / "run").read_metrics()[0]
    expected = trainer.model.evaluate(trainer.splits.train, 1024).accuracy
    assert 0.0 < expected < 1.0
    assert float(row["train_accuracy"]) == expected
