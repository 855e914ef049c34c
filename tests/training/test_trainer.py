"""The training loop through the Python API: early stopping, best weights, resume, reproducibility, divergence."""

import json
import os

import numpy as np
import pytest

from dltrain import backend
from dltrain.config import validate
from dltrain.errors import CheckpointError
from dltrain.training import rundir as files
from dltrain.training.callbacks import Callback
from dltrain.training.checkpoint import load_checkpoint
from dltrain.training.reporting import SilentReporter
from dltrain.training.run import run_training
from dltrain.training.trainer import Diverged, Trainer

BLOBS = {
    "seed": 3,
    "data": {"name": "blobs", "n_samples": 300, "classes": 3, "spread": 2.0},
    "model": [{"linear": {"units": 16}}, "relu", {"dropout": {"rate": 0.3}}, {"linear": {"units": 3}}],
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 6, "batch_size": 32, "early_stopping": False},
}


def config(base=BLOBS, **changes):
    values = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        target = values
        *parents, last = dotted.split("__")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return validate(values, {}, "test")


class KeepTrainer(Callback):
    def on_train_begin(self, trainer):
        self.trainer = trainer


def train(cfg, run_dir, resume=False, device="cpu", overrides=()):
    """(trainer, summary) of `dltrain train` with CONFIG, or with --resume RUN_DIR --set OVERRIDES (cfg None)."""
    keep = KeepTrainer()
    summary = run_training(cfg, run_dir=None if resume else run_dir, resume=run_dir if resume else None,
                           overrides=overrides, device=device, callbacks=[keep], plot=False)
    return keep.trainer, summary


def metrics_without_time(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in files.RunDir(run_dir).read_metrics()]


def test_metrics_header_and_files(tmp_path):
    _, summary = train(config(), tmp_path / "run")
    header = (tmp_path / "run" / files.METRICS).read_text().splitlines()[0]
    assert header == "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_mae,val_r2,lr,seconds"
    assert (tmp_path / "run" / files.BEST).is_file() and (tmp_path / "run" / files.LAST).is_file()
    umask = os.umask(0)
    os.umask(umask)
    for name in (files.BEST, files.SUMMARY, files.METRICS):  # atomic writes keep the usual permissions
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert summary["stop_reason"] == "completed" and summary["epochs_run"] == 6
    assert set(summary) >= {"best_epoch", "best_value", "test_accuracy", "total_seconds", "train_samples_per_second",
                            "dltrain_version", "seed", "device"}


def test_same_config_and_seed_give_identical_metrics(tmp_path, device):
    train(config(), tmp_path / "a", device=device)
    train(config(), tmp_path / "b", device=device)
    assert metrics_without_time(tmp_path / "a") == metrics_without_time(tmp_path / "b")
    train(config(seed=4), tmp_path / "c", device=device)
    assert metrics_without_time(tmp_path / "a") != metrics_without_time(tmp_path / "c")


def test_resume_continues_bit_for_bit(tmp_path, device):
    """'3 epochs, stop, resume to 6' writes the same metrics.csv as '6 epochs' (timing aside)."""
    train(config(training__epochs=6), tmp_path / "full", device=device)
    train(config(training__epochs=3), tmp_path / "split", device=device)
    checkpoint = load_checkpoint(tmp_path / "split" / files.LAST)
    assert checkpoint.state["epoch"] == 3
    train(None, tmp_path / "split", resume=True, overrides=["training.epochs=6"], device=device)
    assert metrics_without_time(tmp_path / "split") == metrics_without_time(tmp_path / "full")
    full = load_checkpoint(tmp_path / "full" / files.LAST)
    resumed = load_checkpoint(tmp_path / "split" / files.LAST)
    for name, array in full.model.items():
        np.testing.assert_array_equal(resumed.model[name], array)


