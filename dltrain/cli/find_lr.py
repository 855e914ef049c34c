"""dltrain find-lr CONFIG [--start 1e-7] [--end 10] [--steps 100] [--out FILE.png] [--set KEY=VALUE]..."""

from __future__ import annotations

from pathlib import Path

import typer

from .options import CODE_OPTION


def find_lr(
    config: Path = typer.Argument(..., metavar="CONFIG", help="The YAML config whose learning rate to choose."),
    start: float = typer.Option(1e-7, "--start", metavar="LR", help="The first learning rate tried."),
    end: float = typer.Option(10.0, "--end", metavar="LR", help="The last learning rate tried."),
    steps: int = typer.Option(100, "--steps", min=1, metavar="N", help="Training steps (one learning rate each)."),
    out: Path | None = typer.Option(None, "--out", metavar="FILE", help="The plot (default <config name>-lr.png)."),
    device: str | None = typer.Option(None, "--device", metavar="DEVICE",
                                      help="cpu, gpu or auto (overrides the config's device)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config key (repeatable)."),
    code: list[Path] = CODE_OPTION,
) -> None:
    """The learning-rate range test: loss against an exponentially rising learning rate, and the rate to use."""
    from ..config import load_config  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415
    from ..training.find_lr import lr_range_test, plot_range_test  # noqa: PLC0415
    from ..training.run import scratch_trainer  # noqa: PLC0415

    load_code(code)
    with scratch_trainer(load_config(config, set_), device) as trainer:  # nothing is written but the plot
        result = lr_range_test(trainer, start, end, steps)
    out = out or Path(f"{config.stem}-lr.png")
    plot_range_test(result, out, f"{config.name}: learning-rate range test")
    print(f"{len(result.rates)} steps from lr {result.rates[0]:.3g} to {result.rates[-1]:.3g}; plot: {out}")
    if result.suggestion is None:
        print("no suggestion: the loss diverged within the first steps; try a smaller --end")
        return
    print(f"suggested learning rate: {result.suggestion:.3g} (a tenth of the rate with the lowest smoothed loss)")
    print(f"  --set optimizer.lr={result.suggestion:.3g}")


def register(app: typer.Typer, reports_errors) -> None:
    app.command("find-lr")(reports_errors(find_lr))
