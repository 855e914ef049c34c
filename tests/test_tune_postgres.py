"""dltrain tune --storage against a real PostgreSQL server that the tests start (tests/pg_server.py, the `postgres`
fixture): workers on "several machines" (processes in different directories) creating one study at once, a server
that never answers, passwords kept out of messages, the driver a plain postgresql:// URL gets, and a worker killed
mid-trial. Trials are tiny runs."""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("sqlalchemy")

from dltrain.errors import ConfigError  # noqa: E402
from dltrain.tune import study as studies  # noqa: E402

TINY = """\
seed: 0
data: {name: spirals, n_samples: 200, classes: 3, turns: 1, noise: 0.2}
model:
  - linear: {units: 8}
  - relu
  - linear: {units: 3}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
training: {epochs: 2, batch_size: 32}
tune:
  metric: val_accuracy
  trials: 2
  sampler: random
  pruner: none
  parameters:
    optimizer.lr: {log_uniform: [1.0e-3, 0.5]}
"""

# Each "machine" imports everything first, says so, then all start `dltrain tune` at the same instant (a file
# appears): the race of workers creating the study's tables on a fresh database happens every time, not by luck.
TOGETHER = """\
import os, sys, time
import optuna, sqlalchemy, psycopg2
import dltrain.tune.study
from dltrain.cli import main
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
sys.argv = ["dltrain", *sys.argv[2:]]
main()
"""


def url_of(postgres, driver="postgresql"):
    return postgres.url(postgres.create_database(), driver=driver)


def test_workers_opening_a_fresh_database_at_once_all_open_the_one_study(postgres, tmp_path):
    from dltrain.tune.space import load_search

    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    search = load_search(config)
    for _ in range(3):  # a fresh database each time: creating the tables is the race
        url = url_of(postgres, "postgresql+psycopg2")
        barrier, errors, names = threading.Barrier(4), [], []

        def worker(number):
            barrier.wait()
            try:
                names.append(studies.open_study(search, studies.open_storage(url), "shared", number).study_name)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and names == ["shared"] * 4
        assert optuna.get_all_study_names(url) == ["shared"]


