"""The `dltrain` command. Each command lives in its own module and imports its work lazily,
so `dltrain --help` answers at once.

Exit codes: 0 done, 1 run failed (diverged), 2 bad usage / config / data / files, 130 interrupted (Ctrl-C),
141 output closed (a pipe's reader went away), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import functools
import sys

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and plot deep learning models described by one YAML file.")

_state = {"debug": False, "silent": False}


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__  # noqa: PLC0415

        print(f"dltrain {__version__}")
        raise typer.Exit()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors."),
             version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print dltrain's version and exit.")) -> None:
    _state["debug"] = debug


def reports_errors(command):
    """Turn dltrain's errors into one clear line on stderr and the error's exit code (tracebacks with --debug)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from ..errors import DltrainError  # noqa: PLC0415

        try:
            return command(*args, **kwargs)
        except DltrainError as exc:
            if _state["debug"]:
                raise
            if not _state["silent"]:
                print(str(exc) if exc.exit_code in (130, 141, 143) else f"error: {exc}", file=sys.stderr)  # stopped
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `dltrain ... | head`: the reader has what it wanted
            from ..training.reporting import silence_stdout  # noqa: PLC0415

            silence_stdout()
            raise typer.Exit(141) from None  # 128 + SIGPIPE, as a shell reports it
    return wrapper


def _register_commands() -> None:
    from . import eval as eval_command  # noqa: PLC0415
    from . import export, find_lr, graph, info, plot, predict, profile, runs, serve, train, tune  # noqa: PLC0415

    for module in (train, eval_command, predict, serve, plot, export, graph, info, profile, find_lr, tune, runs):
        module.register(app, reports_errors)


_register_commands()


def main() -> None:
    app()
