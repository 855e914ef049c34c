"""dltrain tune: searches that find what they should, studies shared by workers, killed workers, pruning, and the
search-space errors. Trials are tiny runs (a fraction of a second each)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dltrain.cli import app

optuna = pytest.importorskip("optuna")

DLTRAIN = str(Path(sys.executable).parent / "dltrain")

SPIRALS = """\
seed: 0
data: {name: spirals, n_samples: 600, classes: 3, turns: 1, noise: 0.2}
model:
  - linear: {units: 32}
  - relu
  - linear: {units: 32}
  - relu
  - linear: {units: 3}
optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
training:
  epochs: 10
  batch_size: 32
  early_stopping: {monitor: val_accuracy, patience: 10}
"""

SEARCH = """\
tune:
  metric: val_accuracy
  trials: 12
  sampler: tpe
  pruner: none
  parameters:
    optimizer.lr: {log_uniform: [1.0e-5, 10.0]}
"""


def write(directory, text, name="search.yaml"):
    path = Path(directory) / name
    path.write_text(textwrap.dedent(text))
    return path


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def read_trials(study_dir) -> list[dict]:
    with open(Path(study_dir) / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_study(study_dir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{Path(study_dir) / 'study.db'}")


@pytest.mark.slow
def test_a_search_finds_a_good_learning_rate_and_best_yaml_trains_to_its_value(tmp_path):
    config = write(tmp_path, SPIRALS + SEARCH)
    study_dir = tmp_path / "study"
    code, output = invoke("tune", config, "--dir", study_dir)
    assert code == 0, output
    rows = read_trials(study_dir)
    assert [int(r["number"]) for r in rows] == list(range(12))
    assert {r["state"] for r in rows} <= {"complete", "failed"}  # no pruner; a huge rate may diverge
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: float(r["value"]))
    # plain SGD with momentum on these spirals: tiny rates barely move in 10 epochs, rates near 10 diverge
    assert 3e-3 <= float(best["optimizer.lr"]) <= 3.0, rows
    assert float(best["value"]) >= 0.9
    worst = min(complete, key=lambda r: float(r["value"]))
    assert float(worst["value"]) < float(best["value"]) - 0.2  # the range holds bad rates too: it was a search
    assert f"best trial {best['number']}: val_accuracy {float(best['value']):.4f}" in output
    for plot in ("history", "importances", "parallel_coordinate"):
        assert (study_dir / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"

    # every trial is an ordinary run directory with its own summary
    trial_dir = Path(best["run_dir"])
    assert trial_dir == study_dir / f"trial-{int(best['number']):04d}"
    summary = json.loads((trial_dir / "summary.json").read_text())
    assert summary["best_value"] == float(best["value"]) and summary["stop_reason"] == "completed"
    code, output = invoke("eval", trial_dir)
    assert code == 0, output

    code, output = invoke("train", study_dir / "best.yaml", "--run-dir", tmp_path / "again")
    assert code == 0, output
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["best_value"] == float(best["value"])  # same seed, same config: the same run
    assert again["best_epoch"] == int(best["best_epoch"])


def test_a_config_with_a_tune_section_still_trains_as_written(tmp_path):
    config = write(tmp_path, SPIRALS + SEARCH)
    code, output = invoke("train", config, "--run-dir", tmp_path / "run", "--set", "training.epochs=1")
    assert code == 0, output
    assert "tune" not in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.slow
def test_a_study_continues_where_it_stopped_and_refuses_another_metric(tmp_path):
    config = write(tmp_path, SPIRALS + SEARCH)
    study_dir = tmp_path / "study"
    assert invoke("tune", config, "--dir", study_dir, "--trials", "3")[0] == 0
    code, output = invoke("tune", config, "--dir", study_dir, "--trials", "5")
    assert code == 0, output
    rows = read_trials(study_dir)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert "trial 0:" not in output and "trial 3:" in output  # the first three were not run again
    assert len({r["optimizer.lr"] for r in rows}) == 5  # the continued sampler did not draw the same values again

    expected = "study 'search' searched 'val_accuracy'; this search asks for 'val_loss'"
    code, output = invoke("tune", config, "--dir", study_dir, "--trials", "6", "--set", "tune.metric=val_loss")
    assert code == 2 and expected in output, output
    space = write(tmp_path, SEARCH.replace("val_accuracy", "val_loss"), "space.yaml")
    code, output = invoke("tune", config, "--space", space, "--dir", study_dir, "--trials", "6")
    assert code == 2 and expected in output, output
    assert len(read_trials(study_dir)) == 5


@pytest.mark.slow
def test_two_workers_share_one_study_without_losing_or_repeating_a_trial(tmp_path):
    config = write(tmp_path, SPIRALS + SEARCH.replace("trials: 12", "trials: 8").replace("tpe", "random"))
    study_dir = tmp_path / "study"
    result = subprocess.run([DLTRAIN, "tune", str(config), "--dir", str(study_dir), "--workers", "2"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    study = load_study(study_dir, "search")
    assert [t.number for t in study.trials] == list(range(8))
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    ran = sorted(int(m) for m in re.findall(r"^trial (\d+):", result.stdout, flags=re.M))
    assert ran == list(range(8))  # each trial ran once, in one worker
    run_dirs = sorted(p.name for p in study_dir.glob("trial-*"))
    assert run_dirs == [f"trial-{n:04d}" for n in range(8)]
    assert all((study_dir / d / "summary.json").is_file() for d in run_dirs)
    lrs = [t.params["optimizer.lr"] for t in study.trials]
    assert len(set(lrs)) == 8  # the two workers' samplers are seeded apart


SLOW_EPOCHS = """\
from dltrain.registry import callbacks
from dltrain.training.callbacks import Callback
import time


