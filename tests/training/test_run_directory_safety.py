"""A run directory has one writer at a time, a failed resume or setup loses nothing, and a closed pipe is an
interruption: the defects of issue 31, section 2, each reproduced as the user met it."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from dltrain.errors import DltrainError, RunDirError
from dltrain.training import rundir as files
from dltrain.training.rundir import RunDir

TINY = """\
seed: 0
data: {name: blobs, n_samples: 200, classes: 3}
model: [{linear: {units: 8}}, relu, {linear: {units: 3}}]
optimizer: {name: sgd, lr: 0.05}
training: {epochs: 2, batch_size: 32}
"""

# Token ids an embedding of 3 rows cannot take (spirals' features): refused while setting up, before a run directory.
BAD_TOKEN_IDS = """\
seed: 0
data: {name: spirals, n_samples: 300, classes: 3, normalize: none}
model: [{embedding: {vocab_size: 3, units: 4}}, flatten, {linear: {units: 3}}]
optimizer: {name: adam, lr: 0.01}
training: {epochs: 2, batch_size: 32}
"""

# A user's layer that fails on every batch (refused in setup's warm-up, before the run directory exists), and one
# that fails in epoch 1 (the run directory exists by then).
FAILING_LAYER = """\
from dltrain.errors import ShapeError
from dltrain.layers import Module
from dltrain.registry import layers


@layers.register("refuses_batches")
class RefusesBatches(Module):
    def forward(self, x):
        raise ShapeError(f"refuses_batches: cannot take a batch of shape {tuple(x.shape)}")


@layers.register("refuses_in_epoch_one")
class RefusesInEpochOne(Module):
    # takes the two training batches of the trainer's warm-up (setup) and epoch 1's first, refuses its second
    seen = 0

    def forward(self, x):
        if self.training:
            RefusesInEpochOne.seen += 1
            if RefusesInEpochOne.seen > 3:
                raise ShapeError(f"refuses_in_epoch_one: cannot take a batch of shape {tuple(x.shape)}")
        return x
"""


def dltrain(*args, cwd, **kwargs):
    return subprocess.run([sys.executable, "-m", "dltrain", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, **kwargs)


def snapshot(path):
    """Every file under `path` (but the lock file, whose content names its last holder) with a digest of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != files.LOCK}


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    where = tmp_path_factory.mktemp("trained")
    (where / "tiny.yaml").write_text(TINY)
    result = dltrain("train", where / "tiny.yaml", "--run-dir", "run", "--quiet", cwd=where)
    assert result.returncode == 0, result.stderr
    return where


@pytest.fixture
def finished_run(tmp_path, trained_once):
    """A completed two-epoch run of TINY (tmp_path/run), with the config beside it (tmp_path/tiny.yaml)."""
    shutil.copytree(trained_once, tmp_path, dirs_exist_ok=True)
    return tmp_path / "run"


def test_a_second_writer_is_refused_at_once_naming_the_holder(finished_run):
    holder = RunDir(finished_run)
    holder.lock()  # as a training process holds it
    try:
        before = snapshot(finished_run)
        result = dltrain("train", "--resume", finished_run, "--set", "training.epochs=4", cwd=finished_run.parent)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: run directory {finished_run} is in use by process {os.getpid()} "
                                         f"on {socket.gethostname()} since ")
        assert result.stderr.endswith("; wait for it to end, or stop it (the lock goes with the process)\n")
        assert len(result.stderr.splitlines()) == 1
        other = dltrain("train", finished_run / "config.yaml", "--run-dir", finished_run, cwd=finished_run.parent)
        assert other.returncode == 2 and f"is in use by process {os.getpid()}" in other.stderr
        assert snapshot(finished_run) == before
    finally:
        holder.unlock()
    assert dltrain("train", "--resume", finished_run, "--set", "training.epochs=3", "--quiet",
                   cwd=finished_run.parent).returncode == 0


HOLD = """\
import time
from pathlib import Path

from dltrain.registry import callbacks
from dltrain.training.callbacks import Callback


@callbacks.register("hold_until_released")
class HoldUntilReleased(Callback):
    \"\"\"Holds the first epoch until the file `release` exists, saying so with the file `holding`.\"\"\"

    def on_epoch_begin(self, trainer, epoch):
        Path("holding").touch()
        deadline = time.monotonic() + 120
        while not Path("release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
"""


