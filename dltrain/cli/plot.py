"""dltrain plot RUN_DIR... [--out FILE.png]"""

from __future__ import annotations

from pathlib import Path

import typer


def plot(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR",
                                          help="One or more run directories (several overlay, with a legend)."),
    out: Path | None = typer.Option(None, "--out", metavar="FILE",
                                    help="The PNG to write (default: FIRST_RUN_DIR/curves.png)."),
    gradients: bool = typer.Option(False, "--gradients",
                                   help="Plot per-layer gradient norms (gradients.csv) instead, to gradients.png."),
) -> None:
    """Draw learning curves (loss, accuracy, learning rate; best epoch marked) into a PNG."""
    from ..training.plotting import plot_gradients, plot_runs  # noqa: PLC0415

    print(plot_gradients(run_dirs, out) if gradients else plot_runs(run_dirs, out))


def register(app: typer.Typer, reports_errors) -> None:
    app.command("plot")(reports_errors(plot))
