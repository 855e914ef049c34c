"""k-fold cross-validation: the folds partition the training data, stratified; the figures are the folds' own; a
resumed k-fold run equals an uninterrupted one; the command line, `dltrain runs`, eval, plot and tune with folds."""

import csv
import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.config import validate
from dltrain.data.rows import fold_numbers
from dltrain.data.splits import prepare
from dltrain.errors import CheckpointError, ConfigError, DataError, Interrupted
from dltrain.training import rundir as files
from dltrain.training.callbacks import Callback
from dltrain.training.checkpoint import resolve_checkpoint
from dltrain.training.folds import run_cross_validation

BLOBS = {
    "seed": 3,
    "data": {"name": "blobs", "n_samples": 240, "classes": 3, "spread": 2.0},
    "model": [{"linear": {"units": 16}}, "relu", {"dropout": {"rate": 0.2}}, {"linear": {"units": 3}}],
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 4, "batch_size": 32, "early_stopping": {"patience": 2}, "folds": 3},
}


def config(**changes):
    values = json.loads(json.dumps(BLOBS))
    for dotted, value in changes.items():
        target = values
        *parents, last = dotted.split("__")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return validate(values, {}, "test")


def metrics(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in files.RunDir(run_dir).read_metrics()]


def summary_of(run_dir):
    return json.loads((run_dir / files.SUMMARY).read_text())


def test_fold_numbers_deal_each_class_evenly_to_every_fold():
    labels = np.repeat([0, 1, 2, 3], [50, 31, 7, 2])
    numbers = fold_numbers(labels, 5, np.random.default_rng([4, 2]), classification=True)
    assert numbers.shape == (90,) and set(numbers) == {0, 1, 2, 3, 4}
    sizes = np.bincount(numbers)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 90
    for cls, count in zip(range(4), (50, 31, 7, 2)):
        per_fold = np.bincount(numbers[labels == cls], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == count  # 10 each; 6 or 7; 1 or 2; 0 or 1
    again = fold_numbers(labels, 5, np.random.default_rng([4, 2]), classification=True)
    np.testing.assert_array_equal(numbers, again)  # the seed decides
    other = fold_numbers(labels, 5, np.random.default_rng([5, 2]), classification=True)
    assert (numbers != other).any()
    targets = np.linspace(0, 1, 23)[:, None]  # regression: sizes 5, 5, 5, 4, 4
    assert sorted(np.bincount(fold_numbers(targets, 5, np.random.default_rng(0), classification=False))) == [4, 4, 5,
                                                                                                          5, 5]


def test_the_folds_partition_the_training_split_and_leave_the_test_split_alone(tmp_path):
    rng = np.random.default_rng(0)
    x = np.arange(100, dtype=np.float64)[:, None] * np.ones((1, 3))  # each row says which sample it is
    y = np.repeat([0, 1, 2], [60, 30, 10])
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=rng.standard_normal((20, 3)), y=np.arange(20) % 3)
    validated, test_sets = [], []
    for index in range(4):
        cfg = validate({"data": {"name": "npz", "path": str(tmp_path / "train.npz"), "normalize": "none",
                                 "test_path": str(tmp_path / "test.npz"), "fold": {"index": index, "of": 4}},
                        "model": ["flatten"]}, {}, "test")
        splits = prepare(cfg.data, "classification", cfg.seed, "cpu")
        val_ids, train_ids = (np.asarray(s.x)[:, 0].astype(int) for s in (splits.val, splits.train))
        assert sorted(np.concatenate([val_ids, train_ids])) == list(range(100))  # each sample on one side
        assert np.bincount(y[val_ids], minlength=3).tolist() == [15, 7 + (index < 2), 2 + (index >= 2)]
        validated.append(val_ids)
        test_sets.append(np.asarray(splits.test.x))
    assert sorted(np.concatenate(validated)) == list(range(100))  # every sample validated exactly once
    for test in test_sets[1:]:
        np.testing.assert_array_equal(test, test_sets[0])