def test_two_resumes_started_together_train_each_epoch_once(finished_run):
    """Was: both ran to the end, every epoch row twice in metrics.csv. The first holds its first epoch until the
    second has been refused, so the two surely overlap."""
    where = finished_run.parent
    (where / "hold.py").write_text(HOLD)
    first = subprocess.Popen([sys.executable, "-m", "dltrain", "train", "--resume", str(finished_run),
                              "--set", "training.epochs=4", "--set", "callbacks=[hold_until_released]",
                              "--code", "hold.py", "--quiet"], cwd=where, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (where / "holding").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (where / "holding").exists(), first.communicate()
        second = dltrain("train", "--resume", finished_run, "--set", "training.epochs=4", "--quiet", cwd=where)
        assert second.returncode == 2
        assert f"is in use by process {first.pid} on {socket.gethostname()} since " in second.stderr
    finally:
        (where / "release").touch()
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    epochs = [row["epoch"] for row in RunDir(finished_run).read_metrics()]
    assert epochs == ["1", "2", "3", "4"]


def test_the_lock_dies_with_its_process(finished_run):
    """kill -9 leaves no stale lock: the kernel releases a flock with the last descriptor."""
    code = (f"from dltrain.training.rundir import RunDir; RunDir({str(finished_run)!r}).lock(); "
            "print('locked', flush=True); import time; time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "locked\n"
        with pytest.raises(RunDirError, match=f"in use by process {process.pid} on "):
            RunDir(finished_run).lock()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.stdout.close()
    run = RunDir(finished_run)
    run.lock()
    run.unlock()


def test_a_resume_over_a_garbage_metrics_file_leaves_the_run_as_it_was(finished_run):
    """Was: a UnicodeDecodeError traceback, and the finished run's summary.json deleted (its test metrics lost,
    `dltrain runs` saying killed)."""
    (finished_run / files.METRICS).write_bytes(bytes(range(256)) * 8)
    before = snapshot(finished_run)
    result = dltrain("train", "--resume", finished_run, "--set", "training.epochs=4", cwd=finished_run.parent)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert "metrics.csv" in result.stderr
    assert snapshot(finished_run) == before
    assert json.loads((finished_run / files.SUMMARY).read_text())["stop_reason"] == "completed"


def test_a_resumed_run_keeps_the_old_summary_until_its_own_replaces_it(finished_run):
    summary = json.loads((finished_run / files.SUMMARY).read_text())
    seen = []

    from dltrain.training.callbacks import Callback
    from dltrain.training.run import run_training

    class LookDuringTraining(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(json.loads((finished_run / files.SUMMARY).read_text()))

    new = run_training(None, resume=finished_run, overrides=["training.epochs=3"], callbacks=[LookDuringTraining()],
                       plot=False)
    assert seen == [summary]  # while the third epoch ran, the finished run's summary was still there
    assert new["epochs_run"] == 3 and json.loads((finished_run / files.SUMMARY).read_text())["epochs_run"] == 3


def train_with_failing_layer(tmp_path, layer: str):
    """`dltrain train` of TINY with `layer` (of FAILING_LAYER) first: it must end in exit 2 naming the batch."""
    code = tmp_path / "refuses.py"
    code.write_text(FAILING_LAYER)
    config = tmp_path / "fails.yaml"
    config.write_text(TINY.replace("model: [", f"model: [{layer}, "))
    first = dltrain("train", config, "--run-dir", "run", "--code", code, cwd=tmp_path)
    assert first.returncode == 2
    assert first.stderr == f"error: {layer}: cannot take a batch of shape (32, 2)\n"
    return config


def test_a_model_that_refuses_every_batch_is_refused_in_setup_before_a_run_directory_is_made(tmp_path):
    train_with_failing_layer(tmp_path, "refuses_batches")
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_before_its_first_epoch_ends_says_so_and_its_directory_can_be_used_again(tmp_path):
    """Was: config.yaml, an empty metrics.csv and checkpoints/ left behind, the same --run-dir refused as not
    empty, and `dltrain runs` listing it as killed."""
    config = train_with_failing_layer(tmp_path, "refuses_in_epoch_one")
    summary = json.loads((tmp_path / "run" / files.SUMMARY).read_text())
    assert summary["stop_reason"] == "failed" and summary["epochs_run"] == 0
    assert summary["error"] == "refuses_in_epoch_one: cannot take a batch of shape (32, 2)"
    listing = dltrain("runs", tmp_path, "--json", cwd=tmp_path)
    assert [row["status"] for row in json.loads(listing.stdout)] == ["failed"]

    config.write_text(TINY)
    again = dltrain("train", config, "--run-dir", "run", "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "run" / files.SUMMARY).read_text())["stop_reason"] == "completed"
    assert len(RunDir(tmp_path / "run").read_metrics()) == 2


def test_token_ids_an_embedding_cannot_take_are_refused_before_a_run_directory_is_made(tmp_path):
    config = tmp_path / "tokens.yaml"
    config.write_text(BAD_TOKEN_IDS)
    result = dltrain("train", config, "--run-dir", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: train inputs: model[0].embedding takes token ids, integers in [0, 2]; got ")
    assert not (tmp_path / "run").exists()


def test_a_directory_with_a_completed_epoch_or_other_files_is_never_reused(tmp_path, finished_run):
    config = tmp_path / "tiny.yaml"
    summary = json.loads((finished_run / files.SUMMARY).read_text())
    (finished_run / files.SUMMARY).write_text(json.dumps({**summary, "stop_reason": "failed"}))
    refused = dltrain("train", config, "--run-dir", finished_run, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == (f"error: run directory {finished_run} already exists and is not empty; choose another "
                              "--run-dir or continue it with --resume\n")
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / files.SUMMARY).write_text(json.dumps({"stop_reason": "failed", "epochs_run": 0}))
    (failed / "notes.txt").write_text("mine")
    assert dltrain("train", config, "--run-dir", failed, cwd=tmp_path).returncode == 2
    assert (failed / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_closed_pipe_is_an_interruption_with_a_summary(tmp_path):
    """`dltrain train ... | head`: was no summary, and `dltrain runs` said killed."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("epochs: 2", "epochs: 200").replace("batch_size: 32", "batch_size: 8"))
    process = subprocess.Popen([sys.executable, "-m", "dltrain", "train", str(config), "--run-dir", "run"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "run directory: run\n"
    assert process.stdout.readline().startswith("epoch   1/200")
    process.stdout.close()  # as `head -2` exits
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=300) == 141, stderr
    assert stderr.startswith("interrupted (output closed): the checkpoint of the last complete epoch (")
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
    summary = json.loads((tmp_path / "run" / files.SUMMARY).read_text())
    assert summary["stop_reason"] == "interrupted" and summary["epochs_run"] >= 1


def test_a_killed_resume_that_completed_epochs_reads_as_killed(finished_run):
    """The old summary stays during a resume; once metrics.csv holds epochs the summary does not, the resume that
    wrote them died without its own summary."""
    from dltrain.training.runs import run_row

    with open(finished_run / files.METRICS, "a") as f:
        f.write("3,0.5,0.8,0.5,0.8,,,0.05,0.1\n")  # val_mae, val_r2: blank (not regression)
    (finished_run / files.PROCESS).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": socket.gethostname(),
                                                          "process_start": "1", "started": time.strftime("%Y")}))
    assert run_row(finished_run)["status"] == "killed"


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_left_alone(finished_run, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (finished_run / files.LOCK).unlink(missing_ok=True)
    (finished_run / files.LOCK).symlink_to(target)
    with pytest.raises(RunDirError, match=r"^cannot lock run directory .*: Too many levels of symbolic links "
                                          r"\(a symbolic link; remove it\)$"):
        RunDir(finished_run).lock()
    assert target.read_text() == "keep me"
    (finished_run / files.LOCK).unlink()
    (finished_run / files.LOCK).mkdir()
    with pytest.raises(RunDirError, match=r"^cannot lock run directory .*: Is a directory$|"
                                          r"is not a regular file; remove it$"):
        RunDir(finished_run).lock()


def test_a_lock_whose_holder_cannot_be_written_still_holds(finished_run, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    run = RunDir(finished_run)
    with monkeypatch.context() as patched:
        patched.setattr(files.os, "pwrite", full_disk)
        run.lock()
    try:
        with pytest.raises(RunDirError, match=r"is in use by another process; wait for it to end"):
            RunDir(finished_run).lock()
    finally:
        run.unlock()
    RunDir(finished_run).lock()


def test_a_closed_output_before_training_leaves_no_run_directory(tmp_path):
    """Was: the announcement of the run directory, written after creating it, met the closed pipe: config.yaml and
    an empty metrics.csv left, no summary, and the same --run-dir refused."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    process = subprocess.Popen([sys.executable, "-m", "dltrain", "train", str(config), "--run-dir", "run"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=300) == 141, stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    again = dltrain("train", config, "--run-dir", "run", "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_a_resume_interrupted_in_its_first_epoch_leaves_the_finished_run_as_it_was(finished_run):
    """Was: the interrupted resume replaced the finished run's summary (stop_reason completed, its test metrics)
    with one saying interrupted."""
    from dltrain.errors import Interrupted
    from dltrain.training.callbacks import Callback
    from dltrain.training.run import run_training

    class CtrlC(Callback):
        def on_epoch_begin(self, trainer, epoch):
            raise KeyboardInterrupt

    before = snapshot(finished_run)
    with pytest.raises(Interrupted, match=r"^interrupted \(Ctrl-C\): the checkpoint of the last complete epoch "
                                          r"\(2\) is kept"):
        run_training(None, resume=finished_run, overrides=["training.epochs=4"], callbacks=[CtrlC()], plot=False)
    assert snapshot(finished_run) == before


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpiexec", path=os.path.dirname(sys.executable)) is None,
                    reason="MPI is not installed (pip install 'dltrain[mpi]')")
def test_a_lock_refused_on_rank_zero_stops_every_rank(finished_run):
    """Was: rank 0 refused the held run and exited while rank 1 waited for it forever."""
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    holder = RunDir(finished_run)
    holder.lock()
    try:
        result = subprocess.run([mpiexec, "-n", "2", os.path.join(os.path.dirname(sys.executable), "dltrain"),
                                 "train", "--resume", str(finished_run), "--set", "training.epochs=4"],
                                capture_output=True, text=True, timeout=120)
    finally:
        holder.unlock()
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count(f"is in use by process {os.getpid()}") == 1, result.stderr


def test_a_failure_on_rank_zero_is_every_ranks_failure():
    from dltrain.training.run import on_rank_zero

    class RankOne:
        rank = 1

        def broadcast(self, value):
            return True  # what rank 0 sends when its action failed

    with pytest.raises(DltrainError, match=r"^rank 0 stopped the run \(its message says why\)$"):
        on_rank_zero(RankOne(), lambda: None)