@callbacks.register("slow_trial_epochs")
class SlowEpochs(Callback):
    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds

    def on_epoch_end(self, trainer, epoch, logs):
        time.sleep(self.seconds)
"""


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_no_finished_trial_and_its_trial_is_failed(tmp_path, monkeypatch):
    code_file = write(tmp_path, SLOW_EPOCHS, "slow.py")
    config = write(tmp_path, SPIRALS + "callbacks: [{name: slow_trial_epochs, seconds: 0.3}]\n"
                   + SEARCH.replace("trials: 12", "trials: 4").replace("tpe", "random"))
    study_dir = tmp_path / "study"
    worker = subprocess.Popen([DLTRAIN, "tune", str(config), "--dir", str(study_dir), "--code", str(code_file)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    for line in worker.stdout:  # wait until two trials have finished and the third is running
        lines.append(line)
        if line.startswith("trial 1:"):
            break
    deadline = time.time() + 60
    while not (study_dir / "trial-0002" / "metrics.csv").is_file() and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    study = load_study(study_dir, "search")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]

    from dltrain.tune import study as studies

    monkeypatch.setattr(studies, "GRACE_SECONDS", 1)  # the dead worker's heartbeat is older than that
    time.sleep(3)  # SQLite's timestamps count whole seconds: the first look must already find the trial stale
    code, output = invoke("tune", config, "--dir", study_dir, "--code", code_file)
    assert code == 0, output
    study = load_study(study_dir, "search")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[3].params == study.trials[2].params  # the dead worker's trial, tried again
    assert study.trials[4].params != study.trials[2].params
    rows = read_trials(study_dir)
    assert [r["state"] for r in rows] == ["complete", "complete", "failed", "complete", "complete"]
    assert rows[2]["stop_reason"] == ""  # it never finished; its run directory keeps the epochs it did
    assert (study_dir / "trial-0002" / "metrics.csv").is_file()
    assert "(4 complete, 0 pruned, 1 failed)" in output


@pytest.mark.slow
def test_pruning_stops_clearly_worse_trials_and_their_runs_say_so(tmp_path):
    search = SEARCH.replace("pruner: none", "pruner: median").replace("trials: 12", "trials: 14")
    config = write(tmp_path, SPIRALS + search.replace("tpe", "random"))
    study_dir = tmp_path / "study"
    code, output = invoke("tune", config, "--dir", study_dir)
    assert code == 0, output
    rows = read_trials(study_dir)
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, output
    for row in pruned:
        assert 2 <= int(row["epochs"]) < 10  # judged from epoch 2
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["stop_reason"] == "pruned" and summary["epochs_run"] == int(row["epochs"])
        assert float(row["value"]) < max(float(r["value"]) for r in rows if r["state"] == "complete")


@pytest.mark.slow
def test_the_grid_sampler_runs_each_combination_once(tmp_path):
    grid = """\
    tune:
      sampler: grid
      pruner: none
      trials: 10
      parameters:
        optimizer.lr: {choice: [0.01, 0.1]}
        model[0].linear.units: {choice: [8, 16]}
    """
    config = write(tmp_path, SPIRALS.replace("epochs: 10", "epochs: 2") + textwrap.dedent(grid))
    code, output = invoke("tune", config, "--dir", tmp_path / "study")
    assert code == 0, output
    rows = read_trials(tmp_path / "study")
    assert sorted((float(r["optimizer.lr"]), int(r["model[0].linear.units"])) for r in rows) == [
        (0.01, 8), (0.01, 16), (0.1, 8), (0.1, 16)]


@pytest.mark.parametrize("parameters, expected", [
    ("optimizer.lrr: {uniform: [0.1, 0.2]}",
     "c.yaml:17: tune.parameters.optimizer.lrr: optimizer has no key 'lrr' (did you mean 'lr'?); it has: name, lr, "
     "momentum, nesterov, weight_decay, decay_all"),
    ("model[1].linear.units: {choice: [8, 16]}",
     "c.yaml:17: tune.parameters.model[1].linear.units: model[1] is layer 'relu', not 'linear'"),
    ("model[9].linear.units: {choice: [8, 16]}",
     "c.yaml:17: tune.parameters.model[9].linear.units: model has 5 items; [9] is not one of them"),
    ("model[0].linear.units: {uniform: [8, 64]}",
     "c.yaml:17: tune.parameters.model[0].linear.units.uniform: uniform can give 8.0, which the config refuses: "
     "model[0].linear.units: expected a positive integer, got 8.0 (int_uniform draws whole numbers)"),
    ("model[0].linear.units: {int_uniform: [8.5, 64]}",
     "c.yaml:17: tune.parameters.model[0].linear.units.int_uniform: expected [low, high], two whole numbers, got "
     "[8.5, 64] (for numbers with fractions: uniform)"),
    ("model[0].linear.units: {int_uniform: [0, 64]}",
     "c.yaml:17: tune.parameters.model[0].linear.units.int_uniform: int_uniform can give 0, which the config refuses: "
     "model[0].linear.units: expected a positive integer, got 0"),
    ("optimizer.lr: {choice: []}",
     "c.yaml:17: tune.parameters.optimizer.lr.choice: expected a non-empty list of values to choose from, got []"),
    ("optimizer.lr: {log_uniform: [0.0, 1.0]}",
     "c.yaml:17: tune.parameters.optimizer.lr.log_uniform: a log range needs low > 0, got 0.0"),
    ("optimizer.lr: {uniform: [0.5, 0.1]}",
     "c.yaml:17: tune.parameters.optimizer.lr.uniform: expected low < high, got [0.5, 0.1]"),
    ("optimizer.lr: {logg_uniform: [0.1, 0.5]}",
     "c.yaml:17: tune.parameters.optimizer.lr.logg_uniform: unknown kind of range 'logg_uniform' (did you mean "
     "'log_uniform'?); available: uniform, log_uniform, int_uniform, int_log_uniform, choice"),
    ("optimizer.lr: [0.1, 0.5]",
     "c.yaml:17: tune.parameters.optimizer.lr: expected one of uniform, log_uniform, int_uniform, int_log_uniform, "
     "choice as a one-key mapping, e.g. {uniform: [0.0, 0.5]}, got [0.1, 0.5]"),
    ("training.batch_size: {choice: [32, -1]}",
     "c.yaml:17: tune.parameters.training.batch_size.choice: choice can give -1, which the config refuses: "
     "training.batch_size: expected a positive integer, got -1"),
])
def test_search_space_errors_name_the_file_line_and_key(tmp_path, parameters, expected):
    text = SPIRALS + f"tune:\n  trials: 3\n  parameters:\n    {parameters}\n"
    config = write(tmp_path, text, "c.yaml")
    code, output = invoke("tune", config, "--dir", tmp_path / "study")
    assert code == 2, output
    assert output.replace(str(tmp_path) + "/", "").strip() == f"error: {expected}"
    assert not (tmp_path / "study").exists()  # nothing started


@pytest.mark.parametrize("section, expected", [
    ("  metric: val_acc\n", "c.yaml:15: tune.metric: expected one of 'val_loss', 'val_accuracy', 'train_loss', "
                            "'train_accuracy', 'val_mae', 'val_r2' or null, got 'val_acc'"),
    ("  sampler: grid\n", "c.yaml:15: tune.sampler: the grid sampler tries every combination of choices; "
                          "optimizer.lr is a range (give it as choice: [...])"),
    ("  trials: 0\n", "c.yaml:15: tune.trials: expected a positive integer, got 0"),
    ("  pruner: sometimes\n", "c.yaml:15: tune.pruner: expected one of 'median', 'hyperband', 'none', got "
                              "'sometimes'"),
])
def test_tune_option_errors(tmp_path, section, expected):
    text = SPIRALS + "tune:\n" + section + "  parameters:\n    optimizer.lr: {uniform: [0.01, 0.1]}\n"
    code, output = invoke("tune", write(tmp_path, text, "c.yaml"), "--dir", tmp_path / "study")
    assert code == 2, output
    assert output.replace(str(tmp_path) + "/", "").strip() == f"error: {expected}"


def test_a_range_that_breaks_another_key_names_both(tmp_path):
    text = SPIRALS + "schedule: {name: cosine, warmup_epochs: 5}\n" + (
        "tune:\n  parameters:\n    training.epochs: {int_uniform: [1, 20]}\n")
    code, output = invoke("tune", write(tmp_path, text, "c.yaml"), "--dir", tmp_path / "study")
    assert code == 2, output
    assert output.replace(str(tmp_path) + "/", "").strip() == (
        "error: c.yaml:17: tune.parameters.training.epochs.int_uniform: int_uniform can give 1, which the config "
        "refuses: c.yaml:14: schedule.warmup_epochs: warmup of 5.0 epochs is longer than training.epochs = 1")


def test_a_val_metric_without_a_validation_split_and_a_config_without_a_search(tmp_path):
    text = SPIRALS.replace("seed: 0", "seed: 0\n") + SEARCH
    text = text.replace("turns: 1, noise: 0.2}", "turns: 1, noise: 0.2, val_fraction: 0}")
    text = text.replace("early_stopping: {monitor: val_accuracy, patience: 10}", "early_stopping: false")
    code, output = invoke("tune", write(tmp_path, text, "c.yaml"), "--dir", tmp_path / "s")
    assert code == 2
    assert "tune.metric: 'val_accuracy' needs a validation split, and data.val_fraction is 0" in output
    code, output = invoke("tune", write(tmp_path, SPIRALS, "plain.yaml"), "--dir", tmp_path / "s")
    assert code == 2
    assert "plain.yaml: no 'tune:' section says what to search; add one" in output


@pytest.mark.parametrize("space", sorted((Path(__file__).parents[1] / "configs" / "search").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_search_spaces_fit_their_configs(space):
    from dltrain.tune.space import load_search

    search = load_search(space.parents[1] / space.name, [], space)
    assert search.parameters and search.trials > 0


def test_without_optuna_tune_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    monkeypatch.delitem(sys.modules, "dltrain.tune.study", raising=False)
    import dltrain.tune

    monkeypatch.delattr(dltrain.tune, "study", raising=False)
    code, output = invoke("tune", write(tmp_path, SPIRALS + SEARCH), "--dir", tmp_path / "study")
    assert code == 2
    assert "dltrain tune needs Optuna" in output and "pip install 'dltrain[tune]'" in output


MONITORED = SPIRALS.replace("n_samples: 600", "n_samples: 300").replace("epochs: 10", "epochs: 8")
MONITOR_SEARCH = SEARCH.replace("trials: 12", "trials: 3").replace("tpe", "random").replace(
    "{log_uniform: [1.0e-5, 10.0]}", "{log_uniform: [1.0e-3, 0.3]}")


def test_trials_monitor_the_studys_metric_so_value_checkpoint_and_best_yaml_agree(tmp_path):
    import yaml

    # the config names no monitor (its default is val_loss); the study searches val_accuracy
    text = MONITORED.replace("early_stopping: {monitor: val_accuracy, patience: 10}", "early_stopping: {patience: 3}")
    study_dir = tmp_path / "study"
    code, output = invoke("tune", write(tmp_path, text + MONITOR_SEARCH), "--dir", study_dir)
    assert code == 0, output
    rows = read_trials(study_dir)
    assert len(rows) == 3
    for row in rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["monitor"] == "val_accuracy" and row["monitor"] == "val_accuracy"
        assert int(row["best_epoch"]) == summary["best_epoch"]  # the epoch whose checkpoint the run kept
        if row["state"] == "complete":
            assert float(row["value"]) == summary["best_value"] == float(row["monitor_value"])
        assert f"at epoch {summary['best_epoch']};" in next(line for line in output.splitlines()
                                                            if line.startswith(f"trial {row['number']}:"))
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert best["training"]["early_stopping"]["monitor"] == "val_accuracy"
    code, output = invoke("runs", study_dir, "--json")
    assert code == 0, output
    assert {run["monitor"] for run in json.loads(output)} == {"val_accuracy"}


def test_a_monitor_the_config_names_is_kept_and_the_study_reports_it_too(tmp_path):
    import yaml

    text = MONITORED.replace("early_stopping: {monitor: val_accuracy, patience: 10}",
                             "early_stopping: {monitor: val_loss, patience: 3}")
    study_dir = tmp_path / "study"
    code, output = invoke("tune", write(tmp_path, text + MONITOR_SEARCH), "--dir", study_dir)
    assert code == 0, output
    assert "val_accuracy (maximize), sampler random, pruner none; trials keep their best val_loss epoch" in output
    for row in read_trials(study_dir):
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["monitor"] == "val_loss" and row["monitor"] == "val_loss"
        assert int(row["best_epoch"]) == summary["best_epoch"]
        assert float(row["monitor_value"]) == summary["best_value"]
        with open(Path(row["run_dir"]) / "metrics.csv", newline="") as f:
            accuracies = [float(r["val_accuracy"]) for r in csv.DictReader(f)]
        assert float(row["value"]) == max(accuracies)  # the study's metric: the best of the run
        line = next(line for line in output.splitlines() if line.startswith(f"trial {row['number']}:"))
        assert f"(kept epoch {summary['best_epoch']}: val_loss {summary['best_value']:.4f})" in line
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert best["training"]["early_stopping"]["monitor"] == "val_loss"


def test_workers_writing_the_study_files_at_once_leave_the_newest_trials(tmp_path, monkeypatch):
    """Two processes finishing together: the one whose view of the study is older must not write last."""
    import threading

    from dltrain.tune import study as studies
    from dltrain.tune.space import load_search

    config = write(tmp_path, SPIRALS + SEARCH)
    search = load_search(config)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    study = studies.open_study(search, studies.open_storage(studies.default_storage(study_dir)), "s")
    study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 0.1}, value=0.5, distributions={
        "optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 10.0, log=True)},
        user_attrs={"run_dir": str(study_dir / "trial-0000"), "best_epoch": 3}))
    monkeypatch.setattr(studies, "_write_plots", lambda study, study_dir: {})
    read, newer_written = threading.Event(), threading.Event()
    rows_of = studies.trial_rows

    def slow_first_reader(study, search):
        rows = rows_of(study, search)
        if threading.current_thread().name == "older":
            read.set()
            newer_written.wait(timeout=3)  # without a lock, the newer view is written first, then this older one
        return rows

    atomic_write = studies.files.atomic_write

    def noting_write(path, data):
        atomic_write(path, data)
        if threading.current_thread().name == "newer" and Path(path).name == "trials.csv":
            newer_written.set()

    monkeypatch.setattr(studies, "trial_rows", slow_first_reader)
    monkeypatch.setattr(studies.files, "atomic_write", noting_write)
    older = threading.Thread(target=studies.write_results, args=(study, search, study_dir, "s"), name="older")
    older.start()
    assert read.wait(timeout=30)
    study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 0.2}, value=0.7, distributions={
        "optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 10.0, log=True)},
        user_attrs={"run_dir": str(study_dir / "trial-0001"), "best_epoch": 3}))
    newer = threading.Thread(target=studies.write_results, args=(study, search, study_dir, "s"), name="newer")
    newer.start()
    older.join()
    newer.join()
    assert [r["value"] for r in read_trials(study_dir)] == ["0.5", "0.7"]
    assert "trial 1, val_accuracy 0.7" in (study_dir / "best.yaml").read_text()


def test_a_study_that_cannot_open_its_sqlite_storage_leaves_no_directory_behind(tmp_path, monkeypatch):
    from dltrain.errors import ConfigError
    from dltrain.tune import study as studies

    def refuse(*args, **kwargs):
        raise ConfigError("the storage refused")

    monkeypatch.setattr(studies, "open_study", refuse)
    (tmp_path / "kept").mkdir()
    code, output = invoke("tune", write(tmp_path, SPIRALS + SEARCH), "--dir", tmp_path / "new" / "study")
    assert code == 2 and output.strip() == "error: the storage refused"
    assert not (tmp_path / "new").exists()  # what this process created is gone
    code, output = invoke("tune", write(tmp_path, SPIRALS + SEARCH), "--dir", tmp_path / "kept")
    assert code == 2 and (tmp_path / "kept").is_dir()  # what was there stays


def test_workers_get_the_storage_url_from_the_environment_not_their_command_line(tmp_path, monkeypatch):
    """A password in --storage would show in `ps` on every worker's command line."""
    from dltrain.cli import tune as tune_command

    started = []

    class Recorded:
        def __init__(self, command, env):
            started.append((command, env))

        def wait(self):
            return 0

    monkeypatch.setattr(tune_command.subprocess, "Popen", Recorded)
    url = "postgresql+psycopg2://me:s3cret@127.0.0.1:5/db"
    tune_command._run_workers(2, tmp_path / "c.yaml", None, [], 4, url, "c", tmp_path, None, None, [], 10)
    assert len(started) == 2
    for command, env in started:
        assert not any("s3cret" in part for part in command) and "--storage" not in command
        assert env["DLTRAIN_STORAGE"] == url


