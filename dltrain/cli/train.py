"""dltrain train CONFIG [--set k=v]... [--run-dir DIR] [--device D] [--resume RUN_DIR]"""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    config: Path | None = typer.Argument(None, help="The run's YAML config (optional with --resume)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set training.epochs=5 (repeatable)."),
    run_dir: Path | None = typer.Option(None, "--run-dir",
                                        help="The run directory to create (default runs/<config>-<time>)."),
    device: str | None = typer.Option(None, "--device", help="cpu, gpu or auto (overrides the config's device)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run directory from its last checkpoint."),
    init_from: Path | None = typer.Option(None, "--init-from",
                                          help="Start from these weights (checkpoint or run dir), fresh optimizer."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the run directory and the final summary."),
) -> None:
    """Train a model from a YAML config; writes metrics, checkpoints and curves into a run directory."""
    from .. import backend  # noqa: PLC0415
    from ..config import load_config  # noqa: PLC0415
    from ..distributed import communicator  # noqa: PLC0415
    from ..errors import ConfigError, DltrainError  # noqa: PLC0415
    from ..training import rundir as files  # noqa: PLC0415
    from ..training.checkpoint import load_checkpoint  # noqa: PLC0415
    from ..training.reporting import SilentReporter, make_reporter  # noqa: PLC0415
    from ..training.trainer import Trainer  # noqa: PLC0415

    comm = communicator()  # one rank without MPI; under mpiexec, rank 0 alone writes and prints
    main = comm.rank == 0
    if not main:
        silence_errors()
    checkpoint = None
    if resume is not None:
        if run_dir is not None:
            raise ConfigError("--resume continues RUN_DIR itself; it cannot be combined with --run-dir")
        run = files.RunDir(resume, writable=main)
        if not run.path.is_dir():
            raise ConfigError(f"--resume {resume}: not a run directory")
        run.remove_stale_temporaries()
        checkpoint = load_checkpoint(run.file(files.LAST))
        cfg = _resumed_config(checkpoint, config, set_)
    else:
        if config is None:
            raise ConfigError("missing CONFIG: give a YAML config file (or --resume RUN_DIR)")
        cfg = load_config(config, set_)
        path = comm.broadcast(run_dir or files.default_run_dir(config))  # one name, whatever each rank's clock
        run = files.RunDir(path, writable=main)
    if device is not None:
        cfg.device = device
    resolved_device = backend.resolve_device(cfg.device)
    comm = comm.for_device(resolved_device)  # GPU ranks: one GPU each, gradients summed by NCCL

    reporter = make_reporter(quiet) if main else SilentReporter()
    trainer = Trainer(cfg, run, resolved_device, reporter, resume=checkpoint, comm=comm)
    trainer.setup()  # data and model first: a bad dataset leaves no empty run directory behind
    if init_from is not None:
        if checkpoint is not None:
            raise ConfigError("--init-from starts a new run from a checkpoint's weights; --resume continues a run: "
                              "use one of them")
        trainer.load_weights(init_from)
    problem = None
    if checkpoint is None and main:
        try:
            run.create()
            run.write_config(cfg.to_dict())
        except DltrainError as exc:
            problem = exc
    if comm.broadcast(problem is not None):  # every rank stops if rank 0 cannot write
        raise problem or DltrainError("rank 0 could not create the run directory")
    if main:
        print(f"run directory: {run.path}" + (f" ({comm.size} ranks)" if comm.size > 1 else ""), flush=True)
        if checkpoint is not None:
            print(f"resuming after epoch {trainer.start_epoch} of {cfg.training.epochs}", flush=True)
    try:
        summary = trainer.fit()
    finally:
        if main:
            _plot_quietly(run.path)
    if main:
        _print_summary(summary)


def silence_errors() -> None:
    """MPI ranks other than 0 exit with the same codes but leave the messages to rank 0."""
    from . import _state  # noqa: PLC0415

    _state["silent"] = True


def _resumed_config(checkpoint, config_path, overrides):
    """The checkpoint's config with --set applied; a given CONFIG must agree with it on what shapes the run."""
    from ..config import apply_override, config_from_dict, load_config, parse_override, validate  # noqa: PLC0415
    from ..errors import ConfigError  # noqa: PLC0415

    values = checkpoint.config
    written_by = {}
    for expression in overrides:
        key_path, value = parse_override(expression)
        apply_override(values, key_path, value, expression)
        written_by[key_path] = expression
    cfg = validate(values, {}, "checkpoint config", written_by) if overrides else config_from_dict(values)
    if config_path is not None:
        given = load_config(config_path, overrides).to_dict()
        stored = cfg.to_dict()
        changed = [key for key in ("model", "loss", "optimizer", "data", "seed") if given[key] != stored[key]]
        if changed:
            diff = "\n".join(f"  {path}: run has {old!r}, {config_path} has {new!r}"
                             for key in changed for path, old, new in _differences(stored[key], given[key], (key,)))
            raise ConfigError(f"--resume: {config_path} differs from the run's config in {', '.join(changed)}; "
                              f"resume with the run's config, or use --init-from to start a new run from its "
                              f"weights:\n{diff}")
    return cfg


def _differences(old, new, path: tuple):
    """(key path, old, new) for every leaf where two resolved configs differ."""
    from ..config import format_path  # noqa: PLC0415

    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            yield from _differences(old.get(key), new.get(key), path + (key,))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from _differences(a, b, path + (i,))
    elif old != new:
        yield format_path(path), old, new


def _plot_quietly(path) -> None:
    """Write curves.png; a plotting problem never fails a finished training run."""
    try:
        from ..training.plotting import plot_runs  # noqa: PLC0415
        from ..training.rundir import CURVES  # noqa: PLC0415

        plot_runs([path], path / CURVES)
    except Exception:  # noqa: BLE001 (matplotlib missing or a run with no rows yet)
        pass


def _print_summary(summary: dict) -> None:
    parts = [f"stop: {summary['stop_reason']} after {summary['epochs_run']} epochs"]
    if summary.get("best_epoch") is not None:
        no_val = " (no validation split)" if summary["monitor"].startswith("train_") else ""
        parts.append(f"best {summary['monitor']}{no_val} {summary['best_value']:.4f} at epoch {summary['best_epoch']}")
    if "test_accuracy" in summary:
        parts.append(f"test accuracy {summary['test_accuracy']:.4f}")
    if "test_loss" in summary:
        parts.append(f"test loss {summary['test_loss']:.4f}")
    parts.append(f"{summary['total_seconds']:.1f}s")
    print("; ".join(parts), flush=True)


def register(app: typer.Typer, reports_errors) -> None:
    app.command("train")(reports_errors(train))
