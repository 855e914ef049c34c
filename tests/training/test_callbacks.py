"""Training assembled from callbacks: hook order, the order of writes that keeps a crash resumable, stopping."""

import json

import pytest

from dltrain.config import validate
from dltrain.training import callbacks as cb
from dltrain.training import rundir as files
from dltrain.training.callbacks import Callback
from dltrain.training.checkpoint import load_checkpoint
from dltrain.training.run import run_training

BLOBS = {
    "seed": 3,
    "data": {"name": "blobs", "n_samples": 200, "classes": 3, "spread": 2.0},
    "model": [{"linear": {"units": 8}}, "relu", {"linear": {"units": 3}}],
    "optimizer": {"name": "sgd", "lr": 0.05},
    "training": {"epochs": 3, "batch_size": 50, "log_gradients": True,
                 "early_stopping": {"monitor": "val_loss", "patience": 100}},
}


def config(**training):
    values = json.loads(json.dumps(BLOBS))
    values["training"].update(training)
    return validate(values, {}, "test")


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append("train_begin")
        self.callbacks = [type(c).__name__ for c in trainer.callbacks]

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append(f"epoch_begin {epoch}")

    def on_batch_end(self, trainer, step, logs):
        self.calls.append(f"batch_end {step}")

    def on_epoch_end(self, trainer, epoch, logs):
        self.calls.append(f"epoch_end {epoch} best={logs['is_best']}")

    def on_train_end(self, trainer, summary):
        self.calls.append(f"train_end {summary['stop_reason']}")


def test_hooks_are_called_in_keras_order(tmp_path):
    recorder = Recorder()
    run_training(config(epochs=2), run_dir=tmp_path / "run", callbacks=[recorder])
    # 180 training samples (10% held out) in batches of 50: 4 steps per epoch
    steps = [f"batch_end {s}" for s in (1, 2, 3, 4)]
    assert recorder.calls == ["train_begin", "epoch_begin 1", *steps, "epoch_end 1 best=True",
                              "epoch_begin 2", *steps, "epoch_end 2 best=True", "train_end completed"]


def test_writes_happen_in_the_order_that_keeps_a_crash_resumable(tmp_path, monkeypatch):
    """metrics.csv row -> lr.csv rows -> gradients.csv row -> best checkpoint (when best) -> last checkpoint. A crash
    between any two leaves files ahead of `last`, which the resumed run rewrites identically; `last` never runs
    ahead."""
    writes = []
    real_append_rows, real_save = files.RunDir.append_rows, cb.save_checkpoint

    def append_rows(self, name, columns, rows):  # metrics.csv's rows too (append_row)
        writes.append((rows[0]["epoch"], name))
        real_append_rows(self, name, columns, rows)

    def save_checkpoint(path, *args):
        writes.append((args[4]["epoch"], f"checkpoints/{path.name}"))
        real_save(path, *args)

    monkeypatch.setattr(files.RunDir, "append_rows", append_rows)
    monkeypatch.setattr(cb, "save_checkpoint", save_checkpoint)
    # lr so large the validation loss gets worse after epoch 1: epochs 2 and 3 are not best
    values = config(epochs=3).to_dict()
    values["optimizer"]["lr"] = 30.0
    recorder = Recorder()
    run_training(validate(values, {}, "test"), run_dir=tmp_path / "run", callbacks=[recorder])
    best = [epoch for epoch, name in writes if name == files.BEST]
    assert best == [1]
    expected = []
    for epoch in (1, 2, 3):
        expected += [(epoch, files.METRICS), (epoch, files.LEARNING_RATES), (epoch, files.GRADIENTS)]
        expected += [(epoch, files.BEST)] if epoch in best else []
        expected += [(epoch, files.LAST)]
    assert writes == expected
    assert recorder.callbacks == ["EarlyStopping", "MetricsWriter", "LearningRateWriter", "GradientLogger",
                                  "CheckpointWriter", "ProgressReporter", "CurvesWriter", "Recorder"]


class StopAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == self.epoch:
            trainer.stop_training = True


def test_a_callback_stops_training_after_the_epoch(tmp_path):
    summary = run_training(config(epochs=5), run_dir=tmp_path / "run", callbacks=[StopAfter(2)])
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "callback"
    assert len(files.RunDir(tmp_path / "run").read_metrics()) == 2
    assert load_checkpoint(tmp_path / "run" / files.LAST).state["epoch"] == 2  # its epoch was saved first


def test_after_backward_sees_gradients_and_layer_outputs_are_watched(tmp_path):
    seen = {"outputs": 0, "grad_norms": []}

    class Watcher(Callback):
        def on_layer_output(self, trainer, layer, output):
            seen["outputs"] += 1

        def on_after_backward(self, trainer):
            grad = trainer.model.network.parameters()[0].grad
            seen["grad_norms"].append(float((grad ** 2).sum()))

    run_training(config(epochs=1, log_gradients=False), run_dir=tmp_path / "run", callbacks=[Watcher()])
    assert len(seen["grad_norms"]) == 4 and all(n > 0 for n in seen["grad_norms"])
    assert seen["outputs"] == 4 * 3  # three top-level layers, four steps (watched: the relu is not fused)


def test_a_callback_named_in_the_config_must_be_registered(tmp_path):
    from dltrain.errors import ConfigError

    values = config().to_dict()
    values["callbacks"] = [{"name": "nonexistent_callback"}]
    with pytest.raises(ConfigError, match=r"callbacks\[0\]\.name: unknown callback 'nonexistent_callback'"):
        validate(values, {}, "test")