def test_a_k_fold_run_reports_its_folds_mean_and_sample_std(tmp_path):
    summary = run_cross_validation(config(), run_dir=tmp_path / "cv", plot=False)
    folds = [summary_of(tmp_path / "cv" / f"fold-{i}") for i in range(3)]
    for i in range(3):  # ordinary runs, each told its fold
        fold_config = validate(json.loads(json.dumps(
            __import__("yaml").safe_load((tmp_path / "cv" / f"fold-{i}" / files.CONFIG).read_text()))), {}, "t")
        assert fold_config.data["fold"] == {"index": i, "of": 3} and fold_config.training.folds is None
        assert (tmp_path / "cv" / f"fold-{i}" / files.BEST).is_file()
    best = [f["best_value"] for f in folds]
    mean = sum(best) / 3
    std = (sum((b - mean) ** 2 for b in best) / 2) ** 0.5
    assert summary["best_value"] == pytest.approx(mean, rel=1e-12)
    assert summary["best_value_std"] == pytest.approx(std, rel=1e-12)
    accuracy = [f["test_accuracy"] for f in folds]
    assert summary["test_accuracy"] == pytest.approx(sum(accuracy) / 3, rel=1e-12)
    assert summary["test_accuracy_std"] == pytest.approx(float(np.std(accuracy, ddof=1)), rel=1e-12)
    assert summary["stop_reason"] == "completed" and summary["folds"] == 3 and summary["folds_run"] == 3
    assert summary["monitor"] == "val_loss" and len(set(best)) == 3
    assert summary_of(tmp_path / "cv") == summary
    with open(tmp_path / "cv" / files.FOLDS) as f:
        rows = list(csv.DictReader(f))
    assert [r["fold"] for r in rows] == ["0", "1", "2", "mean", "std"]
    assert [float(r["best_value"]) for r in rows[:3]] == best
    assert [int(r["best_epoch"]) for r in rows[:3]] == [f["best_epoch"] for f in folds]
    assert float(rows[3]["best_value"]) == pytest.approx(mean) and float(rows[4]["best_value"]) == pytest.approx(std)
    assert float(rows[3]["test_loss"]) == pytest.approx(np.mean([f["test_loss"] for f in folds]))


def test_two_k_fold_runs_are_equal_and_another_seed_differs(tmp_path):
    run_cross_validation(config(), run_dir=tmp_path / "a", plot=False)
    run_cross_validation(config(), run_dir=tmp_path / "b", plot=False)
    run_cross_validation(config(seed=4), run_dir=tmp_path / "c", plot=False)
    for i in range(3):
        assert metrics(tmp_path / "a" / f"fold-{i}") == metrics(tmp_path / "b" / f"fold-{i}")
        assert metrics(tmp_path / "a" / f"fold-{i}") != metrics(tmp_path / "c" / f"fold-{i}")


