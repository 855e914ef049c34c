"""Options several commands share."""

from __future__ import annotations

import typer

CODE_OPTION = typer.Option([], "--code", help="A Python file whose registrations (layers, losses, optimizers, "
                                              "schedules, datasets, callbacks) the config may name (repeatable).")
