"""One training run from start to finish, as `dltrain train` does it: run directory, resume, fine-tuning, MPI ranks.

    summary = run_training(load_config("configs/quickstart.yaml"), run_dir="runs/mine")
    summary = run_training(None, resume="runs/mine")          # continue from its last checkpoint

Under mpiexec every rank calls it; rank 0 alone writes files and announces.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import backend
from ..config import Config, apply_override, config_from_dict, parse_override, validate
from ..distributed import communicator, on_rank_zero
from ..errors import ConfigError, RunDirError
from . import rundir as files
from .checkpoint import load_checkpoint
from .reporting import SilentReporter
from .runs import differences
from .trainer import Trainer


def run_training(config: Config | None, *, run_dir: str | Path | None = None, resume: str | Path | None = None,
                 init_from: str | Path | None = None, device: str | None = None, comm=None,
                 overrides: list[str] = (), config_path: str | Path | None = None, reporter=None,
                 announce: Callable[[str], None] | None = None, callbacks=(), plot: bool = True,
                 name: str | None = None) -> dict:
    """Train `config` into a new run directory (default runs/<config_path's name>-<time>), or continue the run
    directory `resume` (then `config`, if given, must agree with the run's on what shapes it, and `overrides`
    (--set expressions) apply to the run's own config). `init_from` starts from another run's weights. Returns the
    summary (also in summary.json); raises Diverged or Interrupted after writing it. `callbacks` run after the
    built-in ones; `plot` writes curves.png at the end; `name` (default: config_path's stem) names the family of
    runs for trackers (MLflow's experiment)."""
    comm = comm or communicator()  # one rank without MPI
    main = comm.rank == 0
    say = announce if (announce and main) else (lambda text: None)
    run = None
    try:
        if resume is not None:
            run = resumed_run(resume, run_dir, comm)
            checkpoint = load_checkpoint(run.file(files.LAST))
            config = resumed_config(checkpoint, config, overrides, config_path)
            finished = comm.broadcast(_finished(run, checkpoint, config) if main else None)
            if finished is not None:  # nothing to train: the run's files stay as they are
                reason, summary = finished
                say(f"{resume} {reason}")
                run.remove_stale_temporaries()  # what a writer killed after the summary left (not the run's files)
                return summary
            run.read_metrics()  # a metrics.csv it cannot continue is refused before anything is written
        else:
            if config is None:
                raise ConfigError("missing CONFIG: give a YAML config file (or --resume RUN_DIR)")
            checkpoint = None
            path = comm.broadcast(run_dir or files.default_run_dir(config_path or "run"))  # one name on every rank
            run = files.RunDir(path, writable=main)
        return _train(config, run, checkpoint=checkpoint, init_from=init_from, device=device, comm=comm,
                      reporter=reporter, say=say, callbacks=callbacks, plot=plot,
                      name=name or (Path(config_path).stem if config_path else None))
    finally:
        if run is not None:
            run.unlock()


def _finished(run: files.RunDir, checkpoint, config: Config) -> tuple[str, dict] | None:
    """(why there is nothing to resume, the run's summary) for a run whose last session ended as it was to end (its
    summary is of its last checkpoint's epoch) and that, with the resumed config, would train no further epoch: it
    completed its epochs, or early stopping ended it and would again. None otherwise (an interrupted, failed or
    killed run, or one given more epochs or more patience with --set): resuming continues it."""
    try:
        summary = run.read_summary()
    except RunDirError:
        return None
    epoch, epochs = checkpoint.state["epoch"], config.training.epochs
    if summary is None or summary.get("epochs_run") != epoch:
        return None
    stop_reason = summary.get("stop_reason")
    if stop_reason == "completed" and epoch >= epochs:
        return (f"finished all {epoch} of its epochs; nothing to resume (extend it with --set training.epochs=N)",
                summary)
    stopping, wait = config.training.early_stopping, checkpoint.state["early_stopping"].get("wait")
    if stop_reason == "early_stopping" and stopping.enabled and isinstance(wait, int) and wait >= stopping.patience:
        return (f"finished: early stopping ended it after epoch {epoch} of {epochs} ({stopping.monitor} had not "
                f"improved for {wait} epoch{'' if wait == 1 else 's'}); nothing to resume (continue it with --set "
                f"training.early_stopping.patience=N, N above {wait})", summary)
    return None


def _train(config: Config, run: files.RunDir, *, checkpoint, init_from, device, comm, reporter, say, callbacks,
           plot: bool, name: str | None) -> dict:
    """run_training once the run directory is known (and, on a resume, locked)."""
    main = comm.rank == 0
    if device is not None:
        config.device = device
    resolved_device = backend.resolve_device(config.device)
    comm = comm.for_device(resolved_device)  # GPU ranks: one GPU each, gradients summed by NCCL

    trainer = Trainer(config, run, resolved_device, reporter if main and reporter else SilentReporter(),
                      resume=checkpoint, comm=comm, callbacks=callbacks)
    trainer.config_name = name
    trainer.plot_curves = plot
    if init_from is not None and checkpoint is not None:
        raise ConfigError("--init-from starts a new run from a checkpoint's weights; --resume continues a run: "
                          "use one of them")
    trainer.setup(init_from)  # data and model first: a bad dataset leaves no empty run directory behind
    # Said before anything is written: a closed output (`| head`) stops the run with nothing to clean up.
    say(f"run directory: {run.path}" + (f" ({comm.size} ranks)" if comm.size > 1 else ""))
    if checkpoint is not None:
        say(f"resuming after epoch {trainer.start_epoch} of {config.training.epochs}")
    if checkpoint is None:
        on_rank_zero(comm, lambda: (run.create(), run.write_config(config.to_dict())))
    else:
        run.remove_stale_temporaries()  # what a killed writer left; the lock says none is writing now
    if main:
        run.write_process()  # who is training it: `dltrain runs` tells running from killed
    return trainer.fit()


def resumed_run(resume: str | Path, run_dir, comm) -> files.RunDir:
    """The run directory --resume names, locked by rank 0 before anything in it is read (another process may be
    writing it); RunDirError naming the holder when one is."""
    if run_dir is not None:
        raise ConfigError("--resume continues RUN_DIR itself; it cannot be combined with --run-dir")
    run = files.RunDir(resume, writable=comm.rank == 0)
    if not run.path.is_dir():
        raise ConfigError(f"--resume {resume}: not a run directory")
    on_rank_zero(comm, run.lock)
    return run


@contextlib.contextmanager
def scratch_trainer(config: Config, device: str | None = None):
    """A set-up Trainer of `config` whose run directory is never written (dltrain profile, find-lr)."""
    if device is not None:
        config.device = device
    with tempfile.TemporaryDirectory() as nowhere:
        trainer = Trainer(config, files.RunDir(Path(nowhere) / "run", writable=False),
                          backend.resolve_device(config.device))
        trainer.setup()
        yield trainer


def resumed_config(checkpoint, given: Config | None, overrides, config_path=None) -> Config:
    """The checkpoint's config with --set applied; a given config must agree with it on what shapes the run."""
    values = checkpoint.config
    written_by = {}
    for expression in overrides:
        key_path, value = parse_override(expression)
        apply_override(values, key_path, value, expression)
        written_by[key_path] = expression
    cfg = validate(values, {}, "checkpoint config", written_by) if overrides else config_from_dict(values)
    if given is not None:
        given_values, stored = given.to_dict(), cfg.to_dict()
        changed = [key for key in ("model", "loss", "optimizer", "data", "seed") if given_values[key] != stored[key]]
        if changed:
            name = config_path or "the given config"
            diff = "\n".join(f"  {path}: run has {old!r}, {name} has {new!r}"
                             for key in changed
                             for path, old, new in differences(stored[key], given_values[key], (key,)))
            raise ConfigError(f"--resume: {name} differs from the run's config in {', '.join(changed)}; "
                              f"resume with the run's config, or use --init-from to start a new run from its "
                              f"weights:\n{diff}")
    return cfg