class InterruptAt(Callback):
    """Ctrl-C at the end of the n-th epoch over all the folds (after its checkpoint is written)."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def on_epoch_end(self, trainer, epoch, logs):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


def test_a_k_fold_run_resumed_mid_fold_equals_an_uninterrupted_one(tmp_path):
    cfg = config(training__early_stopping=False)  # 4 epochs each: the 6th epoch of all is fold 1's second
    run_cross_validation(cfg, run_dir=tmp_path / "full", plot=False)
    with pytest.raises(Interrupted) as caught:
        run_cross_validation(cfg, run_dir=tmp_path / "split", plot=False, callbacks=[InterruptAt(6)])
    assert caught.value.exit_code == 130
    assert str(caught.value) == (f"interrupted (Ctrl-C) during fold 1: the k-fold run keeps its 1 finished fold(s), "
                                 f"and the last complete epoch of the run it was in; continue it with --resume "
                                 f"{tmp_path / 'split'}")
    stopped = summary_of(tmp_path / "split")
    assert stopped["stop_reason"] == "interrupted" and stopped["folds_run"] == 1
    assert summary_of(tmp_path / "split" / "fold-1")["epochs_run"] == 2
    assert not (tmp_path / "split" / "fold-2").exists()
    fold_0 = (tmp_path / "split" / "fold-0" / files.LAST).read_bytes()
    resumed = run_cross_validation(None, resume=tmp_path / "split", plot=False)
    assert (tmp_path / "split" / "fold-0" / files.LAST).read_bytes() == fold_0  # a finished fold is kept
    for i in range(3):
        assert metrics(tmp_path / "split" / f"fold-{i}") == metrics(tmp_path / "full" / f"fold-{i}")
    full = summary_of(tmp_path / "full")
    for key in ("best_value", "best_value_std", "test_accuracy", "test_loss", "folds_run", "stop_reason"):
        assert resumed[key] == full[key], key
    assert run_cross_validation(None, resume=tmp_path / "split", plot=False)["best_value"] == full["best_value"]


def test_a_fold_killed_before_its_first_epoch_starts_over(tmp_path):
    cfg = config(training__folds=2, training__early_stopping=False)
    run_cross_validation(cfg, run_dir=tmp_path / "full", plot=False)
    with pytest.raises(Interrupted):
        run_cross_validation(cfg, run_dir=tmp_path / "cv", plot=False, callbacks=[InterruptAt(4)])  # end of fold 0
    killed = tmp_path / "cv" / "fold-1"  # what kill -9 during fold 1's setup leaves: no checkpoint, no summary
    killed.mkdir()
    (killed / files.CONFIG).write_text("seed: 3\n")
    (killed / files.PROCESS).write_text('{"pid": 1}')
    run_cross_validation(None, resume=tmp_path / "cv", plot=False)
    assert metrics(killed) == metrics(tmp_path / "full" / "fold-1")


def test_k_fold_config_errors(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config(data__val_path="v.npz")
    assert ("training.folds: k-fold cross-validation validates on folds of the training data, but data.val_path "
            "names a validation set; remove one of them") in str(caught.value)
    with pytest.raises(ConfigError, match=r"data\.fold\.index: expected a fold in \[0, 2\] \(of: 3\), got 3"):
        config(training__folds=None, data__fold={"index": 3, "of": 3})
    with pytest.raises(ConfigError, match=r"data\.fold\.of: expected an integer >= 2, got 1"):
        config(training__folds=None, data__fold={"index": 0, "of": 1})
    with pytest.raises(ConfigError, match="training.folds: a k-fold run writes data.fold into the config of each"):
        config(data__fold={"index": 0, "of": 3})
    with pytest.raises(ConfigError, match=r"training\.final: trains once more after the folds of a k-fold run"):
        config(training__folds=None, training__final=True)
    with pytest.raises(ConfigError, match=r"training\.folds: expected an integer >= 2 or null, got 1"):
        config(training__folds=1)
    with pytest.raises(DataError, match="data.fold: 300 folds of 240 training samples leave a fold empty; use at "
                                        "most 240 folds"):
        run_cross_validation(config(training__folds=300), run_dir=tmp_path / "many", plot=False)
    run_cross_validation(config(training__folds=2, training__epochs=1), run_dir=tmp_path / "cv", plot=False)
    with pytest.raises(ConfigError, match="a k-fold run continues with the config its folds began with; --set"):
        run_cross_validation(None, resume=tmp_path / "cv", overrides=["training.epochs=3"])
    run_cross_validation(config(training__folds=2), resume=tmp_path / "cv")  # the same but for epochs: nothing to do
    with pytest.raises(ConfigError, match=r"the given config differs from the k-fold run's(.|\n)*optimizer\.lr: "
                                          r"run has 0\.05, the given config has 0\.1"):
        run_cross_validation(config(training__folds=2, optimizer__lr=0.1), resume=tmp_path / "cv")
    with pytest.raises(ConfigError, match=r"training\.folds: run has 2, the given config has 3"):
        run_cross_validation(config(training__folds=3), resume=tmp_path / "cv")


def test_k_fold_on_an_image_folder_with_its_own_validation_split_is_refused(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (4, 4), color=40 * i).save(tmp_path / split / cls / f"{i}.png")
    cfg = validate({"data": {"name": "image_folder", "path": str(tmp_path), "image_size": [4, 4]},
                    "model": ["flatten", {"linear": {"units": 2}}], "training": {"folds": 2}}, {}, "test")
    with pytest.raises(DataError, match=r"data\.fold: image_folder came with its own validation split \(6 samples\), "
                                        r"but k-fold cross-validation validates on folds of the training split"):
        run_cross_validation(cfg, run_dir=tmp_path / "cv", plot=False)


TINY = """\
seed: 3
data: {name: blobs, n_samples: 240, classes: 3, spread: 2.0}
model: [{linear: {units: 16}}, relu, {linear: {units: 3}}]
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
training: {epochs: 3, batch_size: 32}
"""


def test_the_command_line_runs_lists_plots_and_evaluates_a_k_fold_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "tiny.yaml").write_text(TINY)
    runner = CliRunner()
    cv = tmp_path / "runs" / "cv"
    result = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--folds", "3", "--run-dir", str(cv)])
    assert result.exit_code == 0, result.output
    assert f"k-fold run directory: {cv} (3 folds)" in result.output
    assert f"fold 2 (3 of 3), run directory: {cv / 'fold-2'}" in result.output
    summary = summary_of(cv)
    table = [line.split() for line in result.output.splitlines() if line.split()[:1] in (["mean"], ["std"])]
    assert table[0][-3] == f"{summary['test_accuracy']:.4f}" and table[1][-3] == f"{summary['test_accuracy_std']:.4f}"
    assert (f"completed: val_loss {summary['best_value']:.4f} ± {summary['best_value_std']:.4f} over 3 folds; "
            f"test accuracy {summary['test_accuracy']:.4f} ± {summary['test_accuracy_std']:.4f}") in result.output
    assert (cv / files.CURVES).is_file()  # every fold's curves, overlaid

    listed = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    (row,) = [line for line in listed.output.splitlines() if line.startswith("cv")]
    assert "3/3 folds" in row and f"val_loss {summary['best_value']:.4f} ± {summary['best_value_std']:.4f}" in row
    expanded = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--folds"])
    assert [line.split()[0] for line in expanded.output.splitlines()[1:]] == ["cv", "cv/fold-0", "cv/fold-1",
                                                                              "cv/fold-2"]
    as_json = json.loads(runner.invoke(app, ["runs", str(tmp_path / "runs"), "--json"]).output)
    assert as_json[0]["folds"] == 3 and as_json[0]["best_value"] == pytest.approx(summary["best_value"])

    evaluated = runner.invoke(app, ["eval", str(cv)])
    assert evaluated.exit_code == 2
    assert evaluated.output.startswith(f"error: {cv}: a k-fold run keeps one model per fold and no final run")
    assert runner.invoke(app, ["eval", str(cv / "fold-1")]).exit_code == 0

    refused = runner.invoke(app, ["train", "--resume", str(cv), "--folds", "4"])
    assert refused.exit_code == 2
    assert f"error: --folds 4: the k-fold run {cv} has 3 folds; resume it without --folds" in refused.output
    refused = runner.invoke(app, ["train", "--resume", str(cv / "fold-0"), "--final"])
    assert refused.exit_code == 2
    assert f"error: --final: {cv / 'fold-0'} is one run, not a k-fold run" in refused.output
    for again in (["train", "--resume", str(cv)], ["train", str(tmp_path / "tiny.yaml"), "--resume", str(cv),
                                                   "--folds", "3"]):
        result = runner.invoke(app, again)  # every fold finished: nothing runs again
        assert result.exit_code == 0, result.output
        assert f"k-fold run directory: {cv}: every fold has finished; nothing to resume" in result.output
    final = runner.invoke(app, ["train", "--resume", str(cv), "--final"])
    assert final.exit_code == 0, final.output
    assert "final run: " in final.output and runner.invoke(app, ["eval", str(cv)]).exit_code == 0


def test_final_trains_on_all_the_training_data_for_the_folds_mean_best_epoch(tmp_path):
    summary = run_cross_validation(config(training__final=True, training__epochs=6), run_dir=tmp_path / "cv",
                                   plot=False)
    folds = [summary_of(tmp_path / "cv" / f"fold-{i}") for i in range(3)]
    epochs = round(sum(f["best_epoch"] for f in folds) / 3)
    final = summary_of(tmp_path / "cv" / "final")
    assert final["epochs_run"] == epochs == summary["final"]["epochs_run"]
    assert final["monitor"] == "train_loss" and final["stop_reason"] == "completed"
    assert len(files.RunDir(tmp_path / "cv" / "final").read_metrics()) == epochs
    assert summary["final"]["test_accuracy"] == final["test_accuracy"]
    assert resolve_checkpoint(tmp_path / "cv") == tmp_path / "cv" / "final" / files.LAST  # what it was tested with
    # trained on every training sample: no validation split
    assert all(row["val_loss"] == "" for row in files.RunDir(tmp_path / "cv" / "final").read_metrics())
    from dltrain.inference.evaluate import evaluate_checkpoint

    assert evaluate_checkpoint(tmp_path / "cv", "test")["loss"] == pytest.approx(final["test_loss"], rel=1e-6)
    os.rename(tmp_path / "cv" / "final", tmp_path / "elsewhere")
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(tmp_path / "cv")
    assert str(caught.value) == (f"{tmp_path / 'cv'}: a k-fold run keeps one model per fold and no final run: give "
                                 f"one fold's run directory ({tmp_path / 'cv' / 'fold-0'}, ...), or add one model "
                                 f"trained on all the training data: dltrain train --resume {tmp_path / 'cv'} --final")


def test_an_unfinished_final_run_is_no_model_and_resume_finishes_it(tmp_path):
    cfg = config(training__final=True, training__early_stopping=False, training__folds=2)
    with pytest.raises(Interrupted, match="during the final run"):  # 2 folds of 4 epochs, then the final's 2nd
        run_cross_validation(cfg, run_dir=tmp_path / "cv", plot=False, callbacks=[InterruptAt(10)])
    with pytest.raises(CheckpointError, match=r"the k-fold run's final run \(.*final\) is not a trained model: it "
                                              r"ended interrupted; continue it with dltrain train --resume"):
        resolve_checkpoint(tmp_path / "cv")
    summary = run_cross_validation(None, resume=tmp_path / "cv", plot=False)
    best = [summary_of(tmp_path / "cv" / f"fold-{i}")["best_epoch"] for i in range(2)]
    assert summary["final"]["epochs_run"] == int(sum(best) / 2 + 0.5) and summary["stop_reason"] == "completed"
    assert resolve_checkpoint(tmp_path / "cv") == tmp_path / "cv" / "final" / files.LAST


def test_a_final_run_shorter_than_the_warmup_warms_up_for_all_of_it(tmp_path):
    cfg = config(training__final=True, training__folds=2, training__epochs=6,
                 training__early_stopping={"patience": 1}, schedule={"name": "constant", "warmup_epochs": 5})
    summary = run_cross_validation(cfg, run_dir=tmp_path / "cv", plot=False)
    final = __import__("yaml").safe_load((tmp_path / "cv" / "final" / files.CONFIG).read_text())
    assert final["schedule"]["warmup_epochs"] == final["training"]["epochs"] == summary["final"]["epochs_run"] < 5


def test_resuming_a_finished_k_fold_run_changes_nothing_and_final_can_be_added(tmp_path):
    run_cross_validation(config(training__folds=2), run_dir=tmp_path / "cv", plot=False)
    before = {name: (tmp_path / "cv" / name).read_bytes() for name in (files.SUMMARY, files.FOLDS, files.PROCESS)}
    again = run_cross_validation(config(training__folds=2), resume=tmp_path / "cv", plot=False)
    assert {name: (tmp_path / "cv" / name).read_bytes() for name in before} == before
    assert again == json.loads(before[files.SUMMARY])
    added = run_cross_validation(None, resume=tmp_path / "cv", final=True, plot=False)
    assert (tmp_path / "cv" / "final" / files.LAST).is_file() and added["final"]["stop_reason"] == "completed"
    assert added["total_seconds"] > again["total_seconds"]  # the sessions add up
    assert __import__("yaml").safe_load((tmp_path / "cv" / files.CONFIG).read_text())["training"]["final"] is True


def test_a_fold_trained_with_another_config_is_refused(tmp_path):
    from dltrain.training.run import run_training

    cfg = config(training__folds=2, training__early_stopping=False, training__epochs=2)
    run_cross_validation(cfg, run_dir=tmp_path / "cv", plot=False)
    run_training(None, resume=tmp_path / "cv" / "fold-1", overrides=["training.epochs=3"], plot=False)
    with pytest.raises(ConfigError) as caught:
        run_cross_validation(None, resume=tmp_path / "cv", plot=False)
    assert str(caught.value) == (f"{tmp_path / 'cv' / 'fold-1'}: fold 1 was trained with another config than the "
                                 f"k-fold run's, so its results would not belong to it; move it away to train it "
                                 f"again:\n  training.epochs: the k-fold run's config gives 2, fold 1's has 3")


def test_a_k_fold_run_that_failed_before_its_first_fold_leaves_its_directory_usable(tmp_path):
    with pytest.raises(DataError):
        run_cross_validation(config(training__folds=300), run_dir=tmp_path / "cv", plot=False)
    assert summary_of(tmp_path / "cv")["stop_reason"] == "failed"
    summary = run_cross_validation(config(training__folds=2, training__epochs=1), run_dir=tmp_path / "cv", plot=False)
    assert summary["stop_reason"] == "completed"


class FakeTrial:
    """What dltrain's objective asks of an Optuna trial, with a pruner that gives up after fold 1."""

    number = 0

    def __init__(self):
        self.attrs, self.reported = {}, []

    def set_user_attr(self, key, value):
        self.attrs[key] = value

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return len(self.reported) == 2


