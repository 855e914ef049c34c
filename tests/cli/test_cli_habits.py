"""The command line as its users expect it: several checkpoints for eval, an unknown option that names a config key
says how to set it, --help without Python types, a config where a checkpoint belongs named as such, and --resume of
a finished run that does nothing."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dltrain.cli import app, config_key_hint, config_keys
from dltrain.training import rundir as files

TINY = """\
seed: 0
data: {name: blobs, n_samples: 200, classes: 3}
model: [{linear: {units: 8}}, relu, {linear: {units: 3}}]
training: {epochs: 2, batch_size: 16}
"""
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"}, prog_name="dltrain")


def error_panel(result) -> str:
    """The text of Typer's error box, its lines joined (the box is wide enough for one line at COLUMNS=250)."""
    return " ".join(line.strip("│ ").strip() for line in result.stderr.splitlines() if line.startswith("│"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two finished two-epoch runs of TINY: where/runs/quickstart-1 and -2, the config at where/tiny.yaml."""
    where = tmp_path_factory.mktemp("habits")
    (where / "tiny.yaml").write_text(TINY)
    for i in (1, 2):
        result = invoke("train", where / "tiny.yaml", "--run-dir", where / "runs" / f"quickstart-{i}", "--quiet")
        assert result.exit_code == 0, result.output
    return where


def snapshot(path):
    """Every file of a run directory (but the lock, whose content names its last holder) and its digest."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != files.LOCK}


# ---------------------------------------------------------------- 1. eval and plot take several runs


def test_eval_takes_several_run_directories_json_lines(trained):
    runs = sorted((trained / "runs").glob("quickstart-*/"))
    result = invoke("eval", *runs, "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    reports = [json.loads(line) for line in lines]
    assert [r["checkpoint"] for r in reports] == [str(run / "checkpoints" / "best.safetensors") for run in runs]


def test_eval_reports_several_in_turn(trained):
    runs = sorted((trained / "runs").glob("quickstart-*"))
    result = invoke("eval", *runs)
    assert result.exit_code == 0, result.output
    heads = [line for line in result.stdout.splitlines() if "split test" in line]
    assert [head.split()[0] for head in heads] == [str(run / "checkpoints" / "best.safetensors") for run in runs]


def test_eval_checks_every_path_before_the_first_report(trained):
    result = invoke("eval", trained / "runs" / "quickstart-1", trained / "nothing")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"error: {trained / 'nothing'}: checkpoint not found\n"


def test_eval_plots_dir_takes_one_checkpoint(trained):
    runs = sorted((trained / "runs").glob("quickstart-*"))
    result = invoke("eval", *runs, "--plots-dir", trained / "pictures")
    assert result.exit_code == 2
    assert result.stderr == (f"error: --plots-dir {trained / 'pictures'}: one folder for 2 checkpoints; give one "
                             "checkpoint, or --plots alone (each run's pictures go to RUN/plots)\n")
    assert not (trained / "pictures").exists()


def test_plot_overlays_two_run_directories_given_with_slashes(trained, tmp_path):
    runs = [f"{run}/" for run in sorted((trained / "runs").glob("quickstart-*"))]
    out = tmp_path / "both.png"
    result = invoke("plot", *runs, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_help_says_json_lines():
    assert "JSON Lines" in invoke("eval", "--help").stdout


# ---------------------------------------------------------------- 2. an unknown option that names a config key


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "3"], "No such option: --epochs; to change the config's training.epochs write --set "
                        "training.epochs=3"),
    (["--lr=0.1"], "No such option: --lr; to change the config's optimizer.lr write --set optimizer.lr=0.1"),
    (["--batch-size", "64"], "No such option: --batch-size; to change the config's training.batch_size write --set "
                             "training.batch_size=64"),
    (["--batch_size", "64"], "No such option: --batch_size; to change the config's training.batch_size write --set "
                             "training.batch_size=64"),
    (["--seed", "7"], "No such option: --seed; to change the config's seed write --set seed=7"),
    (["--patience"], "No such option: --patience; to change the config's training.early_stopping.patience write "
                     "--set training.early_stopping.patience=VALUE"),
    (["--optimizer", "sgd"], "No such option: --optimizer; to change the config's optimizer.name write --set "
                             "optimizer.name=sgd"),
])
def test_an_option_that_names_a_config_key_says_how_to_set_it(args, message):
    result = invoke("train", "a.yaml", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: dltrain train [OPTIONS] [CONFIG]\n")  # click's usage line, kept
    assert error_panel(result) == message


def test_an_option_naming_several_keys_lists_them():
    result = invoke("check", "a.yaml", "--name", "sgd")
    assert result.exit_code == 2
    assert error_panel(result) == ("No such option: --name; to change the config's data.name, loss.name, "
                                   "optimizer.name or schedule.name write --set data.name=sgd, --set loss.name=sgd, "
                                   "--set optimizer.name=sgd or --set schedule.name=sgd")


@pytest.mark.parametrize("command", ["train", "tune", "check", "profile", "find-lr"])
def test_every_command_with_set_gives_the_hint(command):
    result = invoke(command, "a.yaml", "--epochs", "3")
    assert result.exit_code == 2
    assert "to change the config's training.epochs write --set training.epochs=3" in error_panel(result)


def test_other_unknown_options_keep_clicks_message():
    result = invoke("train", "a.yaml", "--bogus")
    assert result.exit_code == 2 and error_panel(result).startswith("No such option: --bogus")
    assert "--set" not in error_panel(result)
    result = invoke("eval", "run", "--epochs", "3")  # eval takes no --set: no config to change
    assert result.exit_code == 2 and "--set" not in error_panel(result)


def test_config_keys_come_from_the_schema_and_the_registries():
    keys = config_keys()
    for key in ("seed", "training.epochs", "training.batch_size", "training.early_stopping.patience", "data.classes",
                "data.fold.index", "optimizer.lr", "optimizer.momentum", "loss.label_smoothing", "schedule.name"):
        assert key in keys
    assert not any(key.endswith((".ge", ".gt", ".lt")) for key in keys)  # annotated bounds are no keys
    assert config_key_hint("-e", ["-e", "3"]) is None
    assert config_key_hint("--seed", ["--seed", "-1"]) == "to change the config's seed write --set seed=-1"
    assert config_key_hint("--monitor", ["--monitor", "val accuracy"]) == (
        "to change the config's training.early_stopping.monitor write --set "
        "'training.early_stopping.monitor=val accuracy'")


# ---------------------------------------------------------------- 3. --help as a Typer user expects it


def all_help_pages():
    group = typer.main.get_command(app)
    pages = {"dltrain": invoke("--help")}
    for name in group.commands:
        pages[f"dltrain {name}"] = invoke(name, "--help")
    return pages


def test_no_help_page_shows_python_types():
    for name, result in all_help_pages().items():
        assert result.exit_code == 0, name
        for python_type in ("<bool>", "<list[", "<path>", "{", "<str>", "<int", "<float"):
            assert python_type not in result.stdout, (name, python_type)


def test_usage_lines_read_as_click_writes_them():
    usage = {name: next(line.strip() for line in result.stdout.splitlines() if "Usage:" in line)
             for name, result in all_help_pages().items()}
    assert usage["dltrain predict"] == "Usage: dltrain predict [OPTIONS] MODEL INPUT..."
    assert usage["dltrain eval"] == "Usage: dltrain eval [OPTIONS] CHECKPOINT..."
    assert usage["dltrain train"] == "Usage: dltrain train [OPTIONS] [CONFIG]"
    assert usage["dltrain runs"] == "Usage: dltrain runs [OPTIONS] [DIR]..."
    assert usage["dltrain serve"] == "Usage: dltrain serve [OPTIONS] MODEL..."
    assert usage["dltrain diff"] == "Usage: dltrain diff [OPTIONS] RUN_A RUN_B"
    assert usage["dltrain"] == "Usage: dltrain [OPTIONS] COMMAND [ARGS]..."


def test_every_value_has_a_metavar_and_no_flag_has_one():
    group = typer.main.get_command(app)
    for name, command in [("dltrain", group), *group.commands.items()]:
        context = typer.Context(command, info_name=name)
        for param in command.get_params(context):
            if param.param_type_name == "option" and param.is_flag:
                assert param.metavar == "", (name, param.name)
            else:
                assert param.metavar and re.fullmatch(r"[A-Z_=]+", param.metavar), (name, param.name, param.metavar)


def test_flags_have_a_blank_type_column():
    page = invoke("predict", "--help").stdout
    line = next(line for line in page.splitlines() if "--probabilities" in line)
    assert re.search(r"--probabilities\s+One probability column per class\.", line)
    assert re.search(r"--out\s+FILE\s+Write here", page)
    assert re.search(r"\*\s+INPUT\.\.\.\s+Image files", page)


# ---------------------------------------------------------------- 4. a config where a trained model belongs


def config_given(path) -> str:
    return (f"error: {path}: expected a checkpoint (.safetensors) or a run directory, found what looks like a YAML "
            f"config; train it first (dltrain train {path}) and give the run directory it writes\n")


@pytest.mark.parametrize(("command", "more"), [("eval", []), ("predict", ["inputs.csv"]), ("export", []),
                                               ("serve", [])])
def test_a_config_given_for_a_checkpoint_is_named_as_such(trained, command, more):
    config = trained / "tiny.yaml"
    result = invoke(command, config, *more)
    assert result.exit_code == 2
    assert result.stderr == config_given(config)


def test_a_runs_own_config_points_to_its_run(finished):
    result = invoke("eval", finished / "config.yaml")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {finished / 'config.yaml'}: expected a checkpoint (.safetensors) or a run "
                             f"directory, found the config of a run; give the run directory, {finished}\n")


