"""Following and comparing runs: TensorBoard and MLflow loggers read back with their own readers, trackers that fail,
`dltrain runs` on runs that ended every way, `dltrain diff`, and `dltrain eval --plots`."""

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.inference import eval_plots

DLTRAIN = str(Path(sys.executable).parent / "dltrain")

TINY = """\
seed: 0
data: {name: blobs, n_samples: 300, classes: 3}
model:
  - linear: {units: 8}
  - relu
  - linear: {units: 3}
optimizer: {name: adam, lr: 0.05}
training:
  epochs: 4
  batch_size: 16
"""


def write(directory, text, name="tiny.yaml"):
    path = Path(directory) / name
    path.write_text(textwrap.dedent(text))
    return path


def invoke(*args, env=None):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", **(env or {})})
    return result.exit_code, result.output


def metrics(run) -> list[dict]:
    with open(Path(run) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tensorboard_events_hold_every_epoch_as_metrics_csv_does(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config = write(tmp_path, TINY + "  loggers: [tensorboard]\n  log_gradients: true\n")
    run = tmp_path / "run"
    code, output = invoke("train", config, "--run-dir", run)
    assert code == 0, output
    rows = metrics(run)

    def scalars(part):
        events = accumulator.EventAccumulator(str(run / "tensorboard" / part), size_guidance={"scalars": 0})
        events.Reload()
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, events

    train, events = scalars("train")
    validation, _ = scalars("validation")
    for tag, part, column in (("loss", train, "train_loss"), ("accuracy", train, "train_accuracy"),
                              ("learning_rate", train, "lr"), ("loss", validation, "val_loss"),
                              ("accuracy", validation, "val_accuracy")):
        assert [s for s, _ in part[tag]] == [1, 2, 3, 4], tag
        assert [v for _, v in part[tag]] == pytest.approx([float(r[column]) for r in rows], rel=1e-6), tag
    speeds = [v for _, v in train["samples_per_second"]]
    assert len(speeds) == 4 and all(v > 0 for v in speeds)
    with open(run / "gradients.csv", newline="") as f:
        gradient_rows = list(csv.DictReader(f))
    layers = [k for k in gradient_rows[0] if k != "epoch"]
    for layer in layers:
        assert [v for _, v in train[f"gradient_norm/{layer}"]] == pytest.approx(
            [float(r[layer]) for r in gradient_rows], rel=1e-6)
    assert "config" in events.Tags()["tensors"]  # the resolved config, as text
    text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.05" in text and "units: 8" in text
    summary = json.loads((run / "summary.json").read_text())
    test, _ = scalars("test")
    assert test["accuracy"] == [(summary["epochs_run"], pytest.approx(summary["test_accuracy"], rel=1e-6))]


@pytest.mark.slow
def test_mlflow_run_holds_parameters_metrics_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store: ./mlruns/mlflow.db and ./mlruns/artifacts
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write(tmp_path, TINY + "  loggers: [mlflow]\n", "blobs_search.yaml")
    code, output = invoke("train", config, "--run-dir", "runs/first")
    assert code == 0 and "warning" not in output, output
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("blobs_search")  # the config file's name
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "first" and found.info.status == "FINISHED"
    assert found.data.params["optimizer.lr"] == "0.05"
    assert found.data.params["model.0.linear.units"] == "8"  # MLflow's names allow no brackets
    assert found.data.params["training.batch_size"] == "16"
    rows = metrics(tmp_path / "runs" / "first")
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(int(r["epoch"]), pytest.approx(float(r["val_loss"])))
                                                    for r in rows]
    summary = json.loads((tmp_path / "runs" / "first" / "summary.json").read_text())
    assert found.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "summary.json", "curves.png", "metrics.csv", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(found.info.run_id, "checkpoints")] == [
        "checkpoints/best.safetensors"]
    assert found.data.tags["dltrain.stop_reason"] == summary["stop_reason"]
    assert (tmp_path / "mlruns" / "artifacts").is_dir()

    # a resumed run continues its MLflow run
    code, output = invoke("train", "--resume", "runs/first", "--set", "training.epochs=6")
    assert code == 0, output
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == found.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val_loss")] == [1, 2, 3, 4, 5, 6]