@pytest.mark.slow
def test_workers_started_together_on_a_fresh_database_all_join_one_study(postgres, tmp_path):
    import pg_server

    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    url = url_of(postgres)  # plain postgresql://: the installed driver (psycopg2-binary here)
    machines = 3
    go = tmp_path / "go"
    processes = []
    for i in range(machines):
        cwd = tmp_path / f"machine{i}"
        cwd.mkdir()
        processes.append(subprocess.Popen(
            [sys.executable, "-c", TOGETHER, str(go), "tune", str(config), "--storage", url, "--study", "shared",
             "--dir", "study"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in processes:
        assert process.stdout.readline() == "ready\n"
    go.touch()
    outputs = [process.communicate(timeout=180) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, out + err
        assert "UniqueViolation" not in out + err and pg_server.PASSWORD not in out + err
        assert "(storage postgresql://dltrain:***@127.0.0.1:" in out  # the start line shows it masked
    study = optuna.load_study(study_name="shared", storage=studies.open_storage(url))
    assert len(optuna.get_all_study_names(study._storage)) == 1
    states = [t.state.name for t in study.trials]
    # each machine takes its own lock: together they may overshoot by one trial each
    assert 2 <= states.count("COMPLETE") <= 2 + machines - 1 and set(states) == {"COMPLETE"}, states
    ran = sorted(int(n) for out, _ in outputs for n in re.findall(r"^trial (\d+):", out, flags=re.M))
    assert ran == [t.number for t in study.trials]  # every trial ran once, on one machine
    for t in study.trials:  # its run directory is where it ran
        assert sum((tmp_path / f"machine{i}" / "study" / f"trial-{t.number:04d}" / "summary.json").is_file()
                   for i in range(machines)) == 1


@pytest.fixture
def silent_server():
    """A TCP port on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_a_server_that_never_answers_is_an_error_after_the_storage_timeout(tmp_path, silent_server):
    pytest.importorskip("psycopg2")
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    port = silent_server
    url = f"postgresql+psycopg2://dltrain:topsecret@127.0.0.1:{port}/db"
    result = subprocess.run([sys.executable, "-m", "dltrain", "tune", str(config), "--storage", url,
                             "--storage-timeout", "2", "--dir", str(tmp_path / "study")],
                            capture_output=True, text=True, timeout=60)  # a safety net: the timeout ends it
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"error: --storage postgresql+psycopg2://dltrain:***@127.0.0.1:{port}/db: cannot connect to the database "
        f'(OperationalError: connection to server at "127.0.0.1", port {port} failed: timeout expired); '
        f"no answer within 2 s (--storage-timeout)")
    assert not (tmp_path / "study").exists()  # nothing left behind by a study that never opened


def test_a_refused_login_names_the_url_without_its_password_and_leaves_no_directory(tmp_path, postgres):
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    url = postgres.url("postgres", driver="postgresql+psycopg2", password="wrong-password")
    result = subprocess.run([sys.executable, "-m", "dltrain", "tune", str(config), "--storage", url,
                             "--dir", str(tmp_path / "study")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "wrong-password" not in result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"error: --storage postgresql+psycopg2://dltrain:***@127.0.0.1:{postgres.port}/postgres: cannot connect to "
        f'the database (OperationalError: connection to server at "127.0.0.1", port {postgres.port} failed: FATAL:  '
        f'password authentication failed for user "dltrain")')
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("url, masked", [
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg2://user:p%40ss:w@host:5432/db?sslmode=require",
     "postgresql+psycopg2://user:***@host:5432/db?sslmode=require"),
    ("postgresql://user:p@ss@host/db", "postgresql://user:***@host/db"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("postgresql://host/db", "postgresql://host/db"),
    ("sqlite:////tmp/x/study.db", "sqlite:////tmp/x/study.db"),
])
def test_urls_are_shown_without_their_password(url, masked):
    assert studies.mask_url(url) == masked


@pytest.mark.parametrize("installed, expected", [
    ({"psycopg2"}, "postgresql+psycopg2"),
    ({"psycopg"}, "postgresql+psycopg"),
])
def test_a_plain_postgresql_url_gets_the_driver_that_is_installed(monkeypatch, installed, expected):
    monkeypatch.setattr(studies, "_installed", lambda module: module in installed)
    resolved = studies.resolve_url("postgresql://u:pw@host/db")
    assert resolved.drivername == expected and resolved.password == "pw" and resolved.database == "db"


def test_with_both_drivers_a_plain_url_gets_sqlalchemys_default(monkeypatch):
    from sqlalchemy.engine import make_url

    monkeypatch.setattr(studies, "_installed", lambda module: module in ("psycopg", "psycopg2"))
    default = make_url("postgresql://").get_driver_name()
    assert studies.resolve_url("postgresql://u:pw@host/db").drivername == f"postgresql+{default}"


@pytest.mark.parametrize("url, expected", [
    ("postgresql://u:pw@host/db",
     "--storage postgresql://u:***@host/db: no PostgreSQL driver is installed; pip install psycopg2-binary (for "
     "postgresql+psycopg2://, or plain postgresql://) or 'psycopg[binary]' (for postgresql+psycopg://)"),
    ("postgresql+psycopg://u:pw@host/db",
     "--storage postgresql+psycopg://u:***@host/db: its driver 'psycopg' is not installed: pip install "
     "'psycopg[binary]'; or pip install psycopg2-binary (for postgresql+psycopg2://, or plain postgresql://) or "
     "'psycopg[binary]' (for postgresql+psycopg://)"),
    ("postgresql+psycopg2://u:pw@host/db",
     "--storage postgresql+psycopg2://u:***@host/db: its driver 'psycopg2' is not installed: pip install "
     "psycopg2-binary; or pip install psycopg2-binary (for postgresql+psycopg2://, or plain postgresql://) or "
     "'psycopg[binary]' (for postgresql+psycopg://)"),
    ("mysql+pymysql://u:pw@host/db",
     "--storage mysql+pymysql://u:***@host/db: its driver 'pymysql' is not installed: pip install PyMySQL"),
    ("not a url", "--storage not a url: expected a database URL such as "
                  "postgresql+psycopg2://user:password@host/database or sqlite:///path/study.db"),
])
def test_a_missing_driver_says_which_package_goes_with_which_url(monkeypatch, url, expected):
    monkeypatch.setattr(studies, "_installed", lambda module: False)
    with pytest.raises(ConfigError) as error:
        studies.resolve_url(url)
    assert str(error.value) == expected


SLOW_EPOCHS = """\
from dltrain.registry import callbacks
from dltrain.training.callbacks import Callback
import time


@callbacks.register("slow_pg_trial_epochs")
class SlowEpochs(Callback):
    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds

    def on_epoch_end(self, trainer, epoch, logs):
        time.sleep(self.seconds)
"""


@pytest.mark.slow
def test_a_worker_killed_mid_trial_on_postgresql_loses_no_trial_and_its_parameters_run_once_more(
        postgres, tmp_path, monkeypatch):
    (tmp_path / "slow.py").write_text(SLOW_EPOCHS)
    config = tmp_path / "c.yaml"
    config.write_text(TINY.replace("epochs: 2", "epochs: 4").replace("trials: 2", "trials: 3")
                      + textwrap.dedent("callbacks: [{name: slow_pg_trial_epochs, seconds: 0.3}]\n"))
    url = url_of(postgres, "postgresql+psycopg2")
    study_dir = tmp_path / "study"
    command = ["tune", str(config), "--storage", url, "--dir", str(study_dir), "--code", str(tmp_path / "slow.py")]
    worker = subprocess.Popen([sys.executable, "-m", "dltrain", *command], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    for line in worker.stdout:  # one trial finished, the second running
        if line.startswith("trial 0:"):
            break
    deadline = time.time() + 60
    while not (study_dir / "trial-0001" / "metrics.csv").is_file() and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    storage = studies.open_storage(url)
    study = optuna.load_study(study_name="c", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]

    from typer.testing import CliRunner

    from dltrain.cli import app

    monkeypatch.setattr(studies, "GRACE_SECONDS", 1)  # the dead worker's heartbeat is older than that
    time.sleep(1.5)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="c", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[2].params == study.trials[1].params  # the dead worker's trial, tried once more
    assert study.trials[3].params != study.trials[1].params
    assert (study_dir / "trial-0001" / "metrics.csv").is_file()  # the epochs it finished are kept
    assert "(3 complete, 0 pruned, 1 failed)" in result.output
    assert Path(study_dir / "trials.csv").read_text().count("\n") == 5