def overfitting(epochs, patience):
    """Few noisy points, a big network, a high learning rate: validation loss turns up within a few epochs."""
    return config(data={"name": "spirals", "n_samples": 60, "noise": 1.5}, training={
        "epochs": epochs, "batch_size": 8, "early_stopping": {"patience": patience}},
        model=[{"linear": {"units": 128}}, "relu", {"linear": {"units": 128}}, "relu", {"linear": {"units": 3}}],
        optimizer={"name": "adam", "lr": 0.03})


def test_resume_keeps_early_stopping_state(tmp_path, device):
    overfit = overfitting(epochs=60, patience=3)
    _, full = train(overfit, tmp_path / "full", device=device)
    assert full["stop_reason"] == "early_stopping"
    stop_epoch = full["epochs_run"]
    # Stop two epochs before the early stop, then resume: it must stop at the same epoch.
    partial_cfg = validate({**overfit.to_dict(), "training": {**overfit.to_dict()["training"],
                                                              "epochs": stop_epoch - 2}}, {}, "test")
    train(partial_cfg, tmp_path / "split", device=device)
    _, resumed = train(None, tmp_path / "split", resume=True, overrides=["training.epochs=60"], device=device)
    assert resumed["stop_reason"] == "early_stopping" and resumed["epochs_run"] == stop_epoch
    assert metrics_without_time(tmp_path / "split") == metrics_without_time(tmp_path / "full")


def test_early_stopping_fires_and_best_weights_are_restored(tmp_path, device):
    trainer, summary = train(overfitting(epochs=80, patience=4), tmp_path / "run", device=device)
    rows = files.RunDir(tmp_path / "run").read_metrics()
    val_losses = [float(r["val_loss"]) for r in rows]
    assert summary["stop_reason"] == "early_stopping"
    assert summary["epochs_run"] == len(rows) < 80
    assert summary["best_epoch"] == 1 + int(np.argmin(val_losses))
    assert summary["epochs_run"] - summary["best_epoch"] == 4  # patience
    best = load_checkpoint(tmp_path / "run" / files.BEST)
    for name, param in trainer.model.network.named_parameters():
        np.testing.assert_array_equal(backend.to_numpy(param.data), best.model[name])  # the best one is in memory
    val = trainer.model.evaluate(trainer.splits.val, 1024)
    assert val.loss == pytest.approx(min(val_losses), rel=1e-6)


def test_divergence_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path, device):
    diverging = config(loss="mse", model=[{"linear": {"units": 1}}], optimizer={"name": "sgd", "lr": 0.05},
                       training={"epochs": 3, "batch_size": 10, "early_stopping": False})
    train(diverging, tmp_path / "run", device=device)  # stable at this rate: leaves good checkpoints
    good = (tmp_path / "run" / files.LAST).read_bytes()
    with pytest.raises(Diverged, match=r"loss became (nan|inf) at epoch 4, step \d+"):
        train(None, tmp_path / "run", resume=True, overrides=["optimizer.lr=50.0", "training.epochs=5"],
              device=device)
    assert (tmp_path / "run" / files.LAST).read_bytes() == good
    summary = json.loads((tmp_path / "run" / files.SUMMARY).read_text())
    assert summary["stop_reason"] == "diverged" and "epoch 4" in summary["error"]


