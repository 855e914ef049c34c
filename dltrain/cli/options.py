"""Options several commands share."""

from __future__ import annotations

import typer

CODE_OPTION = typer.Option([], "--code", metavar="FILE",
                           help="A Python file whose registrations (layers, losses, optimizers, "
                                "schedules, datasets, callbacks) the config may name (repeatable).")

TTA_OPTION = typer.Option([], "--tta", metavar="VIEW",
                          help="Average the predictions over the inputs and this view of them "
                               "(horizontal_flip, vertical_flip, shift_up, shift_down, shift_left, "
                               "shift_right; repeatable), instead of the config's "
                               "data.test_time_augment.")
NO_TTA_OPTION = typer.Option(False, "--no-tta", help="The network's own predictions, without the config's "
                                                     "data.test_time_augment.")


def chosen_views(tta: list[str], no_tta: bool) -> list[str] | None:
    """What --tta / --no-tta ask for: these views, none ([]), or the config's (None)."""
    if tta and no_tta:
        from ..errors import ConfigError  # noqa: PLC0415

        raise ConfigError(f"--tta {' '.join(tta)} and --no-tta: give one of them")
    return [] if no_tta else (tta or None)
