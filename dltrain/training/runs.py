"""Run directories read back: `dltrain runs` (a table of many) and `dltrain diff` (two side by side).

Everything here is read from what runs wrote: config.yaml, metrics.csv, summary.json, process.json. A run with no
summary is `running` while the process its process.json names is alive, and `killed` once it is not: training that
ends by completing, stopping early, diverging, being interrupted (Ctrl-C, SIGTERM) or pruned writes a summary, so
no summary means the process died without one (kill -9, power loss, or a crash such as a full disk).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import yaml

from ..config import format_path
from ..errors import DltrainError
from . import rundir as files
from .loggers import flatten

COLUMNS = ("run", "started", "device", "status", "epochs", "best", "test", "seconds", "samples_per_second")


def find_runs(roots: list[Path]) -> list[Path]:
    """Run directories (holding config.yaml and metrics.csv or summary.json) under `roots`, recursively."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise DltrainError(f"{root}: no such directory")
        candidates = [root, *sorted(p.parent for p in root.rglob(files.CONFIG))]
        for path in candidates:
            if (path / files.CONFIG).is_file() and ((path / files.METRICS).is_file()
                                                     or (path / files.SUMMARY).is_file()):
                if path not in found:
                    found.append(path)
    return found


def status_of(run: files.RunDir, summary: dict | None) -> str:
    if summary is not None:
        return summary.get("stop_reason", "unknown")
    process = run.read_process()
    if process is None:
        return "unknown"  # written before dltrain recorded its process
    alive = files.is_alive(process)
    if alive is None:
        return f"no summary (ran on {process.get('host')})"
    return "running" if alive else "killed"


def run_row(path: Path, root: Path | None = None) -> dict:
    """One run's row: the table's columns, plus its config (flattened) for --where."""
    run = files.RunDir(path, writable=False)
    summary = run.read_summary()
    metrics = run.read_metrics()
    process = run.read_process() or {}
    config = read_config(path)
    started = process.get("started") or datetime.datetime.fromtimestamp(
        (path / files.CONFIG).stat().st_mtime).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
    row = {"run": str(path.relative_to(root)) if root and path != root and path.is_relative_to(root) else str(path),
           "started": started, "device": (summary or {}).get("device") or config.get("device"),
           "status": status_of(run, summary)}
    row["epochs"] = summary["epochs_run"] if summary else len(metrics)
    monitor = (summary or {}).get("monitor") or config.get("training", {}).get("early_stopping", {}).get("monitor")
    best_value, best_epoch = (summary or {}).get("best_value"), (summary or {}).get("best_epoch")
    if best_value is None and metrics and monitor in metrics[0]:  # still running or killed: the rows so far
        values = [(float(r[monitor]), int(r["epoch"])) for r in metrics if r.get(monitor) not in (None, "")]
        if values:
            best_value, best_epoch = (max if monitor.endswith("accuracy") else min)(values)
    row.update(monitor=monitor, best_value=best_value, best_epoch=best_epoch)
    row["test_accuracy"] = (summary or {}).get("test_accuracy")
    row["test_loss"] = (summary or {}).get("test_loss")
    row["seconds"] = (summary or {}).get("total_seconds") or (
        round(sum(float(r["seconds"]) for r in metrics), 3) if metrics else None)
    row["samples_per_second"] = (summary or {}).get("train_samples_per_second")
    row["config"] = flatten(config)
    return row


def read_config(path: Path) -> dict:
    try:
        values = yaml.safe_load((Path(path) / files.CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DltrainError(f"{Path(path) / files.CONFIG}: cannot read the run's config ({exc})") from None
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


SUMMARY_FIGURES = ("status", "epochs", "monitor", "best_value", "best_epoch", "test_accuracy", "test_loss", "seconds",
                   "samples_per_second", "device")
