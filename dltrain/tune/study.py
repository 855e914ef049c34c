"""Optuna studies whose trials are ordinary dltrain runs.

A study lives in one directory:

    runs/<study>/study.db          Optuna's storage (SQLite, unless --storage names another database)
    runs/<study>/trial-0007/       trial 7's run directory: eval, plot, predict and export work on it
    runs/<study>/trials.csv        every trial: number, state, value, parameters, stop reason, epochs, seconds
    runs/<study>/best.yaml         the best trial's full config: `dltrain train best.yaml` trains it again
    runs/<study>/history.png, importances.png, parallel_coordinate.png   (Optuna's matplotlib plots)

Workers: every process runs trials until the study holds `trials` finished ones (complete, pruned, or diverged).
"Count, then start a trial" happens under a lock file in the study directory, so the processes of one machine never
start one trial too many; machines sharing a database through --storage each take their own lock, and may together
overshoot by one trial per machine. A worker killed mid-trial stops sending Optuna's heartbeat; after GRACE_SECONDS
the next worker to look marks that trial failed (its run directory stays, with the epochs it finished) and runs its
parameters again once, as a new trial. Workers that create the study at once on a fresh database (its tables, the
study) all end up in the one study: the ones that lose the race try again. A trial monitors the study's metric
(unless its config names a monitor), so the value Optuna gets, the checkpoint the run keeps and best.yaml agree.
trials.csv, best.yaml and the plots are written under a second lock file, each replaced atomically.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import importlib
import io
import math
import random
import re
import time
import warnings
from pathlib import Path

import optuna
import yaml

from ..errors import ConfigError, Diverged
from ..training import rundir as files
from ..training.callbacks import Callback
from ..training.run import run_training
from .space import RANGES, Parameter, Search, describe_assignment

HEARTBEAT_SECONDS = 5  # a running trial's worker writes its heartbeat this often
GRACE_SECONDS = 20  # a running trial with no heartbeat for this long belongs to a dead worker
POLL_SECONDS = 2  # a worker with nothing to start (others' trials are running) looks again after this
STORAGE_TIMEOUT = 10  # seconds a database server has to answer a connection (--storage-timeout)
RACE_RETRIES = 8  # workers creating the study's tables at once: the ones that lose try again, this often in all
STORAGE_FILE = "study.db"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
PLOTS = ("history", "importances", "parallel_coordinate")

optuna.logging.set_verbosity(optuna.logging.ERROR)  # dltrain prints one line per trial itself


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(Path(study_dir) / STORAGE_FILE).resolve()}"


def mask_url(url: str) -> str:
    """The URL with its password replaced by *** (postgresql://user:***@host/db): what messages and logs show."""
    return re.sub(r"(://[^:/?#@]*):(.*)@(?=[^@]*$)", r"\1:***@", str(url))


def _masked_text(text: str, url: str, password: str | None) -> str:
    text = text.replace(url, mask_url(url))
    if password and len(password) >= 4:  # a driver's message that quotes it; shorter ones would garble the text
        text = text.replace(password, "***")
    return text


# SQLAlchemy driver -> (module it imports, what to pip install); plain postgresql:// takes the first installed of
# SQLAlchemy's default PostgreSQL driver (psycopg 3 from SQLAlchemy 2.1 on, psycopg2 before) and the other one
DRIVERS = {"psycopg2": ("psycopg2", "psycopg2-binary"), "psycopg": ("psycopg", "'psycopg[binary]'"),
           "pg8000": ("pg8000", "pg8000"), "pymysql": ("pymysql", "PyMySQL"), "mysqldb": ("MySQLdb", "mysqlclient")}
EXAMPLE_URLS = "postgresql+psycopg2://user:password@host/database or sqlite:///path/study.db"
POSTGRES_HINT = ("pip install psycopg2-binary (for postgresql+psycopg2://, or plain postgresql://) or "
                 "'psycopg[binary]' (for postgresql+psycopg://)")


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:  # also a package that is there but cannot load (psycopg without libpq)
        return False
    return True


def resolve_url(url: str):
    """The SQLAlchemy URL to open: a plain postgresql:// gets the PostgreSQL driver that is installed."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415 (installed with Optuna)
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number (host:notaport)
        # the port as SQLAlchemy's parser finds it: after user:password@ and the host ([IPv6] or name)
        port = re.match(r"[\w+]+://(?:[^:/]*(?::[^@]*)?@)?(?:\[[^/?]+\]|[^/:?]+)?:([^/?]*)", str(url))
        found = f"; its port {port[1]!r} is not a number" if port and port[1] and not port[1].isdecimal() else ""
        raise ConfigError(f"--storage {mask_url(url)}: expected a database URL such as {EXAMPLE_URLS}{found}") from None
    if parsed.drivername == "postgresql":
        default = parsed.get_driver_name()
        for driver in (default, *(d for d in ("psycopg2", "psycopg") if d != default)):
            if driver in DRIVERS and _installed(DRIVERS[driver][0]):
                return parsed.set(drivername=f"postgresql+{driver}")
        raise ConfigError(f"--storage {mask_url(url)}: no PostgreSQL driver is installed; {POSTGRES_HINT}")
    driver = parsed.get_driver_name() if "+" in parsed.drivername else None
    if driver in DRIVERS and not _installed(DRIVERS[driver][0]):
        hint = f"; or {POSTGRES_HINT}" if parsed.get_backend_name() == "postgresql" else ""
        raise ConfigError(f"--storage {mask_url(url)}: its driver {driver!r} is not installed: pip install "
                          f"{DRIVERS[driver][1]}{hint}")
    return parsed


def _engine_kwargs(parsed, timeout: int) -> dict:
    """How long a connection may take: SQLite's wait for the file lock (workers take turns), a server's answer."""
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    key = {"psycopg2": "connect_timeout", "psycopg": "connect_timeout", "pg8000": "timeout",
           "pymysql": "connect_timeout", "mysqldb": "connect_timeout"}.get(driver)
    if key is None or key in parsed.query:  # a driver we do not know, or the URL says it already
        return {}
    seconds = int(math.ceil(timeout))
    if driver in ("psycopg2", "psycopg"):
        seconds = max(seconds, 2)  # libpq waits at least 2 s
    return {"connect_args": {key: seconds}}


def _unknown_dialect(parsed, exc: Exception) -> str:
    """What to write instead of a URL whose database (or driver) SQLAlchemy has no dialect for."""
    scheme = parsed.drivername
    if parsed.get_backend_name() == "postgres":  # SQLAlchemy dropped the postgres:// alias (Heroku's URLs use it)
        driver = scheme.partition("+")[2]
        return (f"SQLAlchemy has no dialect for {scheme}://; write postgresql{'+' + driver if driver else ''}://"
                + ("" if driver else " (or postgresql+psycopg:// for psycopg 3)"))
    detail = (str(exc).strip().splitlines() or [""])[0]
    return f"SQLAlchemy has no dialect for {scheme}:// ({detail}); expected a URL such as {EXAMPLE_URLS}"


def _race(exc: BaseException) -> bool:
    """An error of two workers creating the same tables or rows at once: the one that lost tries again."""
    import sqlalchemy.exc  # noqa: PLC0415

    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True  # unique_violation: CREATE TABLE or an insert that another worker did first
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        state = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
        return state in ("42P07", "42710") or "already exists" in str(exc.orig)  # duplicate table / object
    return False


def _retrying(action, retries: int = RACE_RETRIES):
    """`action()`, tried again (after a short random pause) while it loses a race with another worker."""
    for attempt in range(retries):
        try:
            return action()
        except Exception as exc:
            if attempt == retries - 1 or not _race(exc):
                raise
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str, timeout: int = STORAGE_TIMEOUT) -> optuna.storages.RDBStorage:
    """Optuna's storage at `url`, its tables created if this is the first worker; a connection that takes longer
    than `timeout` seconds is an error (a server that does not answer)."""
    import sqlalchemy.exc  # noqa: PLC0415

    parsed = resolve_url(url)
    target = url if parsed.drivername == url.split("://", 1)[0] else parsed.render_as_string(hide_password=False)
    engine: dict = {}  # _engine_kwargs's, set in the try below: it loads SQLAlchemy's dialect, which may not exist

    def connect():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # a dead worker's trial is tried once more with the same parameters (a grid point is not lost)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
            return optuna.storages.RDBStorage(target, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                              grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=retry)

    try:
        engine = _engine_kwargs(parsed, timeout)
        return _retrying(connect)
    except sqlalchemy.exc.NoSuchModuleError as exc:  # postgres://, foo://, postgresql+nodriver://
        raise ConfigError(f"--storage {mask_url(url)}: {_unknown_dialect(parsed, exc)}") from None
    except ImportError as exc:
        raise ConfigError(f"--storage {mask_url(url)}: its database driver is not installed ({exc}); install the "
                          f"package for {parsed.drivername}://") from None
    except Exception as exc:  # noqa: BLE001 (SQLAlchemy's errors: unreachable server, refused login, unwritable file)
        cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
        detail = str(getattr(cause, "orig", None) or cause).strip().splitlines()
        kind = type(getattr(cause, "orig", None) or cause).__name__
        text = _masked_text(f"{kind}: {detail[0] if detail else ''}", url, parsed.password)
        if isinstance(cause, sqlalchemy.exc.OperationalError) and parsed.get_backend_name() != "sqlite":
            waited = next(iter(engine.get("connect_args", {}).values()), None)
            timed_out = waited is not None and re.search(r"time[sd]? ?out", text, re.IGNORECASE)
            raise ConfigError(f"--storage {mask_url(url)}: cannot connect to the database ({text})"
                              + (f"; no answer within {waited} s (--storage-timeout)" if timed_out else "")) from None
        raise ConfigError(f"--storage {mask_url(url)}: cannot open the study's database ({text})") from None


def open_study(search: Search, storage, name: str, worker: int = 0) -> optuna.Study:
    """Create the study, or load it to continue; a study searched for another metric is refused. Several workers
    may create it at once: one creates it, the others load it."""
    study = _retrying(lambda: optuna.create_study(storage=storage, study_name=name, direction=search.direction,
                                                  pruner=_pruner(search), load_if_exists=True))
    # Seeded by the config's seed, the worker and the trials already there: a study continued, or shared by
    # workers, does not draw again the values its earlier trials drew.
    seed = (search.config.seed * 1_000_003 + worker * 7_919 + len(study.trials)) % 2**32
    try:
        study.sampler = _sampler(search, seed)
    except ImportError as exc:  # the cmaes sampler's package
        raise ConfigError(f"tune.sampler {search.sampler!r} needs a package that is not installed ({exc}); "
                          f"pip install 'dltrain[tune]'") from None
    stored = study.user_attrs.get("metric")
    if stored is None:
        study.set_user_attr("metric", search.metric)
    elif stored != search.metric:
        raise ConfigError(f"study {name!r} searched {stored!r}; this search asks for {search.metric!r}: name another "
                          f"study (--study) or directory, or search {stored!r}")
    return study


def _sampler(search: Search, seed: int) -> optuna.samplers.BaseSampler:
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return optuna.samplers.GridSampler({p.key: p.categories() for p in search.parameters}, seed=seed)
    if search.sampler == "cmaes":
        import cmaes  # noqa: F401, PLC0415 (Optuna imports it only once sampling starts)

        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(search: Search) -> optuna.pruners.BasePruner:
    """A trial's steps are its epochs; with folds, its folds (the running mean after fold 0, 1, ...)."""
    if search.pruner == "median":  # judged from the second epoch (or fold), once 5 trials have finished
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1 if search.folds else 2)
    if search.pruner == "hyperband":
        steps = search.folds or search.config.training.epochs
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps)
    return optuna.pruners.NopPruner()


