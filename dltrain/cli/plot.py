"""dltrain plot RUN_DIR... [--out FILE.png]"""

from __future__ import annotations

from pathlib import Path

import typer


def plot(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories (several overlay, with a legend)."),
    out: Path | None = typer.Option(None, "--out", help="The PNG to write (default: FIRST_RUN_DIR/curves.png)."),
) -> None:
    """Draw learning curves (loss, accuracy, learning rate; best epoch marked) into a PNG."""
    from ..training.plotting import plot_runs  # noqa: PLC0415

    print(plot_runs(run_dirs, out))


def register(app: typer.Typer, reports_errors) -> None:
    app.command("plot")(reports_errors(plot))
