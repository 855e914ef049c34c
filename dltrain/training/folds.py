"""k-fold cross-validation: K ordinary runs, each validated on one fold of the training data, and their table.

    summary = run_cross_validation(load_config("configs/quickstart.yaml"), run_dir="runs/cv")  # training.folds: 5
    summary = run_cross_validation(None, resume="runs/cv")       # continue from the fold it was in

    runs/cv/
        config.yaml          the config as given (training.folds: K)
        folds.csv            one row per finished fold, then the mean and the standard deviation of the folds
        summary.json         how the cross-validation ended; the folds' mean and standard deviation
        curves.png           every fold's learning curves, overlaid
        process.json, .lock  who runs it; held for the whole cross-validation
        fold-0/ ... fold-K-1/  ordinary run directories whose config says data.fold: {index: i, of: K}:
                             eval, plot, predict, export and --resume work on each as on any run
        final/               with training.final (--final): one run on all the training data for the folds' mean
                             best epoch count; `dltrain eval runs/cv` and predict use its model

The folds are stratified by class and drawn by the config's seed (data/rows.py: fold_numbers), so every training
sample is validated exactly once and the test split is never touched; each fold's run starts from the same seed.
Standard deviations are the sample standard deviation (n - 1) of the folds' values.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..config import Config, config_from_dict, validate
from ..distributed import communicator, on_rank_zero
from ..errors import ConfigError, Diverged, DltrainError, Interrupted, RunDirError, Terminated
from . import rundir as files
from .run import run_training
from .runs import differences, is_cross_validation, read_config
from .trainer import sigterm_interrupts

FOLDS = files.FOLDS  # written when the k-fold run's directory is created: it marks one
FINAL = "final"
FIGURES = ("best_value", "best_epoch", "test_accuracy", "test_loss", "epochs", "seconds")  # averaged over folds
COLUMNS = ("fold", "stop_reason", "epochs", "best_epoch", "monitor", "best_value", "test_accuracy", "test_loss",
           "seconds", "run_dir")
FOLD_KEYS = ("fold", "stop_reason", "epochs_run", "best_epoch", "monitor", "best_value", "test_accuracy", "test_loss",
             "total_seconds", "run_dir")  # what summary.json keeps of each fold's summary
UNFINISHED = ("interrupted", "failed")  # a fold that ended so is run again (resumed from its last checkpoint)


def fold_dir(path: str | Path, index: int) -> Path:
    return Path(path) / f"fold-{index}"


def fold_config(config: Config, index: int | None, source: str) -> Config:
    """The config of fold `index` (data.fold set, training.folds unset), or with index None of the final run: all
    the training data (no validation split), for config.training.epochs epochs, no early stopping."""
    values = copy.deepcopy(config.to_dict())
    folds = values["training"]["folds"]
    values["training"].update(folds=None, final=False)
    if index is None:
        values["data"].update(fold=None, val_fraction=0.0)
        values["training"]["early_stopping"].update(enabled=False, restore_best=False)
        values["training"]["early_stopping"]["monitor"] = "train_loss"
    else:
        values["data"]["fold"] = {"index": index, "of": folds}
    return validate(values, {}, source)


def run_cross_validation(config: Config | None, *, run_dir: str | Path | None = None,
                         resume: str | Path | None = None, device: str | None = None, comm=None,
                         overrides: list[str] = (), config_path: str | Path | None = None, reporter=None,
                         announce: Callable[[str], None] | None = None, callbacks=(), plot: bool = True,
                         name: str | None = None, after_fold: Callable[[int, list[dict]], bool] | None = None) -> dict:
    """Run the k-fold cross-validation `config` asks for (training.folds) into a new directory (default
    runs/<config_path's name>-<time>), or continue the k-fold run `resume`: its finished folds are kept, an
    interrupted one is resumed from its last checkpoint, the others run. Returns the summary (also in summary.json);
    raises Interrupted or Diverged after writing it. `after_fold(index, fold summaries so far)` returning True stops
    the cross-validation there (stop_reason 'pruned': dltrain tune's pruner). The other arguments are
    run_training's, handed to every fold."""
    comm = comm or communicator()
    main = comm.rank == 0
    say = announce if (announce and main) else (lambda text: None)
    run = None
    try:
        if resume is not None:
            if run_dir is not None:
                raise ConfigError("--resume continues RUN_DIR itself; it cannot be combined with --run-dir")
            run = files.RunDir(resume, writable=main)
            on_rank_zero(comm, run.lock)
            config = _resumed_config(run, config, overrides, config_path)
        else:
            if config is None:
                raise ConfigError("missing CONFIG: give a YAML config file (or --resume RUN_DIR)")
            if config.training.folds is None:
                raise ConfigError("training.folds is not set: a k-fold run needs the number of folds (--folds K)")
            for index in range(config.training.folds):  # a config the folds' runs refuse is refused before the first
                fold_config(config, index, "the config")
            path = comm.broadcast(run_dir or files.default_run_dir(config_path or "run"))
            run = files.RunDir(path, writable=main)
            on_rank_zero(comm, lambda: (run.create(checkpoints=False), run.write_config(config.to_dict()),
                                        _write_folds(run, [])))
        if main:
            run.write_process()
        say(f"k-fold run directory: {run.path} ({config.training.folds} folds"
            + (", then a final run" if config.training.final else "") + ")")
        return _cross_validate(config, run, device=device, comm=comm, reporter=reporter, say=say,
                               callbacks=callbacks, plot=plot, after_fold=after_fold,
                               name=name or (Path(config_path).stem if config_path else None))
    finally:
        if run is not None:
            run.unlock()


def _resumed_config(run: files.RunDir, given: Config | None, overrides, config_path) -> Config:
    """The k-fold run's own config; a given one must be the same (each fold keeps the config it began with)."""
    if not is_cross_validation(run.path):
        raise ConfigError(f"--resume {run.path}: not a k-fold run directory (no {FOLDS})")
    if overrides:
        raise ConfigError(f"--resume {run.path}: a k-fold run continues with the config its folds began with; --set "
                          f"applies to one run: resume a fold (--resume {fold_dir(run.path, 0)}) to change it")
    config = config_from_dict(read_config(run.path), str(run.file(files.CONFIG)))
    if given is not None:
        changed = list(differences(config.to_dict(), given.to_dict()))
        if changed:
            diff = "\n".join(f"  {path}: run has {old!r}, {config_path or 'the given config'} has {new!r}"
                             for path, old, new in changed)
            raise ConfigError(f"--resume {run.path}: the given config differs from the k-fold run's; resume it "
                              f"without CONFIG, or start a new run:\n{diff}")
    return config


def _cross_validate(config: Config, run: files.RunDir, *, device, comm, reporter, say, callbacks, plot, after_fold,
                    name) -> dict:
    started = time.perf_counter()
    results: list[dict] = []
    stop_reason, error = "completed", None
    try:
        with sigterm_interrupts():  # between folds too: the summary says how far the k-fold run got
            results_final = _folds(config, run, results, device=device, comm=comm, reporter=reporter, say=say,
                                   callbacks=callbacks, plot=plot, after_fold=after_fold, name=name)
        if results_final == "pruned":
            stop_reason, results_final = "pruned", None
    except (Interrupted, Diverged) as exc:
        stop_reason = "interrupted" if isinstance(exc, Interrupted) else "diverged"
        error = exc
        results_final = None
    except (KeyboardInterrupt, Terminated) as exc:
        signal_name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        stop_reason, error, results_final = "interrupted", Interrupted(f"interrupted ({signal_name})", code), None
    except Exception as exc:
        summary = _summary(config, results, None, "failed", time.perf_counter() - started)
        summary["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DltrainError) else str(exc)
        run.write_summary(summary)
        raise
    summary = _summary(config, results, results_final, stop_reason, time.perf_counter() - started)
    if error is not None:
        summary["error"] = str(error)
    run.write_summary(summary)
    if plot and comm.rank == 0 and results:
        _plot_folds(run, results)
    if isinstance(error, Interrupted):
        signal_name = {143: "SIGTERM", 141: "output closed"}.get(error.exit_code, "Ctrl-C")
        where = f"during fold {len(results)}" if len(results) < config.training.folds else "after the folds"
        raise Interrupted(f"interrupted ({signal_name}) {where}: the k-fold run keeps its {len(results)} finished "
                          f"fold(s), and a fold's last complete epoch; continue it with --resume {run.path}",
                          error.exit_code)
    if error is not None:
        raise error
    return summary


def _folds(config: Config, run: files.RunDir, results: list[dict], *, device, comm, reporter, say, callbacks, plot,
           after_fold, name):
    """The folds one after the other (those finished before are kept), then the final run if asked: the final
    run's summary, None without one, or 'pruned' when after_fold stopped it."""
    folds = config.training.folds
    for index in range(folds):
        path = fold_dir(run.path, index)
        summary = _finished(path, index)
        if summary is None:
            summary = _run_fold(config, index, path, device=device, comm=comm, reporter=reporter,
                                say=lambda text, index=index: say(f"fold {index} ({index + 1} of {folds}), {text}"),
                                callbacks=callbacks, plot=plot, name=name)
        results.append({**summary, "fold": index, "run_dir": str(path)})
        if comm.rank == 0:
            _write_folds(run, results)
        if after_fold is not None and after_fold(index, results) and index < folds - 1:
            return "pruned"
    if not config.training.final:
        return None
    return _run_final(config, run, results, device=device, comm=comm, reporter=reporter, say=say,
                      callbacks=callbacks, plot=plot, name=name)


def _finished(path: Path, index: int) -> dict | None:
    """The summary of fold `index` when its run has ended for good; None when it is yet to run or to finish. A fold
    that diverged stops the cross-validation again: its mean would mean nothing."""
    try:
        summary = files.RunDir(path, writable=False).read_summary()
    except RunDirError:
        return None  # an unreadable summary is the run's to replace: resumed or run again
    if summary is None or summary.get("stop_reason") in UNFINISHED:
        return None
    if summary.get("stop_reason") == "diverged":
        raise Diverged(f"{path}: fold {index} diverged ({summary.get('error', 'see its summary.json')}); a k-fold "
                       "run needs every fold: change the config and start a new run")
    return summary


def _run_fold(config: Config, index: int, path: Path, *, device, comm, reporter, say, callbacks, plot, name):
    if (path / files.LAST).is_file():  # interrupted (or killed) after at least one epoch
        return run_training(None, resume=path, device=device, comm=comm, reporter=reporter, announce=say,
                            callbacks=callbacks, plot=plot, name=name)
    if path.exists() and comm.rank == 0:
        _clear_unstarted(path)
    return run_training(fold_config(config, index, f"fold {index}"), run_dir=path, device=device, comm=comm,
                        reporter=reporter, announce=say, callbacks=callbacks, plot=plot, name=name)


def _clear_unstarted(path: Path) -> None:
    """A fold's directory with no checkpoint (killed before its first epoch ended): nothing of value, emptied under
    its lock (a process still writing it is named instead) so that the fold starts over there."""
    fold = files.RunDir(path)
    fold.lock()
    try:
        for entry in path.iterdir():
            if entry.name != files.LOCK:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    finally:
        fold.unlock()


def _run_final(config: Config, run: files.RunDir, results: list[dict], *, device, comm, reporter, say, callbacks,
               plot, name) -> dict:
    """training.final: one run on all the training data for the folds' mean best epoch count (their last epoch
    where a fold kept none)."""
    path = run.path / FINAL
    epochs = max(1, round(statistics.fmean(r.get("best_epoch") or r["epochs_run"] for r in results)))
    summary = _finished(path, -1) if path.exists() else None
    if summary is not None:
        return {**summary, "run_dir": str(path)}
    values = config.to_dict()
    values["training"]["epochs"] = epochs
    final = fold_config(config_from_dict(values, "the final run's config"), None, "the final run's config")
    say(f"final run: {epochs} epochs (the folds' mean best epoch) on all the training data")
    if (path / files.LAST).is_file():
        summary = run_training(None, resume=path, device=device, comm=comm, reporter=reporter, announce=say,
                               callbacks=callbacks, plot=plot, name=name)
    else:
        if path.exists() and comm.rank == 0:
            _clear_unstarted(path)
        summary = run_training(final, run_dir=path, device=device, comm=comm, reporter=reporter, announce=say,
                               callbacks=callbacks, plot=plot, name=name)
    return {**summary, "run_dir": str(path)}


# ---------------------------------------------------------------- the folds' figures


def _value(summary: dict, figure: str):
    return summary.get("epochs_run") if figure == "epochs" else summary.get(
        "total_seconds" if figure == "seconds" else figure)


def mean_and_std(values: list) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1) of the numbers among `values`; the std of one is None."""
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if not numbers:
        return None, None
    return statistics.fmean(numbers), statistics.stdev(numbers) if len(numbers) > 1 else None


def fold_figures(results: list[dict]) -> dict:
    """{figure: (mean, std)} over the folds' summaries, for FIGURES."""
    return {figure: mean_and_std([_value(r, figure) for r in results]) for figure in FIGURES}


def _summary(config: Config, results: list[dict], final: dict | None, stop_reason: str, seconds: float) -> dict:
    figures = fold_figures(results)
    summary = {
        "stop_reason": stop_reason,
        "folds": config.training.folds,
        "folds_run": len(results),
        "monitor": next((r["monitor"] for r in results if r.get("monitor")), config.training.early_stopping.monitor),
        "best_value": figures["best_value"][0],
        "best_value_std": figures["best_value"][1],
        "best_epoch_mean": figures["best_epoch"][0],
        "epochs_mean": figures["epochs"][0],
        "total_seconds": round(seconds, 3),
        "dltrain_version": __version__,
        "seed": config.seed,
        "device": next((r["device"] for r in results if r.get("device")), None),
    }
    for figure in ("test_accuracy", "test_loss"):
        mean, std = figures[figure]
        if mean is not None:
            summary[figure], summary[f"{figure}_std"] = mean, std
    summary["fold_results"] = [{key: r.get(key) for key in FOLD_KEYS} for r in results]
    if final is not None:
        summary["final"] = {key: final.get(key) for key in ("run_dir", "epochs_run", "test_accuracy", "test_loss",
                                                            "stop_reason") if final.get(key) is not None}
    return summary


def fold_rows(results: list[dict]) -> list[dict]:
    """folds.csv's rows: one per fold, then 'mean' and 'std' (blank where a figure is missing or there is one fold)."""
    rows = [{"fold": r["fold"], "stop_reason": r.get("stop_reason"), "epochs": r.get("epochs_run"),
             "best_epoch": r.get("best_epoch"), "monitor": r.get("monitor"), "best_value": r.get("best_value"),
             "test_accuracy": r.get("test_accuracy"), "test_loss": r.get("test_loss"),
             "seconds": r.get("total_seconds"), "run_dir": r["run_dir"]} for r in results]
    figures = fold_figures(results)
    for position, label in ((0, "mean"), (1, "std")):
        row = {"fold": label, "monitor": rows[0]["monitor"] if rows else None}
        row.update({figure: figures[figure][position] for figure in FIGURES})
        rows.append(row)
    return rows


def _write_folds(run: files.RunDir, results: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    if results:
        writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in fold_rows(results)])
    run.write(FOLDS, text.getvalue().encode())


def read_folds(path: str | Path) -> list[dict]:
    """folds.csv's fold rows (not mean and std) as strings; RunDirError naming the file when it is not that CSV."""
    file = Path(path) / FOLDS
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RunDirError(f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{file}: {files.not_utf8(exc)}; expected the CSV a k-fold run writes") from None
    try:
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
    except csv.Error as exc:
        raise RunDirError(f"{file}: not a readable CSV ({exc})") from None
    if reader.fieldnames is not None and list(reader.fieldnames) != list(COLUMNS):
        raise RunDirError(f"{file}: expected the header {','.join(COLUMNS)!r}, found {','.join(reader.fieldnames)!r}")
    return [row for row in rows if row.get("fold", "").isdigit()]


def _plot_folds(run: files.RunDir, results: list[dict]) -> None:
    from .plotting import plot_runs  # noqa: PLC0415 (matplotlib: only once the folds are done)

    paths = [r["run_dir"] for r in results if files.RunDir(r["run_dir"]).read_metrics()]
    if paths:
        plot_runs(paths, run.file(files.CURVES))


def describe(summary: dict) -> str:
    """'val_accuracy 0.8812 ± 0.0031 over 5 folds': the figure a k-fold run is judged by."""
    if summary.get("best_value") is None:
        return f"no {summary.get('monitor')} over {summary.get('folds_run', 0)} folds"
    std = summary.get("best_value_std")
    return (f"{summary['monitor']} {summary['best_value']:.4f}" + (f" ± {std:.4f}" if std is not None else "")
            + f" over {summary['folds_run']} fold{'s' if summary['folds_run'] != 1 else ''}")

