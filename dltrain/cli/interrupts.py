"""Ctrl-C and SIGTERM while a command writes its one file (predict --out, export): the writer removes its temporary
file (it does on any exception), one line says so, and the exit code is 130 or 143, as for training."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def stops_cleanly(target=None):
    """Within this block SIGTERM stops the command as Ctrl-C does; either ends in Interrupted, whose message names
    `target` (the file not written), if given."""
    from ..errors import Interrupted, Terminated  # noqa: PLC0415
    from ..training.trainer import sigterm_interrupts  # noqa: PLC0415

    note = f": nothing written to {target}" if target is not None else ""
    try:
        with sigterm_interrupts():
            yield
    except Terminated:
        raise Interrupted(f"interrupted (SIGTERM){note}", 143) from None
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted (Ctrl-C){note}", 130) from None