def test_a_k_fold_trial_reports_the_running_mean_and_is_pruned_between_folds(tmp_path):
    optuna = pytest.importorskip("optuna")
    from dltrain.tune.space import load_search
    from dltrain.tune.study import _FileLock, _Objective

    (tmp_path / "tiny.yaml").write_text(TINY + "tune:\n  metric: val_accuracy\n  folds: 3\n  parameters:\n"
                                               "    optimizer.lr: {log_uniform: [0.01, 0.1]}\n")
    search = load_search(tmp_path / "tiny.yaml")
    assert search.folds == 3
    objective = _Objective(search, tmp_path, _FileLock(tmp_path), "cpu", lambda text: None, "study")
    trial = FakeTrial()
    with pytest.raises(optuna.TrialPruned, match="pruned after fold 1"):
        objective._cross_validate(trial, {"optimizer.lr": 0.05}, search.trial_config({"optimizer.lr": 0.05}),
                                  tmp_path / "trial-0000")
    folds = [summary_of(tmp_path / "trial-0000" / f"fold-{i}") for i in range(2)]
    assert [f["monitor"] for f in folds] == ["val_accuracy"] * 2  # the study's metric
    best = [f["best_value"] for f in folds]
    assert trial.reported == [(0, best[0]), (1, pytest.approx((best[0] + best[1]) / 2))]
    assert not (tmp_path / "trial-0000" / "fold-2").exists()
    assert summary_of(tmp_path / "trial-0000")["stop_reason"] == "pruned"
    assert trial.attrs["stop_reason"] == "pruned"