def test_checkpoint_is_self_contained_and_pickle_free(tmp_path):
    train(config(), tmp_path / "run")
    raw = (tmp_path / "run" / files.BEST).read_bytes()
    assert b"pickle" not in raw and raw[8:9] == b"{"  # safetensors: 8-byte length, then a JSON header
    ckpt = load_checkpoint(tmp_path / "run" / files.BEST)
    assert ckpt.config["model"][0]["linear"]["units"] == 16
    assert set(ckpt.state) >= {"epoch", "global_step", "rng", "early_stopping", "optimizer_steps"}
    assert set(ckpt.normalization) == {"mean", "std"}
    assert ckpt.data["input_shape"] == [2] and ckpt.data["classes"] == 3


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:len(b) // 2], "not a valid safetensors checkpoint"),
    (lambda b: b"", "not a valid safetensors checkpoint"),
    (lambda b: b"\x80\x04\x95pickle-ish bytes", "not a valid safetensors checkpoint"),
])
def test_damaged_checkpoints_are_refused(tmp_path, damage, message):
    train(config(training__epochs=1), tmp_path / "run")
    path = tmp_path / "run" / files.LAST
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_safetensors_file_that_is_not_ours(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a dltrain checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_nonfinite_loss_names_the_first_layer_that_overflowed(tmp_path):
    huge = config(loss="mse", model=[{"linear": {"units": 4}}, "relu", {"linear": {"units": 1}}],
                  optimizer={"name": "sgd", "lr": 1.0e+6}, training={"epochs": 3, "batch_size": 10,
                                                                     "early_stopping": False})
    with pytest.raises(Diverged, match=r"at epoch 1, step \d+ .*first non-finite: the output of model\[\d\]\.linear"):
        train(huge, tmp_path / "run")


@pytest.mark.parametrize("bad_rows, max_skips, finishes, skipped", [
    (1, 100, True, 2),  # one infinite sample: its batch is skipped once per epoch, training goes on
    (20, 3, False, 3),  # 20 of 180 samples: more bad batches than allowed skips, so it stops
])
def test_skip_policy_skips_a_bounded_number_of_batches(tmp_path, device, bad_rows, max_skips, finishes, skipped):
    values = config(loss="mse", model=[{"linear": {"units": 1}}], optimizer={"name": "sgd", "lr": 0.05},
                    training={"epochs": 2, "batch_size": 10, "early_stopping": False,
                              "on_nonfinite": "skip", "max_nonfinite_skips": max_skips}).to_dict()
    trainer = Trainer(validate(values, {}, "test"), files.RunDir(tmp_path / "run"), device, SilentReporter())
    trainer.setup()
    trainer.run.create()
    trainer.splits.train.x[:bad_rows] = np.inf
    if finishes:
        assert trainer.fit()["stop_reason"] == "completed"
    else:
        with pytest.raises(Diverged, match="first non-finite: the output of model"):
            trainer.fit()
    assert trainer.skipped == skipped


@pytest.mark.parametrize("interrupt_in_epoch", [1, 3])
def test_an_interrupted_run_reports_what_is_on_disk(tmp_path, interrupt_in_epoch):
    """Ctrl-C mid-epoch: the summary's test metrics are those of the last checkpoint (what eval reproduces),
    and an interrupt before any epoch completed says there is nothing to resume (and reports no test metrics)."""
    from dltrain.inference.evaluate import evaluate_checkpoint
    from dltrain.training.trainer import Interrupted

    class CtrlC(Callback):
        def on_batch_end(self, trainer, step, logs):  # the weights moved on, but this epoch's checkpoint is not written
            if trainer.epoch == interrupt_in_epoch and step == trainer.steps_per_epoch:
                raise KeyboardInterrupt

    cfg = config(training__early_stopping={"monitor": "val_loss", "patience": 100, "restore_best": False})
    with pytest.raises(Interrupted) as stopped:
        run_training(cfg, run_dir=tmp_path / "run", callbacks=[CtrlC()], plot=False)
    summary = json.loads((tmp_path / "run" / files.SUMMARY).read_text())
    assert summary["stop_reason"] == "interrupted" and summary["epochs_run"] == interrupt_in_epoch - 1
    if interrupt_in_epoch == 1:
        assert str(stopped.value) == ("interrupted (Ctrl-C) during epoch 1, before any checkpoint was written: "
                                      "there is nothing to resume; train again to start over")
        assert "test_accuracy" not in summary
    else:
        assert str(stopped.value).endswith(f"epoch (2) is kept; continue with --resume {tmp_path / 'run'}")
        report = evaluate_checkpoint(tmp_path / "run" / files.LAST, "test")
        assert summary["test_accuracy"] == pytest.approx(report["accuracy"], abs=1e-9)
        assert summary["test_loss"] == pytest.approx(report["loss"], rel=1e-6)
