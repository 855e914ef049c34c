"""dltrain train CONFIG [--set k=v]... [--run-dir DIR] [--device D] [--resume RUN_DIR] [--folds K [--final]]
[--code FILE]"""

from __future__ import annotations

from pathlib import Path

import typer

from .options import CODE_OPTION


def train(
    config: Path | None = typer.Argument(None, metavar="CONFIG",
                                         help="The run's YAML config (optional with --resume)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a config key: --set training.epochs=5 (repeatable)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", metavar="DIR",
                                        help="The run directory to create (default runs/<config>-<time>)."),
    device: str | None = typer.Option(None, "--device", metavar="DEVICE",
                                      help="cpu, gpu or auto (overrides the config's device)."),
    resume: Path | None = typer.Option(None, "--resume", metavar="RUN_DIR",
                                       help="Continue this run directory from its last checkpoint."),
    init_from: Path | None = typer.Option(None, "--init-from", metavar="CHECKPOINT",
                                          help="Start from these weights (checkpoint or run dir), fresh optimizer."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the run directory and the final summary."),
    folds: int | None = typer.Option(None, "--folds", min=2, metavar="K",
                                     help="k-fold cross-validation: K runs, each validated on one stratified fold of "
                                          "the training data, then their mean and std (training.folds)."),
    final: bool = typer.Option(False, "--final", help="With --folds: then train once on all the training data for "
                                                      "the folds' mean best epoch count (training.final)."),
    code: list[Path] = CODE_OPTION,
) -> None:
    """Train a model from a YAML config; writes metrics, checkpoints and curves into a run directory."""
    from ..config import load_config  # noqa: PLC0415
    from ..distributed import communicator  # noqa: PLC0415
    from ..errors import ConfigError  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415
    from ..training.fold_results import is_cross_validation  # noqa: PLC0415
    from ..training.folds import run_cross_validation  # noqa: PLC0415
    from ..training.reporting import make_reporter  # noqa: PLC0415
    from ..training.run import run_training  # noqa: PLC0415

    load_code(code)
    comm = communicator()  # one rank without MPI; under mpiexec, rank 0 alone writes and prints
    if comm.rank != 0:
        silence_errors()
    cross_validation = resume is not None and is_cross_validation(resume)
    if resume is not None and not cross_validation and (folds is not None or final):
        option = "--folds" if folds is not None else "--final"
        raise ConfigError(f"{option}: {resume} is one run, not a k-fold run; --resume continues it as it began "
                          f"(start a k-fold run with CONFIG {option.replace('--final', '--folds K --final')})")
    cfg = load_config(config, set_) if config is not None else None
    if cfg is not None and (folds is not None or final):
        cfg = with_folds(cfg, folds, final, config)
    options = dict(device=device, comm=comm, overrides=set_, config_path=config, reporter=make_reporter(quiet),
                   announce=lambda text: print(text, flush=True))
    if cross_validation or (cfg is not None and cfg.training.folds is not None and resume is None):
        if init_from is not None:
            raise ConfigError("--init-from starts one run from a checkpoint's weights; a k-fold run trains each "
                              "fold from the start")
        if cfg is None and folds is not None:  # --resume RUN --folds K: the run's own K, or a mistake
            from ..training.runs import read_config  # noqa: PLC0415

            stored = (read_config(resume).get("training") or {}).get("folds")
            if stored != folds:
                raise ConfigError(f"--folds {folds}: the k-fold run {resume} has {stored} folds; resume it without "
                                  "--folds, or start a new run")
        summary = run_cross_validation(cfg, run_dir=run_dir, resume=resume, final=final, **options)
        if comm.rank == 0:
            print_cross_validation(summary)
        return
    summary = run_training(cfg, run_dir=run_dir, resume=resume, init_from=init_from, **options)
    if comm.rank == 0:
        _print_summary(summary)


def with_folds(cfg, folds: int | None, final: bool, config_path: Path):
    """The config with --folds K and --final written in, validated: a message names the options."""
    from ..config import validate  # noqa: PLC0415

    values = cfg.to_dict()
    if folds is not None:
        values["training"]["folds"] = folds
    values["training"]["final"] = values["training"]["final"] or final
    given = " ".join([f"--folds {folds}"] * (folds is not None) + ["--final"] * final)
    return validate(values, {}, f"{config_path} with {given}")


def silence_errors() -> None:
    """MPI ranks other than 0 exit with the same codes but leave the messages to rank 0."""
    from . import _state  # noqa: PLC0415

    _state["silent"] = True


def _print_summary(summary: dict) -> None:
    parts = [f"stop: {summary['stop_reason']} after {summary['epochs_run']} epochs"]
    if summary.get("best_epoch") is not None:
        no_val = " (no validation split)" if summary["monitor"].startswith("train_") else ""
        parts.append(f"best {summary['monitor']}{no_val} {summary['best_value']:.4f} at epoch {summary['best_epoch']}")
    if "test_accuracy" in summary:
        parts.append(f"test accuracy {summary['test_accuracy']:.4f}")
    if "test_loss" in summary:
        parts.append(f"test loss {summary['test_loss']:.4f}")
    from ..training.reporting import in_units  # noqa: PLC0415

    if summary.get("test_mae") is not None:  # regression, in the data's units as eval gives it
        parts.append(f"test MAE {in_units(summary['test_mae'])}")
    if summary.get("test_r2") is not None:
        parts.append(f"test R² {summary['test_r2']:.4f}")
    parts.append(f"{summary['total_seconds']:.1f}s")
    print("; ".join(parts), flush=True)


def print_cross_validation(summary: dict) -> None:
    """The folds' table (folds.csv's rows, mean and std last) and the line that judges the k-fold run."""
    from ..training.fold_results import describe, fold_rows  # noqa: PLC0415
    from ..training.reporting import in_units  # noqa: PLC0415
    from .output import print_table  # noqa: PLC0415

    rows = fold_rows(summary["fold_results"]) if summary.get("fold_results") else []
    tested = [key for key in ("test_accuracy", "test_loss", "test_mae", "test_r2")
              if any(r.get(key) not in (None, "") for r in rows)]
    header = ["fold", "stop", "epochs", "best epoch", f"best {summary['monitor']}", *(t.replace("_", " ")
                                                                                      for t in tested), "seconds"]

    def cell(value, spec):
        return "" if value in (None, "") else format(value, spec)

    lines = [[str(r["fold"]), r.get("stop_reason") or "", cell(r.get("epochs"), ".4g"),
              cell(r.get("best_epoch"), ".4g"), cell(r.get("best_value"), ".4f"),
              *(in_units(r[t]) if t == "test_mae" and r.get(t) not in (None, "") else cell(r.get(t), ".4f")
                for t in tested), cell(r.get("seconds"), ".1f")] for r in rows]
    print_table(header, lines, right=[h for h in header if h not in ("fold", "stop")])
    text = f"{summary['stop_reason']}: {describe(summary)}"
    for key in ("test_accuracy", "test_loss", "test_mae", "test_r2"):
        if summary.get(key) is not None:
            std = summary.get(f"{key}_std")
            show = in_units if key == "test_mae" else (lambda v: f"{v:.4f}")
            name = {"test_mae": "test MAE", "test_r2": "test R²"}.get(key, key.replace("_", " "))
            text += f"; {name} {show(summary[key])}" + (f" ± {show(std)}" if std is not None else "")
    if summary.get("final"):
        final = summary["final"]
        text += f"; final model: {final['run_dir']} ({final.get('epochs_run')} epochs"
        text += f", test accuracy {final['test_accuracy']:.4f})" if "test_accuracy" in final else ")"
    print(text + f"; {summary['total_seconds']:.1f}s", flush=True)


def register(app: typer.Typer, reports_errors) -> None:
    app.command("train")(reports_errors(train))
