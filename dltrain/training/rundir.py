"""The run directory: every artifact's file name, and writes that are never left half-done.

    runs/<config name>-<timestamp>/
        config.yaml                  the resolved config (defaults filled in)
        metrics.csv                  one row per epoch
        lr.csv                       the learning rate of every optimizer step
        summary.json                 how the run ended, best epoch, test metrics, speed
        checkpoints/best.safetensors checkpoints/last.safetensors
        curves.png                   learning curves (dltrain plot)
        process.json                 the process training it (pid, host, start): running, or killed?
        .lock                        held (flock) by the one process writing the run; the kernel releases it on exit
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import shutil
import socket
import stat
import sys
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
LEARNING_RATES = "lr.csv"  # every optimizer step's rate: warmup and per-step schedules show only here
GRADIENTS = "gradients.csv"  # with training.log_gradients
GRADIENT_PLOT = "gradients.png"
LOCK = ".lock"
FOLDS = "folds.csv"  # a k-fold run's table of folds (training/folds.py); it marks the k-fold run's own directory
FINAL = "final"  # a k-fold run's final run (training.final), beside its fold-0, fold-1, ...
# What a run writes; a directory holding only these from a run that failed before its first epoch is reused.
RUN_FILES = {CONFIG, METRICS, LEARNING_RATES, SUMMARY, CHECKPOINTS, CURVES, PROCESS, GRADIENTS, GRADIENT_PLOT, LOCK,
             "tensorboard", "mlflow.json", "plots", FOLDS}
# val_mae (data units) and val_r2: regression runs; blank in others, as train_accuracy is blank in regression runs
METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_mae", "val_r2", "lr",
                  "seconds")
LR_COLUMNS = ("epoch", "step", "lr")  # step: the optimizer step within the epoch, from 1


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
        self._lock_fd = None  # the open lock file while this process holds the run (see lock())
        self._previous_process = None  # process.json as write_process() found it

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self, checkpoints: bool = True) -> None:
        """Make a new run directory (with its checkpoints/ unless `checkpoints` is false: a k-fold run's own
        directory) and lock it; an existing one is never overwritten, except what a run that failed before its first
        epoch left (its summary says so)."""
        if not self.writable:
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} already exists and is not a directory; choose another "
                              "--run-dir")
        self._refuse_foreign_content()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror or exc}") from None
        self.lock()  # a process writing it is named here; from here on, looking at what it holds cannot race
        try:
            for name in self._leftovers_of_failed_setup():  # nothing of value: no epoch was completed
                target = self.file(name)
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            if checkpoints:
                (self.path / CHECKPOINTS).mkdir(exist_ok=True)
        except OSError as exc:
            self.unlock()
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror or exc}") from None
        except RunDirError:
            self.unlock()
            raise

    def _entries(self) -> set[str]:
        """The names in the directory (but the lock file); none when it does not exist yet."""
        try:
            return {entry.name for entry in self.path.iterdir()} - {LOCK} if self.path.is_dir() else set()
        except OSError as exc:
            raise RunDirError(f"cannot read run directory {self.path}: {exc.strerror or exc}") from None

    def _not_empty(self) -> RunDirError:
        return RunDirError(f"run directory {self.path} already exists and is not empty; choose another --run-dir or "
                           "continue it with --resume")

    def _refuse_foreign_content(self) -> None:
        """Refuse a directory holding anything no run writes (a directory of other things gets no lock file)."""
        if self._entries() - RUN_FILES:
            raise self._not_empty()

    def _leftovers_of_failed_setup(self) -> set[str]:
        """What the (locked) directory holds, when that is nothing or a run that failed before its first epoch;
        a RunDirError otherwise."""
        entries = self._entries()
        if entries and not self._failed_before_first_epoch(entries):
            raise self._not_empty()
        return entries

    def _failed_before_first_epoch(self, entries: set[str]) -> bool:
        """Whether the (locked) directory holds only what a run that completed no epoch left: no checkpoint, no
        metrics row, and a summary saying it failed or was interrupted after 0 epochs, or none (killed during its
        set-up; the lock says no process writes it now)."""
        if not entries <= RUN_FILES:
            return False
        checkpoints = self.file(CHECKPOINTS)
        if checkpoints.is_dir() and any(p.suffix == ".safetensors" for p in checkpoints.iterdir()):
            return False
        try:
            if self.read_metrics():
                return False
            summary = self.read_summary()
        except RunDirError:
            return False
        if summary is None:
            return True
        return summary.get("stop_reason") in ("failed", "interrupted") and summary.get("epochs_run") == 0

    # ------------------------------------------------------------ one writer at a time

    def lock(self) -> None:
        """Hold the run's lock until unlock() or the process ends (the kernel releases a flock even after kill -9,
        so no lock is ever stale). Another process holding it: RunDirError naming it, at once."""
        if not self.writable or self._lock_fd is not None:
            return
        try:  # O_NOFOLLOW: a .lock planted as a symlink must not make us create or truncate its target
            fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~_UMASK)
        except OSError as exc:
            found = " (a symbolic link; remove it)" if exc.errno == errno.ELOOP else ""
            raise RunDirError(f"cannot lock run directory {self.path}: {exc.strerror or exc}{found}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunDirError(f"cannot lock run directory {self.path}: {self.file(LOCK)} is not a regular file; "
                              "remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(f"run directory {self.path} is in use by {holder}; wait for it to end, or stop it "
                              "(the lock goes with the process)") from None
        except OSError as exc:
            os.close(fd)
            raise RunDirError(f"cannot lock run directory {self.path}: {exc.strerror or exc}") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(["dltrain", *sys.argv[1:3]])}
        try:  # naming the holder is a courtesy to whoever is refused: the lock holds without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError:
            pass
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # closing the only descriptor releases the flock

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
        """Who trains this run now. A resumed run's old summary stays until the new one replaces it: while this
        process lives `dltrain runs` says running, and a resume that fails leaves the finished run as it was."""
        if not self.writable:
            return
        try:
            self._previous_process = self.file(PROCESS).read_bytes()
        except OSError:
            self._previous_process = None
        self._write(PROCESS, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "process_start": process_start(os.getpid()),
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())

    def keep_previous_run(self) -> dict | None:
        """A resume that changed nothing: process.json back as it was (`dltrain runs` shows the finished run, not a
        killed one); the run's summary, which was never replaced."""
        if self.writable and self._previous_process is not None:
            self._write(PROCESS, self._previous_process)
        try:
            return self.read_summary()
        except RunDirError:
            return None

    def read_process(self) -> dict | None:
        """process.json's pid and its text fields (host, process_start, started); None when it is missing, not a
        JSON object, or names no process (see names_a_process)."""
        try:
            process = json.loads(self.file(PROCESS).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(process, dict):
            return None
        pid = process.get("pid")
        if not names_a_process(pid):
            return None
        return {"pid": pid, **{key: value for key, value in process.items() if isinstance(value, str)}}

    def write(self, name: str, data: bytes) -> None:
        """Replace the file `name` in the run with `data`, atomically (nothing with writable=False)."""
        self._write(name, data)

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
        self.append_rows(name, columns, [row])

    def append_rows(self, name: str, columns, rows: list[dict]) -> None:
        """Add rows to a per-epoch CSV in one write (a crash may cut the last line: read_table drops it)."""
        if not self.writable:
            return
        lines = io.StringIO()
        csv.DictWriter(lines, fieldnames=list(columns), lineterminator="\n").writerows(rows)
        try:
            with open(self.file(name), "a", encoding="utf-8") as f:
                f.write(lines.getvalue())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise RunDirError(f"cannot write {self.file(name)}: {exc.strerror or exc}") from None

    def read_table(self, name: str) -> list[dict]:
        """Rows of a per-epoch CSV as dicts of strings; an incomplete last line (a crash mid-write) is skipped. A file
        that is not UTF-8 text, or not a CSV whose header has an epoch column, is a RunDirError naming it (a resume
        must not continue it); an empty one has no rows."""
        path = self.file(name)
        if not path.is_file():
            return []
        expected = "expected a CSV with an epoch column"
        text = read_text(path, expected)
        lines = text.splitlines()
        if text and not text.endswith("\n"):
            lines = lines[:-1]
        if not lines:
            return []
        reader = csv.DictReader(lines)
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as exc:
            raise RunDirError(f"{path}: not a readable CSV ({exc}); {expected}") from None
        if "epoch" not in (reader.fieldnames or []):
            header = ",".join(reader.fieldnames or [])
            raise RunDirError(f"{path}: {expected}, found the header "
                              f"{header if len(header) <= 80 else header[:80] + '...'!r}")
        rows = [(line, row) for line, row in rows if None not in row.values()]  # short rows: lines cut short
        for line, row in rows:
            epoch = row["epoch"]
            if not (epoch.isascii() and epoch.isdigit()):  # str.isdigit() alone takes '²', which int() refuses
                shown = epoch if len(epoch) <= 40 else epoch[:40] + "..."
                raise RunDirError(f"{path}: line {line}: epoch: expected a whole number, found {shown!r}")
        return [row for _, row in rows]

    def read_summary(self) -> dict | None:
        """summary.json, or None when there is none (the run has not ended, or was killed); RunDirError naming it
        when it is not a JSON object or a field that `dltrain runs`, diff and plot read has another type."""
        path = self.file(SUMMARY)
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise RunDirError(f"{path}: {not_utf8(exc)}; expected a JSON object") from None
        except RecursionError:
            raise RunDirError(f"{path}: not JSON (nested deeper than the parser follows)") from None
        except ValueError as exc:
            raise RunDirError(f"{path}: not JSON ({exc})") from None
        if not isinstance(summary, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(summary),
                                                                                                "a number")
            raise RunDirError(f"{path}: expected a JSON object, found {kind}")

        def number(value):
            return isinstance(value, int | float) and not isinstance(value, bool)

        fields = ((("stop_reason",), "text", lambda v: isinstance(v, str)),
                  (("monitor", "device"), "text or null", lambda v: v is None or isinstance(v, str)),
                  (("epochs_run", "best_epoch"), "a whole number or null",
                   lambda v: v is None or (number(v) and isinstance(v, int) and v >= 0)),
                  (("best_value", "test_accuracy", "test_loss", "test_mae", "test_r2", "total_seconds",
                    "train_samples_per_second"),
                   "a number or null", lambda v: v is None or number(v)))
        for keys, what, fits in fields:
            for key in keys:
                if key in summary and not fits(summary[key]):
                    found = repr(summary[key])
                    raise RunDirError(f"{path}: {key} should be {what}, found "
                                      f"{found if len(found) <= 60 else found[:60] + '...'}")
        return summary


def read_text(path: Path, expected: str) -> str:
    """A run's file as UTF-8 text; RunDirError naming it (and `expected`, what it should be) otherwise."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path}: {not_utf8(exc)}; {expected}") from None


def not_utf8(exc: UnicodeDecodeError) -> str:
    """'not UTF-8 text (byte 0xff at offset 12)': where a file stops being text."""
    return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


def _read_holder(fd: int) -> str:
    """'process 123 on host h since 2026-12-04T05:00:00+0000 (dltrain train ...)' from a held lock file."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return (f"process {holder['pid']} on {holder['host']} since {holder['since']} "
                f"({holder.get('command', 'dltrain')})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # it holds the lock but has not written who it is yet


def names_a_process(pid) -> bool:
    """A positive integer: os.kill(0, 0) would ask about this process's own group, os.kill(-1, 0) about every
    process, and True is an int too."""
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0


def process_start(pid: int) -> str | None:
    """When the kernel started process `pid` (Linux /proc/PID/stat, field 22), which tells it apart from a later
    process given the same pid; None where /proc is not there."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return line.rsplit(")", 1)[1].split()[19]  # fields after the command name, which ends with ')'


def is_alive(process: dict) -> bool | None:
    """Whether the process a run's process.json names still runs: None when it ran on another host."""
    if process.get("host") != socket.gethostname():
        return None
    pid = process.get("pid")
    if not names_a_process(pid):
        return False
    started = process_start(pid)
    if started is not None or process.get("process_start") is not None:
        return started is not None and started == process.get("process_start")
    try:  # no /proc: whether some process has that pid
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: a pid beyond any the system gives
        return False
    except PermissionError:
        return True
    return True

