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
parameters again once, as a new trial.
"""

from __future__ import annotations

import csv
import fcntl
import io
import math
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
STORAGE_FILE = "study.db"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
PLOTS = ("history", "importances", "parallel_coordinate")

optuna.logging.set_verbosity(optuna.logging.ERROR)  # dltrain prints one line per trial itself


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(Path(study_dir) / STORAGE_FILE).resolve()}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # workers wait for the file lock
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # a dead worker's trial is tried once more with the same parameters (a grid point is not lost)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                              grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=retry)
    except ImportError as exc:
        raise ConfigError(f"--storage {url}: its database driver is not installed ({exc}); e.g. "
                          f"pip install psycopg2-binary for postgresql://") from None
    except Exception as exc:  # noqa: BLE001 (SQLAlchemy's errors: bad URL, unreachable server, unwritable file)
        raise ConfigError(f"--storage {url}: cannot open the study's database ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]})") from None


def open_study(search: Search, storage, name: str, worker: int = 0) -> optuna.Study:
    """Create the study, or load it to continue; a study searched for another metric is refused."""
    study = optuna.create_study(storage=storage, study_name=name, direction=search.direction,
                                pruner=_pruner(search), load_if_exists=True)
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
    if search.pruner == "median":  # judged from the second epoch, once 5 trials have finished
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=search.config.training.epochs)
    return optuna.pruners.NopPruner()


def target_trials(search: Search) -> int:
    return min(search.trials, search.grid_size) if search.sampler == "grid" else search.trials


# ---------------------------------------------------------------- running trials


class _StartLock:
    """An exclusive lock file in the study directory, held from counting the trials to creating the next one."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".tune.lock"
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
    lock = _StartLock(study_dir)
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
    gives up on (the run says stop_reason: pruned)."""

    def __init__(self, trial: optuna.Trial, metric: str, direction: str):
        self.trial, self.metric = trial, metric
        self.better = max if direction == "maximize" else min
        self.best, self.best_epoch = None, None

    def on_epoch_end(self, trainer, epoch, logs):
        value = logs.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        value = float(value)
        if self.best is None or self.better(self.best, value) == value != self.best:
            self.best, self.best_epoch = value, epoch
        self.trial.report(value, epoch)
        if epoch < trainer.config.training.epochs and not trainer.stop_training and self.trial.should_prune():
            trainer.stop_training = True
            trainer.stop_reason = "pruned"


class _Objective:
    def __init__(self, search: Search, study_dir: Path, lock: _StartLock, device, announce, name: str):
        self.search, self.study_dir, self.lock = search, Path(study_dir), lock
        self.device, self.announce, self.name = device, announce, name

    def __call__(self, trial: optuna.Trial) -> float:
        self.lock.release()  # the trial exists (running): every other worker counts it from now on
        assignment = {p.key: suggest(trial, p) for p in self.search.parameters}
        config = self.search.trial_config(assignment)
        run_dir = self.study_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        pruning = _Pruning(trial, self.search.metric, self.search.direction)
        try:
            summary = run_training(config, run_dir=run_dir, device=self.device, callbacks=[pruning], name=self.name)
        except Diverged:
            summary = files.RunDir(run_dir, writable=False).read_summary() or {"stop_reason": "diverged"}
        for key in ("stop_reason", "epochs_run", "total_seconds", "test_accuracy", "test_loss"):
            if summary.get(key) is not None:
                trial.set_user_attr(key, summary[key])
        if pruning.best_epoch is not None:
            trial.set_user_attr("best_epoch", pruning.best_epoch)
        metric = self.search.metric
        outcome = (f"{metric} {pruning.best:.4f} at epoch {pruning.best_epoch}" if pruning.best is not None
                   else f"no {metric}")
        self.announce(f"trial {trial.number}: {describe_assignment(assignment)} -> {outcome}; "
                      f"{summary['stop_reason']} after {summary.get('epochs_run', '?')} epochs, "
                      f"{summary.get('total_seconds', 0):.1f}s, {run_dir}")
        if summary["stop_reason"] == "diverged" or pruning.best is None:
            return math.nan  # Optuna marks the trial failed; it counts as finished (stop_reason), the search goes on
        if summary["stop_reason"] == "pruned":
            raise optuna.TrialPruned(f"pruned at epoch {summary['epochs_run']}")
        return pruning.best


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
        for key in by_key:
            value = t.params.get(key)
            row[key] = by_key[key].from_category(value) if value is not None and by_key[key].kind == "choice" \
                else value
        row.update(stop_reason=t.user_attrs.get("stop_reason"), epochs=t.user_attrs.get("epochs_run"),
                   best_epoch=t.user_attrs.get("best_epoch"), seconds=t.user_attrs.get("total_seconds"),
                   run_dir=t.user_attrs.get("run_dir"))
        rows.append(row)
    return rows


def _state(trial) -> str:
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
            "WAITING": "waiting"}[trial.state.name]


def write_results(study: optuna.Study, search: Search, study_dir: Path, name: str) -> dict:
    """trials.csv, best.yaml and the plots; returns what the closing table shows."""
    study_dir = Path(study_dir)
    rows = trial_rows(study, search)
    columns = ["number", "state", "value", *(p.key for p in search.parameters), "stop_reason", "epochs",
               "best_epoch", "seconds", "run_dir"]
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
    config_file = Path(best["run_dir"]) / files.CONFIG
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    else:
        config = search.trial_config({p.key: best[p.key] for p in search.parameters}).to_dict()
    head = (f"# The best trial of study {name!r}: trial {best['number']}, {search.metric} {best['value']:.6g} "
            f"at epoch {best['best_epoch']}.\n# Train it again with: dltrain train {study_dir / BEST_FILE}\n")
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
