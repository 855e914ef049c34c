"""dltrain train CONFIG [--set k=v]... [--run-dir DIR] [--device D] [--resume RUN_DIR] [--code FILE]"""

from __future__ import annotations

from pathlib import Path

import typer

from .options import CODE_OPTION


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
    code: list[Path] = CODE_OPTION,
) -> None:
    """Train a model from a YAML config; writes metrics, checkpoints and curves into a run directory."""
    from ..config import load_config  # noqa: PLC0415
    from ..distributed import communicator  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415
    from ..training.reporting import make_reporter  # noqa: PLC0415
    from ..training.run import run_training  # noqa: PLC0415

    load_code(code)
    comm = communicator()  # one rank without MPI; under mpiexec, rank 0 alone writes and prints
    if comm.rank != 0:
        silence_errors()
    cfg = load_config(config, set_) if config is not None else None
    summary = run_training(cfg, run_dir=run_dir, resume=resume, init_from=init_from, device=device, comm=comm,
                           overrides=set_, config_path=config, reporter=make_reporter(quiet),
                           announce=lambda text: print(text, flush=True))
    if comm.rank == 0:
        _print_summary(summary)


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
    parts.append(f"{summary['total_seconds']:.1f}s")
    print("; ".join(parts), flush=True)


def register(app: typer.Typer, reports_errors) -> None:
    app.command("train")(reports_errors(train))