def target_trials(search: Search) -> int:
    return min(search.trials, search.grid_size) if search.sampler == "grid" else search.trials


# ---------------------------------------------------------------- running trials


class _FileLock:
    """An exclusive lock file in the study directory, held from counting the trials to creating the next one."""

    def __init__(self, directory: Path, name: str = ".tune.lock"):
        self.path = Path(directory) / name
        self.file = None

    def acquire(self) -> None:
        self.file = open(self.path, "a")  # noqa: SIM115 (held across study.optimize, released in the objective)
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Counts towards the study's trials: ran to its end (complete, pruned, or diverged)."""
    states = optuna.trial.TrialState
    return trial.state in (states.COMPLETE, states.PRUNED) or (
        trial.state == states.FAIL and "stop_reason" in trial.user_attrs)


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished trials, running trials)."""
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    return sum(finished(t) for t in trials), running


def fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_worker(search: Search, study: optuna.Study, study_dir: Path, *, device: str | None = None,
               deadline: float | None = None, announce=print) -> None:
    """Run trials until the study holds its number of finished trials (or `deadline`, a time.time(), passes)."""
    lock = _FileLock(study_dir)
    target = target_trials(search)
    while deadline is None or time.time() < deadline:
        lock.acquire()
        try:
            fail_stale_trials(study)
            done, running = counts(study)
            if done >= target:
                return
            if done + running >= target:  # the last trials are running elsewhere; one may belong to a dead worker
                lock.release()
                time.sleep(POLL_SECONDS)
                continue
            objective = _Objective(search, study_dir, lock, device, announce, study.study_name)
            study.optimize(objective, n_trials=1, gc_after_trial=True)
        finally:
            lock.release()


class _Pruning(Callback):
    """Reports the searched metric to Optuna after every epoch, keeps its best value, stops a trial the pruner
    gives up on (the run says stop_reason: pruned). With `per_epoch` false (a k-fold trial, judged after each fold)
    it only keeps the best value of the run it is in."""

    def __init__(self, trial: optuna.Trial, metric: str, direction: str, per_epoch: bool = True):
        self.trial, self.metric, self.per_epoch = trial, metric, per_epoch
        self.better = max if direction == "maximize" else min
        self.best, self.best_epoch = None, None

    def on_train_begin(self, trainer):
        self.best, self.best_epoch = None, None  # each fold of a k-fold trial is a run of its own

    def on_epoch_end(self, trainer, epoch, logs):
        value = logs.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        value = float(value)
        if self.best is None or self.better(self.best, value) == value != self.best:
            self.best, self.best_epoch = value, epoch
        if not self.per_epoch:
            return
        self.trial.report(value, epoch)
        if epoch < trainer.config.training.epochs and not trainer.stop_training and self.trial.should_prune():
            trainer.stop_training = True
            trainer.stop_reason = "pruned"


class _Objective:
    def __init__(self, search: Search, study_dir: Path, lock: _FileLock, device, announce, name: str):
        self.search, self.study_dir, self.lock = search, Path(study_dir), lock
        self.device, self.announce, self.name = device, announce, name

    def __call__(self, trial: optuna.Trial) -> float:
        self.lock.release()  # the trial exists (running): every other worker counts it from now on
        assignment = {p.key: suggest(trial, p) for p in self.search.parameters}
        config = self.search.trial_config(assignment)
        run_dir = self.study_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        if config.training.folds is not None:
            return self._cross_validate(trial, assignment, config, run_dir)
        pruning = _Pruning(trial, self.search.metric, self.search.direction)
        try:
            summary = run_training(config, run_dir=run_dir, device=self.device, callbacks=[pruning], name=self.name)
        except Diverged:
            summary = files.RunDir(run_dir, writable=False).read_summary() or {"stop_reason": "diverged"}
        for key in ("stop_reason", "epochs_run", "total_seconds", "test_accuracy", "test_loss", "monitor"):
            if summary.get(key) is not None:
                trial.set_user_attr(key, summary[key])
        metric, best, at = self.search.metric, pruning.best, pruning.best_epoch
        kept = summary.get("best_epoch")  # the epoch of the checkpoint the run kept, by its monitor
        if summary.get("monitor") == metric and summary.get("best_value") is not None:
            best, at = float(summary["best_value"]), kept  # the run's own judgement (min_delta): they agree
        if kept is not None:
            trial.set_user_attr("best_epoch", kept)
        if summary.get("best_value") is not None:
            trial.set_user_attr("monitor_value", summary["best_value"])
        outcome = f"{metric} {best:.4f} at epoch {at}" if best is not None else f"no {metric}"
        if summary.get("monitor") not in (None, metric) and summary.get("best_value") is not None:
            outcome += f" (kept epoch {kept}: {summary['monitor']} {summary['best_value']:.4f})"
        self.announce(f"trial {trial.number}: {describe_assignment(assignment)} -> {outcome}; "
                      f"{summary['stop_reason']} after {summary.get('epochs_run', '?')} epochs, "
                      f"{summary.get('total_seconds', 0):.1f}s, {run_dir}")
        if summary["stop_reason"] == "diverged" or best is None:
            return math.nan  # Optuna marks the trial failed; it counts as finished (stop_reason), the search goes on
        if summary["stop_reason"] == "pruned":
            raise optuna.TrialPruned(f"pruned at epoch {summary['epochs_run']}")
        return best


    def _cross_validate(self, trial: optuna.Trial, assignment: dict, config, run_dir: Path) -> float:
        """A k-fold trial: its value is the mean over the folds of each fold's best value of the metric; after each
        fold the running mean goes to the pruner."""
        from ..training.fold_results import describe, mean_and_std  # noqa: PLC0415
        from ..training.folds import run_cross_validation  # noqa: PLC0415

        metric = self.search.metric
        tracker = _Pruning(trial, metric, self.search.direction, per_epoch=False)
        bests: list[float | None] = []

        def after_fold(index: int, results: list[dict]) -> bool:
            summary = results[-1]
            bests.append(float(summary["best_value"]) if summary.get("monitor") == metric
                         and summary.get("best_value") is not None else tracker.best)
            mean = mean_and_std(bests)[0]
            if mean is None or None in bests:
                return False  # a fold with no value of the metric: the trial fails at the end
            trial.report(mean, index)
            return trial.should_prune()

        try:
            summary = run_cross_validation(config, run_dir=run_dir, device=self.device, callbacks=[tracker],
                                           name=self.name, after_fold=after_fold)
        except Diverged:
            summary = files.RunDir(run_dir, writable=False).read_summary() or {"stop_reason": "diverged"}
        mean, std = mean_and_std(bests)
        for key in ("stop_reason", "total_seconds", "test_accuracy", "test_loss", "monitor"):
            if summary.get(key) is not None:
                trial.set_user_attr(key, summary[key])
        trial.set_user_attr("epochs_run", sum(r.get("epochs_run") or 0 for r in summary.get("fold_results", [])))
        if summary.get("best_value") is not None:
            trial.set_user_attr("monitor_value", summary["best_value"])
        if std is not None:
            trial.set_user_attr("std", std)
        outcome = (describe({**summary, "monitor": metric, "best_value": mean, "best_value_std": std,
                             "folds_run": len(bests)}) if mean is not None and None not in bests else f"no {metric}")
        self.announce(f"trial {trial.number}: {describe_assignment(assignment)} -> {outcome}; "
                      f"{summary['stop_reason']}, {summary.get('total_seconds', 0):.1f}s, {run_dir}")
        if summary["stop_reason"] == "diverged" or mean is None or None in bests:
            return math.nan
        if summary["stop_reason"] == "pruned":
            raise optuna.TrialPruned(f"pruned after fold {len(bests) - 1}")
        return mean


def suggest(trial: optuna.Trial, parameter: Parameter):
    if parameter.kind == "choice":
        return parameter.from_category(trial.suggest_categorical(parameter.key, parameter.categories()))
    low, high = parameter.values
    if RANGES[parameter.kind] is int:
        return trial.suggest_int(parameter.key, low, high, log=parameter.log)
    return trial.suggest_float(parameter.key, low, high, log=parameter.log)


# ---------------------------------------------------------------- results


def trial_rows(study: optuna.Study, search: Search) -> list[dict]:
    """One row per trial, parameters as config values; the order of trials.csv."""
    rows = []
    by_key = {p.key: p for p in search.parameters}
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": _state(t), "value": t.value if t.values else None}
        if search.folds:
            row["std"] = t.user_attrs.get("std")  # of the folds' values, whose mean is the value
        for key in by_key:
            value = t.params.get(key)
            row[key] = by_key[key].from_category(value) if value is not None and by_key[key].kind == "choice" \
                else value
        row.update(stop_reason=t.user_attrs.get("stop_reason"), epochs=t.user_attrs.get("epochs_run"),
                   best_epoch=t.user_attrs.get("best_epoch"), monitor=t.user_attrs.get("monitor"),
                   monitor_value=t.user_attrs.get("monitor_value"), seconds=t.user_attrs.get("total_seconds"),
                   run_dir=t.user_attrs.get("run_dir"))
        rows.append(row)
    return rows


def _state(trial) -> str:
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
            "WAITING": "waiting"}[trial.state.name]


@contextlib.contextmanager
def _results_lock(study_dir: Path):
    """Held while one process reads the study and writes its shared files: several workers, or several
    `dltrain tune` on one directory, finishing at once write one after another, the last with the newest trials
    (each file is also replaced atomically, so a reader never sees half of one)."""
    lock = _FileLock(study_dir, ".results.lock")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def write_results(study: optuna.Study, search: Search, study_dir: Path, name: str) -> dict:
    """trials.csv, best.yaml and the plots; returns what the closing table shows."""
    with _results_lock(study_dir):
        return _write_results(study, search, Path(study_dir), name)


def _write_results(study: optuna.Study, search: Search, study_dir: Path, name: str) -> dict:
    rows = trial_rows(study, search)
    columns = ["number", "state", "value", *["std"] * bool(search.folds), *(p.key for p in search.parameters),
               "stop_reason", "epochs", "best_epoch", "monitor", "monitor_value", "seconds", "run_dir"]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    files.atomic_write(study_dir / TRIALS_FILE, text.getvalue().encode())
    complete = [row for row in rows if row["state"] == "complete"]
    best = None
    if complete:
        best = (max if search.direction == "maximize" else min)(complete, key=lambda row: row["value"])
        _write_best_config(best, search, study_dir, name)
    plots = _write_plots(study, study_dir)
    return {"rows": rows, "best": best, "plots": plots}


def _write_best_config(best: dict, search: Search, study_dir: Path, name: str) -> None:
    """The config the best trial's run wrote; rebuilt from its parameters when that run directory is on another
    machine (a study shared through --storage)."""
    config_file = Path(best["run_dir"] or "") / files.CONFIG
    if best["run_dir"] and config_file.is_file():
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    else:
        config = search.trial_config({p.key: best[p.key] for p in search.parameters}).to_dict()
    kept = f"at epoch {best['best_epoch']}" if best.get("best_epoch") is not None else "(the folds' mean)"
    if best.get("monitor") not in (None, search.metric) and best.get("monitor_value") is not None:
        kept = (f"its checkpoint: epoch {best['best_epoch']}, {best['monitor']} {best['monitor_value']:.6g}"
                if best.get("best_epoch") is not None else
                f"(the folds' mean; their checkpoints by {best['monitor']}, mean {best['monitor_value']:.6g})")
    head = (f"# The best trial of study {name!r}: trial {best['number']}, {search.metric} {best['value']:.6g} "
            f"{kept}.\n# Train it again with: dltrain train {study_dir / BEST_FILE}\n")
    if (config.get("training") or {}).get("folds"):
        head += ("# It trains a k-fold run (training.folds), as the trial did; add --final for one more model on all "
                 "the training data\n")
    files.atomic_write(study_dir / BEST_FILE, (head + yaml.safe_dump(config, sort_keys=False)).encode())


def _write_plots(study: optuna.Study, study_dir: Path) -> dict[str, str]:
    """The three plots that can be drawn (each needs enough finished trials), name -> file or why not."""
    import matplotlib  # noqa: PLC0415 (slow import, only at the end of a study)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from optuna.visualization import matplotlib as optuna_plots  # noqa: PLC0415 (imports pyplot)

    drawers = {"history": optuna_plots.plot_optimization_history,
               "importances": optuna_plots.plot_param_importances,
               "parallel_coordinate": optuna_plots.plot_parallel_coordinate}
    written = {}
    for plot in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = drawers[plot](study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            plt.close(figure)
            files.atomic_write(study_dir / f"{plot}.png", buffer.getvalue())
            written[plot] = str(study_dir / f"{plot}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few finished trials for this plot
            written[plot] = f"not drawn: {exc}"
            plt.close("all")
    return written
