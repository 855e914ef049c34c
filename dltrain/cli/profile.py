"""dltrain profile CONFIG [--steps N] [--device D] [--set KEY=VALUE]..."""

from __future__ import annotations

from pathlib import Path

import typer

from .options import CODE_OPTION


def profile(
    config: Path = typer.Argument(..., metavar="CONFIG", help="The YAML config whose training step to profile."),
    steps: int = typer.Option(20, "--steps", min=1, metavar="N", help="Timed steps (after 3 warm-up steps)."),
    device: str | None = typer.Option(None, "--device", metavar="DEVICE",
                                      help="cpu, gpu or auto (overrides the config's device)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config key (repeatable)."),
    code: list[Path] = CODE_OPTION,
) -> None:
    """Time a training step part by part: batch gather, each layer's forward and backward, loss, optimizer."""
    from ..config import load_config  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415
    from ..training.profile import format_profile, profile_steps  # noqa: PLC0415
    from ..training.run import scratch_trainer  # noqa: PLC0415

    load_code(code)
    with scratch_trainer(load_config(config, set_), device) as trainer:  # nothing is written
        print(f"{config}: {trainer.config.training.batch_size} samples per step on the {trainer.device}")
        print(format_profile(profile_steps(trainer, steps=steps)))


def register(app: typer.Typer, reports_errors) -> None:
    app.command("profile")(reports_errors(profile))
