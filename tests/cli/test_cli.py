"""End to end through the real `dltrain` executable (subprocess) and Typer's runner."""

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dltrain.cli import app

DLTRAIN = str(Path(sys.executable).parent / "dltrain")
TINY = """\
seed: 0
data: {name: blobs, n_samples: 200, classes: 3}
model:
  - linear: {units: 8}
  - relu
  - linear: {units: 3}
optimizer: {name: adam, lr: 0.05}
training: {epochs: 3, batch_size: 16}
"""


def dltrain(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([DLTRAIN, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def write(tmp_path, text, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.slow
def test_train_eval_plot_end_to_end(tmp_path):
    config = write(tmp_path, TINY)
    run = tmp_path / "run"
    result = dltrain("train", config, "--run-dir", run)
    assert result.returncode == 0, result.stderr
    assert f"run directory: {run}" in result.stdout
    assert "\x1b" not in result.stdout  # no TTY: plain lines, no control characters
    assert result.stdout.count("epoch ") >= 3
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/best.safetensors",
                 "checkpoints/last.safetensors", "curves.png"):
        assert (run / name).is_file(), name

    result = dltrain("eval", run, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # nothing else on stdout
    assert set(report) >= {"loss", "accuracy", "per_class", "confusion_matrix", "n"}
    assert report["n"] == 50 and sum(map(sum, report["confusion_matrix"])) == 50
    summary = json.loads((run / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"])

    result = dltrain("eval", run)
    assert result.returncode == 0 and "precision" in result.stdout
    lines = result.stdout.splitlines()
    heading = lines.index("confusion matrix (rows: true class, columns: predicted)")
    for i, counts in enumerate(report["confusion_matrix"]):  # the row of class i: its label, then its counts
        row = next(line for line in lines[heading:] if line.startswith(f"│ {i} "))
        assert [int(cell) for cell in row.strip("│").split("│")[1:]] == counts, row

    out = tmp_path / "curves.png"
    result = dltrain("plot", run, "--out", out)
    assert result.returncode == 0 and result.stdout.strip() == str(out)
    assert png_size(out) == (1500, 450)


@pytest.mark.slow
def test_eval_from_another_working_directory(tmp_path):
    config = write(tmp_path, TINY)
    dltrain("train", config, "--run-dir", tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = dltrain("eval", tmp_path / "run" / "checkpoints" / "best.safetensors", "--split", "val", "--json",
                     cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["split"] == "val"


def test_existing_run_directory_is_never_overwritten(tmp_path):
    config = write(tmp_path, TINY)
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    result = dltrain("train", config, "--run-dir", run)
    assert result.returncode == 2
    assert "already exists and is not empty" in result.stderr
    assert (run / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_resume_through_the_cli(tmp_path):
    config = write(tmp_path, TINY)
    run = tmp_path / "run"
    assert dltrain("train", config, "--run-dir", run).returncode == 0
    result = dltrain("train", "--resume", run, "--set", "training.epochs=5")
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch 3 of 5" in result.stdout
    assert len((run / "metrics.csv").read_text().splitlines()) == 6


def test_resume_refuses_a_different_model(tmp_path):
    config = write(tmp_path, TINY)
    run = tmp_path / "run"
    dltrain("train", config, "--run-dir", run)
    other = write(tmp_path, TINY.replace("units: 8", "units: 9"), "other.yaml")
    result = dltrain("train", other, "--resume", run)
    assert result.returncode == 2
    assert "differs from the run's config in model" in result.stderr
    assert f"  model[0].linear.units: run has 8, {other} has 9" in result.stderr


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_trained_weights(tmp_path):
    config = write(tmp_path, TINY)
    assert dltrain("train", config, "--run-dir", tmp_path / "first").returncode == 0
    result = dltrain("train", config, "--run-dir", tmp_path / "tuned", "--init-from", tmp_path / "first")
    assert result.returncode == 0, result.stderr
    first = (tmp_path / "first" / "metrics.csv").read_text().splitlines()[1].split(",")
    tuned = (tmp_path / "tuned" / "metrics.csv").read_text().splitlines()[1].split(",")
    assert float(tuned[1]) < float(first[1])  # epoch 1 starts from trained weights: lower loss
    other = write(tmp_path, TINY.replace("units: 8", "units: 9"), "other.yaml")
    result = dltrain("train", other, "--run-dir", tmp_path / "bad", "--init-from", tmp_path / "first")
    assert result.returncode == 2
    assert "weights do not fit this config's model" in result.stderr and "0.weight" in result.stderr


def test_run_directory_that_cannot_be_created(tmp_path):
    result = dltrain("train", write(tmp_path, TINY), "--run-dir", "/dev/null/run")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot create run directory /dev/null/run")


BAD_CONFIGS = {
    "wrong type": ("units: 8", "units: eight", "tiny.yaml:4: model[0].linear.units: expected a positive integer"),
    "unknown key": ("batch_size: 16", "batchsize: 16", "tiny.yaml:8: training.batchsize: unknown key 'batchsize'"),
    "unknown layer": ("- relu", "- relux", "tiny.yaml:5: model[1]: unknown layer 'relux' (did you mean 'relu'?)"),
    "unknown optimizer": ("name: adam", "name: adan", "tiny.yaml:7: optimizer.name: unknown optimizer 'adan'"),
    "negative lr": ("lr: 0.05", "lr: -0.05", "tiny.yaml:7: optimizer.lr: expected a positive number, got -0.05"),
    "dropout rate 1": ("- relu", "- dropout: {rate: 1}", "tiny.yaml:5: model[1].dropout.rate: expected a number in"),
    "patience < 0": ("epochs: 3,", "epochs: 3, early_stopping: {patience: -2},",
                     "tiny.yaml:8: training.early_stopping.patience: expected a non-negative integer, got -2"),
    "unknown dataset": ("name: blobs", "name: blob", "tiny.yaml:2: data.name: unknown dataset 'blob'"),
    "unknown top-level key": ("seed: 0", "sead: 0", "tiny.yaml:1: sead: unknown key 'sead' (did you mean 'seed'?)"),
    "malformed yaml": ("model:", "model: [", "tiny.yaml:"),
    "output does not fit classes": ("units: 3}", "units: 4}", "model[2].linear: the model's output (batch, 4) does "
                                                             "not fit the data's 3 classes"),
    "batch larger than split": ("batch_size: 16", "batch_size: 1000",
                                "training.batch_size 1000 is larger than the training split (180 samples)"),
    "python tag": ("seed: 0", "seed: !!python/object/apply:os.system ['true']", "tiny.yaml:1"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_naming_key_and_line(tmp_path, name):
    old, new, expected = BAD_CONFIGS[name]
    assert old in TINY
    config = write(tmp_path, TINY.replace(old, new, 1))
    result = CliRunner().invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    output = result.output.replace(str(tmp_path) + "/", "")
    assert result.exit_code == 2, output
    assert expected in output
    assert "Traceback" not in output
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_bad_config_through_the_executable_has_no_traceback(tmp_path):
    config = write(tmp_path, TINY.replace("units: 8", "units: 0"))
    result = dltrain("train", config)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {config}:4: model[0].linear.units: expected a positive integer, got 0"


def test_debug_flag_shows_the_traceback(tmp_path):
    config = write(tmp_path, TINY.replace("units: 8", "units: 0"))
    result = dltrain("--debug", "train", config)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_diverging_run_exits_1(tmp_path):
    text = TINY.replace("lr: 0.05", "lr: 1.0e+4").replace("name: adam", "name: sgd").replace("units: 3}", "units: 1}")
    config = write(tmp_path, text + "loss: mse\n")
    result = dltrain("train", config, "--run-dir", tmp_path / "run")
    assert result.returncode == 1, result.stderr
    assert "error: loss became" in result.stderr and "at epoch 1, step" in result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stop_reason"] == "diverged"


def test_eval_of_a_missing_or_broken_checkpoint(tmp_path):
    result = dltrain("eval", tmp_path / "nothing.safetensors")
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    result = dltrain("eval", broken)
    assert result.returncode == 2 and "not a valid safetensors checkpoint" in result.stderr


def test_check_prints_the_model_summary(tmp_path):
    result = CliRunner().invoke(app, ["check", str(write(tmp_path, TINY))])
    assert result.exit_code == 0
    assert "(batch, 8)" in result.output and "total" in result.output and "train 180, val 20, test 50" in result.output


@pytest.mark.parametrize("command, expected", [
    ("layers", "units: a positive integer = required"),
    ("optimizers", "momentum"),
    ("losses", "cross_entropy"),
    ("schedules", "warmup_epochs"),
    ("datasets", "fashion-mnist"),
])
def test_registry_listings(command, expected):
    result = CliRunner().invoke(app, [command], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and expected in result.output


REAL_DATA = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (REAL_DATA / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
@pytest.mark.slow
def test_short_run_on_real_fashion_mnist(tmp_path):
    config = Path(__file__).parents[2] / "configs" / "fashion_mlp.yaml"
    run = tmp_path / "run"
    result = dltrain("train", config, "--run-dir", run, "--set", "training.epochs=1",
                     "--set", "model[1].linear.units=128")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8


@pytest.mark.slow
def test_plot_copes_with_no_validation_and_no_accuracy(tmp_path):
    text = (TINY.replace("units: 3}", "units: 1}") + "loss: mse\n").replace(
        "data: {name: blobs, n_samples: 200, classes: 3}", "data: {name: blobs, n_samples: 200, val_fraction: 0}")
    text = text.replace("batch_size: 16}", "batch_size: 16, early_stopping: {monitor: train_loss}}")
    config = write(tmp_path, text)
    run = tmp_path / "run"
    result = dltrain("train", config, "--run-dir", run)
    assert result.returncode == 0, result.stderr
    row = (run / "metrics.csv").read_text().splitlines()[1].split(",")
    assert row[2] == row[3] == row[4] == ""  # no train accuracy, no validation
    result = dltrain("plot", run)
    assert result.returncode == 0, result.stderr
    assert png_size(run / "curves.png") == (1500, 450)


def test_stopping_off_without_validation_trains_and_says_what_best_means(tmp_path):
    """early_stopping: false with val_fraction 0 used to be refused for its (default) val_loss monitor."""
    text = TINY.replace("data: {name: blobs, n_samples: 200, classes: 3}",
                        "data: {name: blobs, n_samples: 200, classes: 3, val_fraction: 0}")
    text = text.replace("batch_size: 16}", "batch_size: 16, early_stopping: false}")
    run = tmp_path / "run"
    result = dltrain("train", write(tmp_path, text), "--run-dir", run)
    assert result.returncode == 0, result.stderr
    assert "; best train_loss (no validation split) " in result.stdout
    assert json.loads((run / "summary.json").read_text())["monitor"] == "train_loss"


@pytest.mark.slow
@pytest.mark.parametrize("signal_name, exit_code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_stops_with_complete_files(tmp_path, signal_name, exit_code):
    import signal

    text = TINY.replace("epochs: 3", "epochs: 100000")
    config = write(tmp_path, text.replace("batch_size: 16}", "batch_size: 16, early_stopping: false}"))
    run = tmp_path / "run"
    process = subprocess.Popen([DLTRAIN, "train", str(config), "--run-dir", str(run)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("epoch") and "/100000" in line:
            break
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr
    assert "interrupted" in stderr and "continue with --resume" in stderr and "Traceback" not in stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted"
    result = dltrain("eval", run, "--json")
    assert result.returncode == 0, result.stderr
    done = summary["epochs_run"]
    result = dltrain("train", "--resume", run, "--set", f"training.epochs={done + 2}")
    assert result.returncode == 0, result.stderr
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + done + 2


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_resumable_runs(tmp_path):
    """SIGKILL gives no chance to clean up: whatever is on disk must be complete, and --resume must finish."""
    import random
    import signal
    import time

    from dltrain.training.checkpoint import load_checkpoint

    text = TINY.replace("n_samples: 200", "n_samples: 3000").replace("epochs: 3", "epochs: 40")
    config = write(tmp_path, text.replace("batch_size: 16}", "batch_size: 16, early_stopping: false}"))
    rng = random.Random(0)
    for attempt in range(4):
        run = tmp_path / f"run{attempt}"
        process = subprocess.Popen([DLTRAIN, "train", str(config), "--run-dir", str(run)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 3.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        for name in ("best.safetensors", "last.safetensors"):
            path = run / "checkpoints" / name
            if path.exists():
                load_checkpoint(path)  # complete, or this raises
        if not (run / "checkpoints" / "last.safetensors").exists():
            continue  # killed before the first epoch ended: nothing to resume
        result = dltrain("train", "--resume", run)
        assert result.returncode == 0, result.stderr
        rows = (run / "metrics.csv").read_text().splitlines()
        assert len(rows) == 41 and all(len(r.split(",")) == 9 for r in rows)
        leftovers = [p.name for p in run.rglob(".*.tmp")]
        assert leftovers == []  # temporary files of the killed writes are cleared on resume


def test_eval_with_data_of_another_shape_names_both_shapes(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "two.npz", x=rng.normal(size=(100, 2)), y=rng.integers(0, 3, 100),
             x_test=rng.normal(size=(20, 2)), y_test=rng.integers(0, 3, 20))
    np.savez(tmp_path / "three.npz", x=rng.normal(size=(100, 3)), y=rng.integers(0, 3, 100),
             x_test=rng.normal(size=(20, 3)), y_test=rng.integers(0, 3, 20))
    config = write(tmp_path, TINY.replace("{name: blobs, n_samples: 200, classes: 3}",
                                          f"{{name: npz, path: {tmp_path / 'two.npz'}}}"))
    assert dltrain("train", config, "--run-dir", tmp_path / "run").returncode == 0
    result = dltrain("eval", tmp_path / "run", "--data", tmp_path / "three.npz")
    assert result.returncode == 2
    assert "trained on inputs of per-sample shape (2,), but the data has shape (3,)" in result.stderr

    np.savez(tmp_path / "more_classes.npz", x=rng.normal(size=(100, 2)), y=rng.integers(0, 5, 100),
             x_test=rng.normal(size=(20, 2)), y_test=np.arange(20) % 5)
    result = dltrain("eval", tmp_path / "run", "--data", tmp_path / "more_classes.npz")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    assert f"{tmp_path / 'more_classes.npz'}: labels go up to 4 but {best} was trained on 3 classes (0..2)" \
        in result.stderr


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 32 KiB tmpfs: room for the config and metrics, not for a checkpoint of a wide layer."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_ends_with_a_message_and_no_partial_files(tmp_path, tiny_filesystem):
    config = write(tmp_path, TINY.replace("units: 8", "units: 3000"))
    run = tiny_filesystem / "run"
    result = dltrain("train", config, "--run-dir", run)
    assert result.returncode == 2, result.stderr
    assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
    leftovers = [p.name for p in run.rglob("*") if p.is_file() and p.suffix in (".tmp", ".safetensors")]
    assert leftovers == []  # neither a temporary nor a truncated checkpoint


def test_asking_for_a_missing_gpu_says_what_is_missing(tmp_path):
    from dltrain import backend

    if backend.gpu_available():
        pytest.skip("a GPU is available here")
    result = dltrain("train", write(tmp_path, TINY), "--device", "gpu")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: device 'gpu' was asked for, but {backend.gpu_unavailable_reason()}; "
                                    f"to train on the CPU use --device cpu (or device: auto")
    assert "Traceback" not in result.stderr


def test_devices_says_why_there_is_no_gpu():
    from dltrain import backend

    if backend.gpu_available():
        pytest.skip("a GPU is available here")
    result = dltrain("devices")
    assert result.returncode == 0
    assert result.stdout.splitlines()[1] == f"gpu: none usable: {backend.gpu_unavailable_reason()}"
    assert result.stdout.splitlines()[-1] == "device: auto trains on the cpu here"


@pytest.mark.parametrize("failure, reason", [
    (ImportError, "CuPy is not installed (import of cupy halted; None in sys.modules); install it with: "
                  "pip install 'dltrain[gpu]'"),
    (RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"),
     "CuPy found no NVIDIA driver it can use (cudaErrorInsufficientDriver: CUDA driver version is insufficient "
     "for CUDA runtime version): this needs an NVIDIA GPU with a driver that supports CuPy's CUDA version"),
    (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"),
     "CuPy is installed but no GPU is usable: cudaErrorNoDevice: no CUDA-capable device is detected"),
    (0, "CuPy is installed but found no GPU"),
])
def test_why_the_gpu_is_missing_is_said_in_words(monkeypatch, failure, reason):
    """CuPy's own errors (the one it gives on a machine without a driver included) become one sentence."""
    import types

    from dltrain import backend
    from dltrain.errors import DeviceError

    def device_count():
        if isinstance(failure, RuntimeError):
            raise failure
        return failure

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count)))
    if failure is ImportError:
        monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    else:
        monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)
    with pytest.raises(DeviceError) as caught:
        backend.resolve_device("gpu")
    assert str(caught.value).startswith(f"device 'gpu' was asked for, but {reason}; to train on the CPU")
    assert backend.resolve_device("auto") == "cpu"


def test_profile_prints_the_parts_of_a_step():
    result = dltrain("profile", Path(__file__).parents[2] / "configs" / "quickstart.yaml", "--steps", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("quickstart.yaml: 64 samples per step on the cpu")
    assert lines[1].split()[0] == "part" and lines[2].startswith("batch gather ")
    assert any(line.startswith("optimizer step") for line in lines)
    assert lines[-1].startswith("free-running step: ")
