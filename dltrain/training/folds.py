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
Standard deviations are the sample standard deviation (n - 1) of the folds' values. Reading a k-fold run's files
(folds.csv, its figures, the final run's model) is fold_results.py's, which the listing and loading code imports.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..config import Config, config_from_dict, validate
from ..distributed import communicator, on_rank_zero
from ..errors import ConfigError, Diverged, DltrainError, Interrupted, RunDirError, Terminated
from . import rundir as files
from .checkpoint import checkpoint_config
from .fold_results import FINAL, FOLD_KEYS, FOLDS, UNFINISHED, fold_dir, fold_figures, is_cross_validation, write_folds
from .reporting import silence_stdout
from .run import resumed_run, run_training
from .runs import differences, read_config
from .trainer import sigterm_interrupts


def fold_config(config: Config, index: int | None, source: str, epochs: int | None = None) -> Config:
    """The config of fold `index` (data.fold set, training.folds unset), or with index None of the final run: all
    the training data (no validation split), for `epochs` epochs (a warmup longer than that shortened to it), no
    early stopping and no best epoch restored: its model is its last epoch's."""
    values = copy.deepcopy(config.to_dict())
    folds = values["training"]["folds"]
    values["training"].update(folds=None, final=False)
    if index is None:
        values["data"].update(fold=None, val_fraction=0.0)
        values["training"]["early_stopping"].update(enabled=False, restore_best=False, monitor="train_loss")
        values["training"]["epochs"] = epochs = epochs or values["training"]["epochs"]
        if values["schedule"].get("warmup_epochs", 0) > epochs:
            values["schedule"]["warmup_epochs"] = epochs
    else:
        values["data"]["fold"] = {"index": index, "of": folds}
    return validate(values, {}, source)


def run_cross_validation(config: Config | None, *, run_dir: str | Path | None = None,
                         resume: str | Path | None = None, final: bool = False, device: str | None = None, comm=None,
                         overrides: list[str] = (), config_path: str | Path | None = None, reporter=None,
                         announce: Callable[[str], None] | None = None, callbacks=(), plot: bool = True,
                         name: str | None = None, after_fold: Callable[[int, list[dict]], bool] | None = None) -> dict:
    """Run the k-fold cross-validation `config` asks for (training.folds) into a new directory (default
    runs/<config_path's name>-<time>), or continue the k-fold run `resume`: its finished folds are kept, an
    interrupted one is resumed from its last checkpoint, the others run; `final` adds the final run to it. Returns
    the summary (also in summary.json); raises Interrupted or Diverged after writing it. `after_fold(index, fold
    summaries so far)` returning True stops the cross-validation there (stop_reason 'pruned': dltrain tune's
    pruner). The other arguments are run_training's, handed to every fold."""
    comm = comm or communicator()
    main = comm.rank == 0
    say = announce if (announce and main) else (lambda text: None)
    run = None
    try:
        if resume is not None:
            run = resumed_run(resume, run_dir, comm)
            config = _resumed_config(run, config, overrides, config_path)
            if final and not config.training.final:  # asked for now: the run's config says so from here on
                config.training.final = True
                _check_configs(config)
                on_rank_zero(comm, lambda: run.write_config(config.to_dict()))
            else:
                _check_configs(config)
            previous = _previous_summary(run)
            if not _pending(config, run.path):
                say(f"k-fold run directory: {run.path}: every fold" + (" and the final run" if config.training.final
                                                                       else "") + " has finished; nothing to resume")
                return previous or _summary(config, _results(config, run.path), _final_result(config, run.path),
                                            "completed", 0.0)
        else:
            if config is None:
                raise ConfigError("missing CONFIG: give a YAML config file (or --resume RUN_DIR)")
            if config.training.folds is None:
                raise ConfigError("training.folds is not set: a k-fold run needs the number of folds (--folds K)")
            _check_configs(config)  # what a fold's run (or the final run) would refuse, refused before the first
            previous = None
            path = comm.broadcast(run_dir or files.default_run_dir(config_path or "run"))
            run = files.RunDir(path, writable=main)
        # Said before anything is written: a closed output (`| head`) stops the run with nothing to clean up.
        say(f"k-fold run directory: {run.path} ({config.training.folds} folds"
            + (", then a final run" if config.training.final else "") + ")")
        if resume is None:
            on_rank_zero(comm, lambda: (run.create(checkpoints=False), run.write_config(config.to_dict()),
                                        write_folds(run, [])))
        if main:
            run.write_process()
        return _cross_validate(config, run, previous, device=device, comm=comm, reporter=reporter, say=say,
                               callbacks=callbacks, plot=plot, after_fold=after_fold,
                               name=name or (Path(config_path).stem if config_path else None))
    finally:
        if run is not None:
            run.unlock()


SHAPING = ("model", "loss", "optimizer", "data", "seed")  # what a given config must share with a resumed run's


def _resumed_config(run: files.RunDir, given: Config | None, overrides, config_path) -> Config:
    """The k-fold run's own config; a given one must agree with it on what shapes the runs and the folds."""
    if not is_cross_validation(run.path):
        raise ConfigError(f"--resume {run.path}: not a k-fold run directory (no {FOLDS})")
    if overrides:
        raise ConfigError(f"--resume {run.path}: a k-fold run continues with the config its folds began with; --set "
                          f"applies to one run: resume a fold (--resume {fold_dir(run.path, 0)}) to change it")
    config = config_from_dict(read_config(run.path), str(run.file(files.CONFIG)))
    if given is not None:
        stored, wanted = config.to_dict(), given.to_dict()
        changed = [(path, old, new) for key in SHAPING for path, old, new in differences(stored[key], wanted[key],
                                                                                          (key,))]
        if given.training.folds not in (None, config.training.folds):
            changed.append(("training.folds", config.training.folds, given.training.folds))
        if changed:
            diff = "\n".join(f"  {path}: run has {old!r}, {config_path or 'the given config'} has {new!r}"
                             for path, old, new in changed)
            raise ConfigError(f"--resume {run.path}: the given config differs from the k-fold run's; resume it "
                              f"without CONFIG, or start a new run:\n{diff}")
    return config


def _check_configs(config: Config) -> None:
    """Every config the k-fold run will train, validated now (the final one for the longest it may run)."""
    for index in range(config.training.folds):
        fold_config(config, index, f"the config of fold {index}")
    if config.training.final:
        fold_config(config, None, "the config of the final run")


def _previous_summary(run: files.RunDir) -> dict | None:
    with contextlib.suppress(RunDirError):
        return run.read_summary()
    return None


def _pending(config: Config, path: Path) -> bool:
    """Whether a fold (or the final run) is yet to run or to finish; a fold that diverged raises Diverged."""
    expected = [fold_config(config, i, f"fold {i}") for i in range(config.training.folds)]
    if any(_finished(fold_dir(path, i), f"fold {i}", expected[i]) is None for i in range(config.training.folds)):
        return True
    return config.training.final and _finished(path / FINAL, "the final run") is None


def _results(config: Config, path: Path) -> list[dict]:
    return [{**_finished(fold_dir(path, i), f"fold {i}"), "fold": i, "run_dir": str(fold_dir(path, i))}
            for i in range(config.training.folds)]


def _final_result(config: Config, path: Path) -> dict | None:
    summary = _finished(path / FINAL, "the final run") if config.training.final else None
    return {**summary, "run_dir": str(path / FINAL)} if summary else None


def _cross_validate(config: Config, run: files.RunDir, previous: dict | None, *, device, comm, reporter, say,
                    callbacks, plot, after_fold, name) -> dict:
    started = time.perf_counter()
    earlier = (previous or {}).get("total_seconds") or 0.0  # the sessions before this one (a resumed run)
    results: list[dict] = []
    stop_reason, error, results_final = "completed", None, None
    try:
        with sigterm_interrupts():  # between folds too: the summary says how far the k-fold run got
            results_final = _folds(config, run, results, device=device, comm=comm, reporter=reporter, say=say,
                                   callbacks=callbacks, plot=plot, after_fold=after_fold, name=name)
        if results_final == "pruned":
            stop_reason, results_final = "pruned", None
    except (Interrupted, Diverged) as exc:
        stop_reason, error = "interrupted" if isinstance(exc, Interrupted) else "diverged", exc
    except (KeyboardInterrupt, Terminated) as exc:
        signal_name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        stop_reason, error = "interrupted", Interrupted(f"interrupted ({signal_name})", code)
    except BrokenPipeError:  # `dltrain train ... | head`: the reader went away
        silence_stdout()
        stop_reason, error = "interrupted", Interrupted("interrupted (output closed)", 141)
    except Exception as exc:
        summary = _summary(config, results, None, "failed", earlier + time.perf_counter() - started)
        summary["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DltrainError) else str(exc)
        run.write_summary(summary)
        raise
    summary = _summary(config, results, results_final, stop_reason, earlier + time.perf_counter() - started)
    if error is not None:
        summary["error"] = str(error)
    run.write_summary(summary)
    if plot and comm.rank == 0 and results:
        _plot_folds(run, results)
    if isinstance(error, Interrupted):
        signal_name = {143: "SIGTERM", 141: "output closed"}.get(error.exit_code, "Ctrl-C")
        where = (f"during fold {len(results)}" if len(results) < config.training.folds else "during the final run")
        raise Interrupted(f"interrupted ({signal_name}) {where}: the k-fold run keeps its {len(results)} finished "
                          f"fold(s), and the last complete epoch of the run it was in; continue it with --resume "
                          f"{run.path}", error.exit_code)
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
        expected = fold_config(config, index, f"fold {index}")
        summary = _finished(path, f"fold {index}", expected)
        if summary is None:
            summary = _run(expected, path, device=device, comm=comm, reporter=reporter, callbacks=callbacks,
                           plot=plot, name=name,
                           say=lambda text, index=index: say(f"fold {index} ({index + 1} of {folds}), {text}"))
        results.append({**summary, "fold": index, "run_dir": str(path)})
        on_rank_zero(comm, lambda: write_folds(run, results))
        if after_fold is not None and after_fold(index, results) and index < folds - 1:
            return "pruned"
    if not config.training.final:
        return None
    path = run.path / FINAL
    summary = _finished(path, "the final run")
    if summary is None:
        mean = statistics.fmean(r.get("best_epoch") or r["epochs_run"] for r in results)
        epochs = max(1, math.floor(mean + 0.5))
        final = fold_config(config, None, "the config of the final run", epochs)
        say(f"final run: {epochs} epochs (the folds' mean best epoch, {mean:.4g}) on all the training data"
            + (f", warmup shortened to {final.schedule['warmup_epochs']} epochs"
               if final.schedule.get("warmup_epochs") != config.schedule.get("warmup_epochs") else ""))
        summary = _run(final, path, device=device, comm=comm, reporter=reporter, say=say, callbacks=callbacks,
                       plot=plot, name=name)
    return {**summary, "run_dir": str(path)}


def _finished(path: Path, label: str, expected: Config | None = None) -> dict | None:
    """The summary of a fold's run (`label` says which) when it has ended for good; None when it is yet to run or to
    finish. A run that diverged stops the cross-validation again (a mean without it would mean nothing), and one
    whose config is not `expected` is refused (its results would not belong to this k-fold run)."""
    try:
        summary = files.RunDir(path, writable=False).read_summary()
    except RunDirError:
        return None  # an unreadable summary is the run's to replace: resumed or run again
    if expected is not None and ((path / files.LAST).is_file() or summary is not None):
        _check_config(path, label, expected)
    if summary is None or summary.get("stop_reason") in UNFINISHED:
        return None
    if summary.get("stop_reason") == "diverged":
        raise Diverged(f"{path}: {label} diverged ({summary.get('error', 'see its summary.json')}); a k-fold run "
                       "needs every fold: change the config and start a new run")
    return summary


def _check_config(path: Path, label: str, expected: Config) -> None:
    """The config of the run's last session (its last checkpoint's: a resume with --set changes it) against the
    k-fold run's for that fold."""
    stored = checkpoint_config(path / files.LAST) if (path / files.LAST).is_file() else read_config(path)
    changed = [(key, old, new) for key, old, new in differences(expected.to_dict(), stored) if key != "device"]
    if changed:
        diff = "\n".join(f"  {key}: the k-fold run's config gives {old!r}, {label}'s has {new!r}"
                         for key, old, new in changed[:10])
        raise ConfigError(f"{path}: {label} was trained with another config than the k-fold run's, so its results "
                          f"would not belong to it; move it away to train it again:\n{diff}")


def _run(config: Config, path: Path, *, device, comm, reporter, say, callbacks, plot, name) -> dict:
    """One run of the k-fold run: resumed from its last checkpoint when it has one (interrupted or killed after an
    epoch), else started (over what a run stopped before its first epoch left, which RunDir.create clears)."""
    if (path / files.LAST).is_file():
        return run_training(None, resume=path, device=device, comm=comm, reporter=reporter, announce=say,
                            callbacks=callbacks, plot=plot, name=name)
    return run_training(config, run_dir=path, device=device, comm=comm, reporter=reporter, announce=say,
                        callbacks=callbacks, plot=plot, name=name)


# ---------------------------------------------------------------- the folds' figures


def _summary(config: Config, results: list[dict], final: dict | None, stop_reason: str, seconds: float) -> dict:
    figures = fold_figures(results)
    summary = {
        "stop_reason": stop_reason,
        "folds": config.training.folds,
        "folds_run": len(results),
        "epochs_run": sum(r.get("epochs_run") or 0 for r in results),  # over every fold
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
    for figure in ("test_accuracy", "test_loss", "test_mae", "test_r2"):
        mean, std = figures[figure]
        if mean is not None:
            summary[figure], summary[f"{figure}_std"] = mean, std
    summary["fold_results"] = [{key: r.get(key) for key in FOLD_KEYS} for r in results]
    if final is not None:
        summary["final"] = {key: final.get(key) for key in ("run_dir", "epochs_run", "test_accuracy", "test_loss",
                                                            "stop_reason") if final.get(key) is not None}
    return summary


def _plot_folds(run: files.RunDir, results: list[dict]) -> None:
    from .plotting import plot_runs  # noqa: PLC0415 (matplotlib: only once the folds are done)

    paths = [r["run_dir"] for r in results if files.RunDir(r["run_dir"]).read_metrics()]
    if paths:
        plot_runs(paths, run.file(files.CURVES))