def test_trackers_that_fail_leave_a_complete_run_and_one_warning(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    writer = pytest.importorskip("tensorboard.summary.writer.event_file_writer")

    def unwritable(self, logdir, *args, **kwargs):
        raise PermissionError(13, "Permission denied", logdir)

    monkeypatch.setattr(writer.EventFileWriter, "__init__", unwritable)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "")  # restored afterwards, whatever the logger sets
        monkeypatch.delenv(name)
    with refusing_server() as (port, connections):
        config = write(tmp_path, TINY + f"  loggers: [tensorboard, mlflow]\n  mlflow: {{tracking_uri: "
                                        f"'http://127.0.0.1:{port}'}}\n")
        run = tmp_path / "run"
        code, output = invoke("train", config, "--run-dir", run)
    assert code == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, output
    assert warnings[0].startswith(f"warning: training.loggers: tensorboard: PermissionError: [Errno 13] Permission "
                                  f"denied: '{run / 'tensorboard' / 'train'}'")
    assert warnings[1].startswith("warning: training.loggers: mlflow: ")
    assert all(line.endswith("training goes on, the run directory is complete") for line in warnings)
    for name in ("config.yaml", "metrics.csv", "summary.json", "curves.png", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    assert len(metrics(run)) == 4
    # a server that hangs up costs one request and its one retry, not minutes of retries with backoff
    assert 1 <= len(connections) <= 2, connections


@contextlib.contextmanager
def refusing_server():
    """A TCP server on 127.0.0.1 that accepts each connection and closes it at once, counting them."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    connections, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, address = server.accept()
            except TimeoutError:
                continue
            connections.append(address)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], connections
    finally:
        stop.set()
        thread.join()
        server.close()


SLOW = """\
from dltrain.registry import callbacks
from dltrain.training.callbacks import Callback
import time


@callbacks.register("sleep_each_epoch")
class SlowEpochs(Callback):
    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds

    def on_epoch_end(self, trainer, epoch, logs):
        time.sleep(self.seconds)


@callbacks.register("status_probe")
class StatusProbe(Callback):  # what `dltrain runs` says of this run while it trains, written beside it

    def on_epoch_end(self, trainer, epoch, logs):
        from dltrain.training.runs import run_row

        (trainer.run.path.parent / "status_seen.txt").write_text(run_row(trainer.run.path)["status"])


@callbacks.register("ctrl_c_at")
class CtrlC(Callback):
    def __init__(self, epoch: int = 2):
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.epoch:
            raise KeyboardInterrupt
"""


@pytest.fixture(scope="module")
def code_file(tmp_path_factory):
    """One file for the module: a --code file registers its names once per process."""
    return write(tmp_path_factory.mktemp("code"), SLOW, "tracking_callbacks.py")


@pytest.mark.slow
def test_runs_table_tells_how_each_run_ended(tmp_path, code_file):
    config = write(tmp_path, TINY)
    runs = tmp_path / "runs"
    assert invoke("train", config, "--run-dir", runs / "finished")[0] == 0
    assert invoke("train", config, "--run-dir", runs / "early", "--set", "training.epochs=200",
                  "--set", "training.early_stopping.patience=1")[0] == 0
    assert invoke("train", config, "--run-dir", runs / "interrupted", "--code", code_file,
                  "--set", "callbacks=[{name: ctrl_c_at, epoch: 2}]")[0] == 130
    assert invoke("train", config, "--run-dir", runs / "diverged", "--set", "optimizer.lr=1.0e+30",
                  "--set", "optimizer.name=sgd")[0] == 1
    slow = subprocess.Popen([DLTRAIN, "train", str(config), "--run-dir", str(runs / "nested" / "slow"), "--code",
                             str(code_file), "--set", "callbacks=[{name: sleep_each_epoch, seconds: 0.5}]",
                             "--set", "training.epochs=100", "--set", "training.early_stopping=false"],
                            stdout=subprocess.PIPE, text=True)
    for line in slow.stdout:
        if line.startswith("epoch "):
            break
    try:
        code, output = invoke("runs", runs, "--json")
        assert code == 0, output
        status = {row["run"]: row["status"] for row in json.loads(output)}
        assert status == {"finished": "completed", "early": "early_stopping", "interrupted": "interrupted",
                          "diverged": "diverged", "nested/slow": "running"}
    finally:
        os.kill(slow.pid, signal.SIGKILL)
        slow.wait()
    code, output = invoke("runs", runs, "--sort", "run")
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].split() == ["run", "started", "device", "status", "epochs", "best", "test", "seconds",
                                "samples/s"]
    by_run = {line.split()[0]: line for line in lines[1:]}
    assert list(by_run) == ["diverged", "early", "finished", "interrupted", "nested/slow"]
    assert " killed " in by_run["nested/slow"]
    summary = json.loads((runs / "finished" / "summary.json").read_text())
    assert f"accuracy {summary['test_accuracy']:.4f}" in by_run["finished"]
    assert f"val_loss {summary['best_value']:.4f} @ {summary['best_epoch']}" in by_run["finished"]
    assert " 4 " in by_run["finished"]

    code, output = invoke("runs", runs, "--where", "status=completed", "--json")
    assert [row["run"] for row in json.loads(output)] == ["finished"]
    code, output = invoke("runs", runs, "--where", "optimizer.name=sgd", "--json")
    assert [row["run"] for row in json.loads(output)] == ["diverged"]
    code, output = invoke("runs", runs, "--where", "training.epochs=200", "--json")
    assert [row["run"] for row in json.loads(output)] == ["early"]
    code, output = invoke("runs", runs, "--where", "status")
    assert code == 2 and "--where status: expected KEY=VALUE" in output


def test_a_resumed_run_shows_as_running_then_as_it_ended(tmp_path, code_file):
    config = write(tmp_path, TINY)
    run = tmp_path / "run"
    assert invoke("train", config, "--run-dir", run, "--code", code_file,
                  "--set", "callbacks=[{name: ctrl_c_at, epoch: 2}]")[0] == 130
    assert json.loads(invoke("runs", tmp_path, "--json")[1])[0]["status"] == "interrupted"
    assert invoke("train", "--resume", run, "--set", "callbacks=[{name: status_probe}]")[0] == 0
    assert (tmp_path / "status_seen.txt").read_text() == "running"  # the interrupted run's summary went
    (row,) = json.loads(invoke("runs", tmp_path, "--json")[1])
    assert row["status"] == "completed" and row["epochs"] == 4


def test_diff_names_the_config_keys_that_differ_and_the_results(tmp_path):
    config = write(tmp_path, TINY)
    invoke("train", config, "--run-dir", tmp_path / "a")
    invoke("train", config, "--run-dir", tmp_path / "b", "--set", "optimizer.lr=0.01", "--set",
           "model[0].linear.units=16")
    code, output = invoke("diff", tmp_path / "a", tmp_path / "b")
    assert code == 0, output
    lines = [line.split() for line in output.replace(str(tmp_path) + "/", "").splitlines()]
    assert lines[0] == ["config", "key", "a", "b"]
    assert ["model[0].linear.units", "8", "16"] in lines and ["optimizer.lr", "0.05", "0.01"] in lines
    assert len(lines[1:lines.index([])]) == 2  # nothing else differs
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert ["test_accuracy", f"{a['test_accuracy']:.6g}", f"{b['test_accuracy']:.6g}"] in lines
    code, output = invoke("diff", tmp_path / "a", tmp_path)
    assert code == 2 and "not a run directory" in output


def test_roc_and_precision_recall_match_scikit_learn():
    metrics_module = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(labels * 0.8 + rng.normal(0, 0.6, 500), 1)  # rounded: many ties
    fpr, tpr = eval_plots.roc_curve(labels, scores)
    expected_fpr, expected_tpr, _ = metrics_module.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, expected_fpr)
    np.testing.assert_allclose(tpr, expected_tpr)
    assert eval_plots.auc(fpr, tpr) == pytest.approx(metrics_module.roc_auc_score(labels, scores), rel=1e-12)
    assert eval_plots.average_precision(labels, scores) == pytest.approx(
        metrics_module.average_precision_score(labels, scores), rel=1e-12)
    assert eval_plots.auc(*eval_plots.roc_curve([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])) == 1.0


def png_size(path):
    header = Path(path).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_eval_plots_draw_each_kind_of_task(tmp_path):
    config = write(tmp_path, TINY)
    assert invoke("train", config, "--run-dir", tmp_path / "classes")[0] == 0
    code, output = invoke("eval", tmp_path / "classes", "--plots")
    assert code == 0, output
    assert png_size(tmp_path / "classes" / "plots" / "confusion_matrix-test.png")[0] >= 500
    assert f"confusion_matrix: {tmp_path / 'classes' / 'plots' / 'confusion_matrix-test.png'}" in output

    binary = TINY.replace("classes: 3", "classes: 2").replace("units: 3", "units: 1")
    code, output = invoke("train", write(tmp_path, binary + "loss: binary_cross_entropy\n", "binary.yaml"),
                          "--run-dir", tmp_path / "binary")
    assert code == 0, output
    code, output = invoke("eval", tmp_path / "binary", "--plots", "--json")
    assert code == 0, output
    report = json.loads(output)
    assert 0.5 < report["plots"]["roc_auc"] <= 1.0 and 0.5 < report["plots"]["average_precision"] <= 1.0
    for name in ("roc", "precision_recall"):
        png_size(report["plots"]["files"][name])

    rows = [f"{x},{2 * x + 1 + 0.1 * np.sin(7 * x)}\n" for x in np.linspace(-2, 2, 200)]
    (tmp_path / "line.csv").write_text("x,y\n" + "".join(rows[0::2]))
    (tmp_path / "line_test.csv").write_text("x,y\n" + "".join(rows[1::2]))
    regression = f"""\
    seed: 0
    data: {{name: csv, path: {tmp_path / 'line.csv'}, test_path: {tmp_path / 'line_test.csv'}, label_column: y}}
    model: [{{linear: {{units: 16}}}}, relu, {{linear: {{units: 1}}}}]
    loss: mse
    optimizer: {{name: adam, lr: 0.02}}
    training: {{epochs: 20, batch_size: 16}}
    """
    assert invoke("train", write(tmp_path, regression, "line.yaml"), "--run-dir", tmp_path / "line")[0] == 0
    code, output = invoke("eval", tmp_path / "line", "--plots", "--plots-dir", tmp_path / "pictures")
    assert code == 0, output
    for name in ("predicted_vs_true", "residuals"):
        png_size(tmp_path / "pictures" / f"{name}-test.png")