def test_tune_with_folds_optimizes_the_folds_mean(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY + "tune:\n  metric: val_accuracy\n  trials: 2\n  folds: 2\n"
                                               "  sampler: random\n  pruner: none\n  parameters:\n"
                                               "    optimizer.lr: {log_uniform: [0.001, 0.1]}\n")
    result = CliRunner().invoke(app, ["tune", "tiny.yaml", "--dir", "study"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "study" / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2
    for trial in trials:
        folds = [summary_of(tmp_path / trial["run_dir"] / f"fold-{i}") for i in range(2)]
        values = [f["best_value"] for f in folds]
        assert float(trial["value"]) == pytest.approx(sum(values) / 2, rel=1e-12)
        assert float(trial["std"]) == pytest.approx(float(np.std(values, ddof=1)), rel=1e-9)
        assert f"val_accuracy {float(trial['value']):.4f} ± {float(trial['std']):.4f} over 2 folds" in result.output
    best = __import__("yaml").safe_load((tmp_path / "study" / "best.yaml").read_text())
    assert best["training"]["folds"] == 2 and best["training"]["final"] is False


def test_a_regression_k_fold_run_reports_the_folds_mae_and_r2_in_the_data_units(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((240, 3))
    y = 20_000 + 5_000 * (x @ np.array([1.0, -2.0, 0.5])) + 500 * rng.standard_normal(240)  # house-price units
    np.savez(tmp_path / "prices.npz", x=x[:200], y=y[:200], x_test=x[200:], y_test=y[200:])
    (tmp_path / "prices.yaml").write_text(json.dumps({
        "seed": 0, "data": {"name": "npz", "path": str(tmp_path / "prices.npz")}, "loss": "mse",
        "model": [{"linear": {"units": 16}}, "relu", {"linear": {"units": 1}}],
        "training": {"epochs": 3, "batch_size": 32, "folds": 2}}))
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "prices.yaml"), "--run-dir", str(tmp_path / "cv")])
    assert result.exit_code == 0, result.output
    folds = [summary_of(tmp_path / "cv" / f"fold-{i}") for i in range(2)]
    summary = summary_of(tmp_path / "cv")
    assert summary["test_mae"] == pytest.approx((folds[0]["test_mae"] + folds[1]["test_mae"]) / 2, rel=1e-12)
    assert summary["test_r2"] == pytest.approx((folds[0]["test_r2"] + folds[1]["test_r2"]) / 2, rel=1e-12)
    assert summary["test_mae"] > 1_000  # in the data's units, not standardized
    from dltrain.training.reporting import in_units

    assert f"test MAE {in_units(summary['test_mae'])} ± {in_units(summary['test_mae_std'])}" in result.output
    with open(tmp_path / "cv" / files.FOLDS) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["test_mae"]) for r in rows[:2]] == [f["test_mae"] for f in folds]
    listed = CliRunner().invoke(app, ["runs", str(tmp_path / "cv")])
    assert f"MAE {in_units(summary['test_mae'])} ± " in listed.output


def test_figures_in_the_data_units_use_no_exponent_from_a_ten_thousandth_up():
    from dltrain.training.reporting import in_units

    assert [in_units(v) for v in (47.6381, 23_461.4, 1_234_567.0, 0.003125, 0.0, 0.00001234)] == [
        "47.64", "23,461", "1,234,567", "0.003125", "0", "1.23e-05"]
