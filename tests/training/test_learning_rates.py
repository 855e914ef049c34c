"""lr.csv: the learning rate of every optimizer step, and the learning curves that draw it on integer epoch ticks."""

import json

import pytest

from dltrain.config import validate
from dltrain.training import rundir as files
from dltrain.training.callbacks import Callback
from dltrain.training.plotting import curves_figure, plot_runs
from dltrain.training.run import run_training

BLOBS = {
    "seed": 3,
    "data": {"name": "blobs", "n_samples": 300, "classes": 3, "spread": 2.0},
    "model": [{"linear": {"units": 16}}, "relu", {"linear": {"units": 3}}],
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 3, "batch_size": 32, "early_stopping": False},
}


class KeepTrainer(Callback):
    def on_train_begin(self, trainer):
        self.trainer = trainer


def train(run_dir, resume=False, overrides=(), device="cpu", **changes):
    keep = KeepTrainer()
    cfg = None if resume else validate({**json.loads(json.dumps(BLOBS)), **changes}, {}, "test")
    run_training(cfg, run_dir=None if resume else run_dir, resume=run_dir if resume else None, overrides=overrides,
                 device=device, callbacks=[keep], plot=False)
    return keep.trainer


def lr_rows(run_dir) -> list[dict]:
    return files.RunDir(run_dir).read_table(files.LEARNING_RATES)


def integer_ticks(ax) -> bool:
    return all(float(tick).is_integer() for tick in ax.get_xticks())


def test_one_cycle_records_every_step_and_the_curve_draws_them(tmp_path, device):
    trainer = train(tmp_path / "run", device=device, schedule={"name": "one_cycle", "pct_start": 1 / 3})
    steps = trainer.updates_per_epoch
    assert steps == 9  # 270 training samples in batches of 32
    rows = lr_rows(tmp_path / "run")
    assert len(rows) == steps * 3
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(e, s) for e in (1, 2, 3) for s in range(1, 10)]
    assert [float(r["lr"]) for r in rows] == [trainer.schedule.lr(e, s) for e in range(3) for s in range(steps)]
    # torch's OneCycleLR by hand: max_lr / 25 at the first step, max_lr at the end of the first third (epoch 1),
    # max_lr / 25 / 1e4 at the last
    assert float(rows[0]["lr"]) == pytest.approx(0.05 / 25, rel=1e-12)
    assert max(float(r["lr"]) for r in rows) == float(rows[steps - 1]["lr"]) == pytest.approx(0.05, rel=1e-9)
    assert float(rows[-1]["lr"]) == pytest.approx(0.05 / 25 / 1e4, rel=1e-12)
    assert files.RunDir(tmp_path / "run").read_metrics()[0]["lr"] == rows[steps - 1]["lr"]  # metrics: the epoch's last

    figure = curves_figure([tmp_path / "run"])
    loss_axes, _, lr_axes = figure.axes
    x, y = lr_axes.lines[0].get_xdata(), lr_axes.lines[0].get_ydata()
    assert len(x) == steps * 3
    assert list(x) == pytest.approx([e + s / steps for e in range(3) for s in range(1, steps + 1)])
    assert list(y) == [float(r["lr"]) for r in rows]
    assert all(integer_ticks(ax) for ax in figure.axes)
    assert list(loss_axes.get_xticks()) == [0, 1, 2, 3, 4]  # 1.25, 1.5, ... before


def test_steps_are_optimizer_steps_with_gradient_accumulation(tmp_path):
    trainer = train(tmp_path / "run", schedule={"name": "cosine", "interval": "step"},
                    training={**BLOBS["training"], "accumulate_steps": 3})
    assert trainer.steps_per_epoch == 9 and trainer.updates_per_epoch == 3  # batches 1-3, 4-6, 7-9
    rows = lr_rows(tmp_path / "run")
    assert [float(r["lr"]) for r in rows] == [trainer.schedule.lr(e, u) for e in range(3) for u in range(3)]


def test_a_resumed_run_keeps_the_rows_of_finished_epochs(tmp_path):
    schedule = {"name": "exponential", "gamma": 0.5, "interval": "step", "warmup_epochs": 0.5}
    train(tmp_path / "full", schedule=schedule)
    train(tmp_path / "part", schedule=schedule, training={**BLOBS["training"], "epochs": 2})
    with open(tmp_path / "part" / files.LEARNING_RATES, "a") as f:
        f.write("3,1,0.9\n3,2,0.")  # epoch 3 died after writing some rows, before its checkpoint
    train(tmp_path / "part", resume=True, overrides=["training.epochs=3"])
    full = (tmp_path / "full" / files.LEARNING_RATES).read_text()
    assert (tmp_path / "part" / files.LEARNING_RATES).read_text() == full
    assert full.splitlines()[0] == "epoch,step,lr" and len(full.splitlines()) == 1 + 3 * 9


def test_runs_without_lr_csv_draw_the_epochs_rate(tmp_path):
    train(tmp_path / "run", schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    (tmp_path / "run" / files.LEARNING_RATES).unlink()  # a run from before lr.csv
    rates = [float(r["lr"]) for r in files.RunDir(tmp_path / "run").read_metrics()]
    line = curves_figure([tmp_path / "run"]).axes[2].lines[0]
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == rates == [0.05, 0.025, 0.0125]
    assert plot_runs([tmp_path / "run"]) == tmp_path / "run" / files.CURVES


def test_a_word_in_lr_csv_is_named_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from dltrain.cli import app

    train(tmp_path / "run", training={**BLOBS["training"], "epochs": 1})
    with open(tmp_path / "run" / files.LEARNING_RATES, "a") as f:
        f.write("2,1,fast\n")
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().endswith(f"error: {tmp_path / 'run' / 'lr.csv'}: epoch 2: lr is not a number: 'fast'")


def test_a_run_from_before_lr_csv_and_val_mae_resumes_and_plots(tmp_path):
    schedule = {"name": "exponential", "gamma": 0.5, "interval": "step"}
    train(tmp_path / "run", schedule=schedule, training={**BLOBS["training"], "epochs": 2})
    run = files.RunDir(tmp_path / "run")
    old_columns = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
    old_rows = [{k: row[k] for k in old_columns} for row in run.read_metrics()]
    run.start_table(files.METRICS, old_columns)  # metrics.csv as earlier versions wrote it, and no lr.csv
    run.append_rows(files.METRICS, old_columns, old_rows)
    run.file(files.LEARNING_RATES).unlink()
    train(tmp_path / "run", resume=True, overrides=["training.epochs=3"])
    rows = run.read_metrics()
    assert list(rows[0]) == list(files.METRIC_COLUMNS)
    assert [{k: row[k] for k in old_columns} for row in rows[:2]] == old_rows
    assert rows[0]["val_mae"] == rows[0]["val_r2"] == ""
    assert [int(r["epoch"]) for r in lr_rows(run.path)] == [3] * 9
    x = curves_figure([run.path]).axes[2].lines[0].get_xdata()
    assert list(x) == pytest.approx([1, 2, *(2 + s / 9 for s in range(1, 10))])