@pytest.mark.parametrize("url, expected", [
    ("postgres://u:p@127.0.0.1:5432/db",
     "--storage postgres://u:***@127.0.0.1:5432/db: SQLAlchemy has no dialect for postgres://; write postgresql:// "
     "(or postgresql+psycopg:// for psycopg 3)"),
    ("postgres+psycopg2://u:s3cret@127.0.0.1/db",
     "--storage postgres+psycopg2://u:***@127.0.0.1/db: SQLAlchemy has no dialect for postgres+psycopg2://; write "
     "postgresql+psycopg2://"),
    ("foo://x",
     "--storage foo://x: SQLAlchemy has no dialect for foo:// (Can't load plugin: sqlalchemy.dialects:foo); expected "
     "a URL such as postgresql+psycopg2://user:password@host/database or sqlite:///path/study.db"),
    ("postgresql://u@127.0.0.1:notaport/db",
     "--storage postgresql://u@127.0.0.1:notaport/db: expected a database URL such as "
     "postgresql+psycopg2://user:password@host/database or sqlite:///path/study.db; its port 'notaport' is not a "
     "number"),
    ("postgresql+psycopg2://u:s3cret@[::1]:x/db",
     "--storage postgresql+psycopg2://u:***@[::1]:x/db: expected a database URL such as "
     "postgresql+psycopg2://user:password@host/database or sqlite:///path/study.db; its port 'x' is not a number"),
])
def test_a_storage_url_sqlalchemy_cannot_open_is_one_line_without_its_password(tmp_path, url, expected):
    """No server needed: these URLs fail before any connection (an unknown dialect, a port that is not a number)."""
    code, output = invoke("tune", write(tmp_path, SPIRALS + SEARCH), "--storage", url, "--dir", tmp_path / "study")
    assert code == 2, output
    assert output.strip() == f"error: {expected}"
    assert not (tmp_path / "study").exists()  # nothing started
