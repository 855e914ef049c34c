"""Users' own layers, losses, optimizers, schedules, datasets and callbacks, without forking dltrain.

Two ways in, both explicit (a config file alone never runs code):

    dltrain train config.yaml --code my_parts.py    imports my_parts.py before the config is read
    [project.entry-points."dltrain.plugins"]        an installed package: each entry point is loaded (its module
    my_parts = "my_package.parts"                   imported) the first time a config is validated

The imported code registers its parts as dltrain's own are:

    from dltrain.registry import layers
    @layers.register("swish")
    class Swish(Module): ...
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

from .errors import UserCodeError

ENTRY_POINT_GROUP = "dltrain.plugins"
_loaded_files: dict[Path, object] = {}
_plugins_loaded = False


def load_code(paths) -> None:
    """Import each Python file once per process (a second call with the same file does nothing)."""
    for path in paths:
        path = Path(path)
        resolved = path.resolve()
        if resolved in _loaded_files:
            continue
        if not path.is_file():
            raise UserCodeError(f"--code {path}: no such file")
        if path.suffix != ".py":
            raise UserCodeError(f"--code {path}: expected a Python file ending in .py, "
                                f"found {path.suffix or 'no suffix'}")
        name = f"dltrain_code_{len(_loaded_files)}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, resolved)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 (any error in the user's file is reported the same way)
            del sys.modules[name]
            raise UserCodeError(f"--code {path}: importing it failed{_where(exc, resolved)}: "
                                f"{type(exc).__name__}: {exc}") from exc
        _loaded_files[resolved] = module


def load_plugins() -> None:
    """Load every installed `dltrain.plugins` entry point, once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001
            raise UserCodeError(f"plugin {entry.name!r} ({entry.value}, entry point group {ENTRY_POINT_GROUP!r}) "
                                f"failed to load: {type(exc).__name__}: {exc}") from exc


def _where(exc: BaseException, path: Path) -> str:
    """' at FILE:LINE' of the deepest frame inside the user's file, if any."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    if not frames and isinstance(exc, SyntaxError) and exc.lineno:
        return f" at {path}:{exc.lineno}"
    return f" at {path}:{frames[-1].lineno}" if frames else ""