def test_a_config_is_recognised_by_its_text_too(tmp_path):
    config = tmp_path / "settings.txt"
    config.write_text(TINY)
    result = invoke("eval", config)
    assert result.exit_code == 2
    assert result.stderr == config_given(config)
    other = tmp_path / "notes.txt"
    other.write_text("just some words\n")
    result = invoke("eval", other)
    assert result.exit_code == 2 and "not a valid safetensors checkpoint" in result.stderr


# ---------------------------------------------------------------- 5. --resume of a finished run


@pytest.fixture
def finished(tmp_path, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained / "runs" / "quickstart-1", run)
    return run


def test_resume_of_a_finished_run_does_nothing(finished):
    before = snapshot(finished)
    result = invoke("train", "--resume", finished)
    assert result.exit_code == 0, result.output
    assert (f"{finished} finished all 2 of its epochs; nothing to resume (extend it with --set training.epochs=N)"
            in result.stdout.splitlines())
    assert "resuming after" not in result.stdout
    assert snapshot(finished) == before  # process.json, summary.json, metrics.csv, checkpoints: untouched


def test_resume_with_more_epochs_trains_on(finished):
    result = invoke("train", "--resume", finished, "--set", "training.epochs=3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 2 of 3" in result.stdout
    assert json.loads((finished / files.SUMMARY).read_text())["epochs_run"] == 3


def test_resume_of_a_run_stopped_early_does_nothing(tmp_path):
    config = tmp_path / "early.yaml"
    config.write_text(TINY.replace("training: {epochs: 2,", "training: {epochs: 5, early_stopping: {patience: 1, "
                                                            "min_delta: 1000},"))
    run = tmp_path / "run"
    assert invoke("train", config, "--run-dir", run, "--quiet").exit_code == 0
    assert json.loads((run / files.SUMMARY).read_text())["stop_reason"] == "early_stopping"
    before = snapshot(run)
    result = invoke("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert (f"{run} finished: early stopping ended it after epoch 2 of 5 (val_loss had not improved for 1 epoch); "
            "nothing to resume (continue it with --set training.early_stopping.patience=N, N above 1)"
            in result.stdout.splitlines())
    assert snapshot(run) == before
    more = invoke("train", "--resume", run, "--set", "training.early_stopping.patience=3", "--quiet")
    assert more.exit_code == 0, more.output
    assert json.loads((run / files.SUMMARY).read_text())["epochs_run"] == 4


@pytest.mark.parametrize("listing", ["layers", "losses", "optimizers", "schedules", "datasets", "augmentations"])
def test_each_registry_listing_works_in_a_fresh_process(listing):
    """In a process of its own (the registries are filled by importing their modules, which another command may not
    have done): `dltrain schedules` once failed with "unknown schedule 'constant'"."""
    result = subprocess.run([str(Path(sys.executable).parent / "dltrain"), listing], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert listing in result.stdout
