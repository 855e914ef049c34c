"""The run directory: every artifact's file name, and writes that are never left half-done.

    runs/<config name>-<timestamp>/
        config.yaml                  the resolved config (defaults filled in)
        metrics.csv                  one row per epoch
        summary.json                 how the run ended, best epoch, test metrics, speed
        checkpoints/best.safetensors checkpoints/last.safetensors
        curves.png                   learning curves (dltrain plot)
        process.json                 the process training it (pid, host, start): running, or killed?
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import yaml

from ..errors import RunDirError

CONFIG = "config.yaml"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
BEST = "checkpoints/best.safetensors"
LAST = "checkpoints/last.safetensors"
CURVES = "curves.png"
PROCESS = "process.json"
GRADIENTS = "gradients.csv"  # with training.log_gradients
GRADIENT_PLOT = "gradients.png"
METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def default_run_dir(config_path: str | Path, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = Path(config_path).stem or "run"
    candidate = Path(root) / f"{name}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = Path(root) / f"{name}-{stamp}-{suffix}"
    return candidate


class RunDir:
    """The files of one run. With writable=False (MPI ranks other than 0) every write is skipped."""

    def __init__(self, path: str | Path, writable: bool = True):
        self.path = Path(path)
        self.writable = writable

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> None:
        """Make a new run directory; an existing non-empty one is never overwritten."""
        if not self.writable:
            return
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunDirError(f"run directory {self.path} already exists and is not empty; choose another "
                              "--run-dir or continue it with --resume")
        try:
            (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror or exc}") from None

    def remove_stale_temporaries(self) -> None:
        """Temporary files of writes a killed process never finished (the real files are intact)."""
        if not self.writable:
            return
        for path in self.path.rglob(".*.tmp"):
            path.unlink(missing_ok=True)

    def write_config(self, config: dict) -> None:
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
        self._write(CONFIG, text.encode())

    def write_summary(self, summary: dict) -> None:
        self._write(SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())

    def write_process(self) -> None:
        """Who trains this run now; a resumed run's old summary goes, as it no longer says how the run ended."""
        if not self.writable:
            return
        try:
            self.file(SUMMARY).unlink(missing_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot remove {self.file(SUMMARY)}: {exc.strerror or exc}") from None
        self._write(PROCESS, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "process_start": process_start(os.getpid()),
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())

    def read_process(self) -> dict | None:
        try:
            return json.loads(self.file(PROCESS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _write(self, name: str, data: bytes) -> None:
        if not self.writable:
            return
        try:
            atomic_write(self.file(name), data)
        except OSError as exc:
            raise RunDirError(f"cannot write {self.file(name)}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------ metrics.csv

    def start_metrics(self, keep_epochs: int = 0) -> None:
        """A metrics.csv with the header and the rows of the first `keep_epochs` epochs (a torn line is dropped)."""
        self.start_table(METRICS, METRIC_COLUMNS, keep_epochs)

    def append_metrics(self, row: dict) -> None:
        self.append_row(METRICS, METRIC_COLUMNS, row)

    def read_metrics(self) -> list[dict]:
        return self.read_table(METRICS)

    def start_table(self, name: str, columns, keep_epochs: int = 0) -> None:
        """Write a per-epoch CSV anew: its header, then the kept rows of an earlier (resumed) run."""
        rows = [r for r in self.read_table(name) if int(r["epoch"]) <= keep_epochs] if keep_epochs else []
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        self._write(name, buffer.getvalue().encode())

    def append_row(self, name: str, columns, row: dict) -> None:
        if not self.writable:
            return
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=list(columns), lineterminator="\n").writerow(row)
        try:
            with open(self.file(name), "a", encoding="utf-8") as f:
                f.write(line.getvalue())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise RunDirError(f"cannot write {self.file(name)}: {exc.strerror or exc}") from None

    def read_table(self, name: str) -> list[dict]:
        """Rows of a per-epoch CSV as dicts of strings; an incomplete last line (a crash mid-write) is skipped."""
        path = self.file(name)
        if not path.is_file():
            return []
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        if text and not text.endswith("\n"):
            lines = lines[:-1]
        rows = list(csv.DictReader(lines))
        return [r for r in rows if None not in r.values() and r.get("epoch", "").isdigit()]

    def read_summary(self) -> dict | None:
        path = self.file(SUMMARY)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def process_start(pid: int) -> str | None:
    """When the kernel started process `pid` (Linux /proc/PID/stat, field 22), which tells it apart from a later
    process given the same pid; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which ends with ')'


def is_alive(process: dict) -> bool | None:
    """Whether the process a run's process.json names still runs: None when it ran on another host."""
    if process.get("host") != socket.gethostname():
        return None
    pid = process.get("pid")
    if not isinstance(pid, int):
        return False
    started = process_start(pid)
    if started is not None or process.get("process_start") is not None:
        return started is not None and started == process.get("process_start")
    try:  # no /proc: whether some process has that pid
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

