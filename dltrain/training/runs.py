"""Run directories read back: `dltrain runs` (a table of many) and `dltrain diff` (two side by side).

Everything here is read from what runs wrote: config.yaml, metrics.csv, summary.json, process.json. A run is
`running` while the process its process.json names is alive (a resumed run keeps its old summary until it writes a
new one), and otherwise says how it ended, from its summary. One with no summary is `killed`: training that ends by
completing, stopping early, diverging, failing, being interrupted (Ctrl-C, SIGTERM) or pruned writes a summary, so no
summary means the process died without one (kill -9, power loss, or a crash such as a full disk).

A file that cannot be read (not UTF-8, not the CSV or JSON it should be, a word where a number belongs) does not stop
the table: the row shows what the other files say, and the row's `problems` name the file and what is wrong
(`unreadable` status when it is summary.json). `dltrain diff` and `dltrain plot` of such a run refuse it instead.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import yaml

from ..config import flatten_keys, format_path
from ..config.loader import load_yaml
from ..config.schema import maximized
from ..errors import DltrainError, RunDirError
from . import rundir as files
from .fold_results import FIGURES, is_cross_validation, mean_and_std, read_folds

COLUMNS = ("run", "started", "device", "status", "epochs", "best", "test", "seconds", "samples_per_second")


def find_runs(roots: list[Path], folds: bool = False) -> list[Path]:
    """Run directories (holding config.yaml and metrics.csv or summary.json, or a k-fold run's folds.csv) under
    `roots`, recursively. A k-fold run is one directory; its folds' runs are listed after it with `folds`."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise DltrainError(f"{root}: no such directory")
        candidates = [root, *sorted((p.parent for p in root.rglob(files.CONFIG)), key=_natural)]
        for path in candidates:
            inside_cross_validation = path != root and is_cross_validation(path.parent)
            if not (path / files.CONFIG).is_file() or (inside_cross_validation and not folds):
                continue
            if any((path / name).is_file() for name in (files.METRICS, files.SUMMARY, files.FOLDS)):
                if path not in found:
                    found.append(path)
    return found


def _natural(path: Path) -> tuple:
    """Paths in the order people count: fold-2 before fold-10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", str(path)) if part)


def status_of(run: files.RunDir, summary: dict | None, metrics: list[dict] = ()) -> str:
    """How the run ended, or `running`; `metrics` (its rows) tell a resume that died after completing epochs, which
    leaves the summary of the run it continued, from that run itself."""
    process = run.read_process()
    alive = files.is_alive(process) if process is not None else False
    # a summary older than process.json is that of the run a later process resumed (and has yet to replace)
    resumed = summary is not None and _modified(run.file(files.PROCESS)) > _modified(run.file(files.SUMMARY))
    if alive and (summary is None or resumed):
        return "running"
    if summary is not None:
        recorded = max((int(r["epoch"]) for r in metrics), default=0)
        if resumed and isinstance(summary.get("epochs_run"), int) and recorded > summary["epochs_run"]:
            return "killed"  # the resume completed epochs the summary does not count, then died without its own
        return summary.get("stop_reason", "unknown")
    if process is None:
        return "unknown"  # written before dltrain recorded its process, or process.json names no process
    if alive is None:
        return f"no summary (ran on {process.get('host')})"
    return "killed"


def _modified(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def metric_value(path: Path, row: dict, column: str) -> float | None:
    """A number of a per-epoch CSV row (None where blank); RunDirError naming the file, epoch and column for a word."""
    text = row.get(column)
    if text in (None, ""):
        return None
    try:
        return float(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise RunDirError(f"{path}: epoch {row.get('epoch')}: {column} is not a number: {shown!r}") from None


def numbers_checked(path: Path, rows: list[dict]) -> list[dict]:
    """The rows of a per-epoch CSV, each of whose cells is a number or blank; RunDirError naming the first that is
    not (a row longer than its header keeps the extra cells under None, which are left out)."""
    for row in rows:
        for column in row:
            if isinstance(column, str):
                metric_value(path, row, column)
    return rows


def run_row(path: Path, root: Path | None = None) -> dict:
    """One run's row: the table's columns, plus its config (flattened) for --where, and `problems`: what could not
    be read, each naming its file (the row's other values come from the files that could)."""
    run = files.RunDir(path, writable=False)
    problems = []

    def read(reader, default):
        try:
            return reader()
        except DltrainError as exc:
            problems.append(str(exc))
            return default

    summary = read(run.read_summary, None)
    summary_unreadable = bool(problems)
    if is_cross_validation(path):
        return _cross_validation_row(path, root, run, summary, problems)
    metrics_file = run.file(files.METRICS)
    metrics = read(lambda: numbers_checked(metrics_file, run.read_metrics()), [])
    process = run.read_process() or {}
    config = read(lambda: read_config(path), {})
    started = process.get("started") or datetime.datetime.fromtimestamp(
        (path / files.CONFIG).stat().st_mtime).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
    figures = summary or {}
    row = {"run": str(path.relative_to(root)) if root and path != root and path.is_relative_to(root) else str(path),
           "started": started, "device": figures.get("device") or _setting(config, "device"),
           "status": "unreadable" if summary_unreadable else status_of(run, summary, metrics)}
    row["epochs"] = figures.get("epochs_run", len(metrics))
    monitor = figures.get("monitor") or _setting(config, "training", "early_stopping", "monitor")
    best_value, best_epoch = figures.get("best_value"), figures.get("best_epoch")
    if best_value is None and metrics and monitor in metrics[0]:  # still running or killed: the rows so far
        values = [(value, int(r["epoch"])) for r in metrics if (value := metric_value(metrics_file, r, monitor))
                  is not None]
        if values:
            best_value, best_epoch = (max if maximized(monitor) else min)(values)
    row.update(monitor=monitor, best_value=best_value, best_epoch=best_epoch)
    row["test_accuracy"] = figures.get("test_accuracy")
    row["test_loss"] = figures.get("test_loss")
    row["test_mae"] = figures.get("test_mae")  # regression, in the data's units
    row["seconds"] = figures.get("total_seconds")
    if row["seconds"] is None and metrics:
        row["seconds"] = round(sum(metric_value(metrics_file, r, "seconds") or 0.0 for r in metrics), 3)
    row["samples_per_second"] = figures.get("train_samples_per_second")
    row["config"] = flatten_keys(config)
    row["problems"] = problems
    return row


def _cross_validation_row(path: Path, root: Path | None, run: files.RunDir, summary: dict | None,
                          problems: list[str]) -> dict:
    """A k-fold run's row: its folds' mean (and std) from folds.csv, which grows as they finish."""
    unreadable = bool(problems)
    try:
        rows = read_folds(path)
        for row in rows:
            for column in FIGURES:
                metric_value(run.file(files.FOLDS), {**row, "epoch": row["fold"]}, column)
    except RunDirError as exc:
        problems.append(str(exc))
        rows = []
    try:
        config = read_config(path)
    except DltrainError as exc:
        problems.append(str(exc))
        config = {}
    figures = {column: mean_and_std([float(r[column]) for r in rows if r.get(column) not in (None, "")])
               for column in FIGURES}  # a folds.csv of an older dltrain lacks the later columns
    process = run.read_process() or {}
    started = process.get("started") or datetime.datetime.fromtimestamp(
        (path / files.CONFIG).stat().st_mtime).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
    summary = summary or {}
    folds = summary.get("folds") or _setting(config, "training", "folds")
    return {"run": str(path.relative_to(root)) if root and path != root and path.is_relative_to(root) else str(path),
            "started": started, "device": summary.get("device") or _setting(config, "device"),
            "status": "unreadable" if unreadable else status_of(run, summary or None),
            "epochs": sum(int(float(r["epochs"])) for r in rows if r["epochs"] != ""),
            "folds": folds, "folds_run": len(rows),
            "monitor": summary.get("monitor") or next((r["monitor"] for r in rows if r["monitor"]), None)
            or _setting(config, "training", "early_stopping", "monitor"),
            "best_value": figures["best_value"][0], "best_std": figures["best_value"][1], "best_epoch": None,
            "test_accuracy": figures["test_accuracy"][0], "test_accuracy_std": figures["test_accuracy"][1],
            "test_loss": figures["test_loss"][0], "test_loss_std": figures["test_loss"][1],
            "test_mae": figures["test_mae"][0], "test_mae_std": figures["test_mae"][1],
            "seconds": summary.get("total_seconds", round(sum(float(r["seconds"]) for r in rows if r["seconds"]), 3)),
            "samples_per_second": None, "config": flatten_keys(config), "problems": problems}


def _setting(config: dict, *keys):
    """config[key][key]... of a run's config, None where a level is missing or not a mapping."""
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config if isinstance(config, str | int | float) else None


def read_config(path: Path) -> dict:
    """A run's config.yaml as a mapping ({} for another value), read as configs are (nesting, aliases and tags
    bounded); DltrainError naming it when it cannot be read."""
    file = Path(path) / files.CONFIG
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DltrainError(f"{file}: cannot read the run's config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DltrainError(f"{file}: cannot read the run's config: {files.not_utf8(exc)}") from None
    values, _ = load_yaml(text, str(file))
    return values if isinstance(values, dict) else {}


def matches(row: dict, condition: str) -> bool:
    """KEY=VALUE against a column (status=completed) or a config key (optimizer.name=adam, training.epochs=30)."""
    key, _, wanted = condition.partition("=")
    key = key.strip()
    value = row.get(key, row["config"].get(key))
    if value is None:
        return wanted.strip() in ("", "null", "None") and key in row["config"]
    try:
        parsed = yaml.safe_load(wanted) if wanted.strip() else ""
    except yaml.YAMLError:  # not a YAML value: compare the text
        parsed = wanted.strip()
    return value == parsed or str(value) == wanted.strip()


def sort_key(key: str):
    """--sort KEY: a column or config key; numbers before text, missing values last."""
    column = {"best": "best_value", "test": "test_accuracy"}.get(key, key)

    def value(row):
        v = row.get(column, row["config"].get(column))
        return (v is None, not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v))
    return value


def differences(old, new, path: tuple = ()):
    """(key path, old, new) for every leaf where two resolved configs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            yield from differences(old.get(key), new.get(key), path + (key,))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from differences(a, b, path + (i,))
    elif old != new:
        yield format_path(path), old, new


SUMMARY_FIGURES = ("status", "epochs", "monitor", "best_value", "best_epoch", "test_accuracy", "test_loss", "test_mae",
                   "seconds", "samples_per_second", "device")
