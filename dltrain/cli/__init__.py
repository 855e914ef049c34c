"""The `dltrain` command. Each command lives in its own module and imports its work lazily,
so `dltrain --help` answers at once.

Exit codes: 0 done, 1 run failed (diverged), 2 bad usage / config / data / files, 130 interrupted (Ctrl-C),
141 output closed (a pipe's reader went away), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import functools
import shlex
import sys

import typer

try:  # Typer 0.29 runs on a click of its own, whose exceptions these are
    from typer._click.exceptions import NoSuchOption
except ImportError:  # a Typer that runs on the click package
    from click.exceptions import NoSuchOption
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


class _Argument(TyperArgument):
    """An argument as click shows it: its metavar in the usage line (MODEL, [CONFIG], INPUT...) and in the help's
    name column, and no type beside it there (Typer 0.29 would add `<path>` or `<list[Path]>`: its type column
    ignores an argument's metavar)."""

    @property
    def display_name_raw(self) -> str:  # the help's name column, and 'Missing argument ...' messages
        return self.metavar + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx) -> None:
        return None

    def get_usage_pieces(self, ctx) -> list[str]:
        name = self.metavar if self.required else f"[{self.metavar}]"
        return [name + ("..." if self.nargs != 1 else "")]


class _PlainHelp:
    """--help as a Typer user expects it: a flag shows no type (not `<bool>`), an argument its metavar alone."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # the command's, --help, and the group's completion options
        for param in params:
            if isinstance(param, TyperArgument) and not isinstance(param, _Argument):
                param.metavar = param.metavar or param.name.upper()
                param.__class__ = _Argument  # the same object, shown as click shows arguments
            elif isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
        return params


class _Group(_PlainHelp, TyperGroup):
    pass


class _Command(_PlainHelp, TyperCommand):
    """A dltrain command; where it takes --set, an unknown option that names a config key says how to set it."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        given = list(args)  # the parser consumes `args`
        try:
            return super().parse_args(ctx, args)
        except NoSuchOption as exc:
            hint = None
            if any("--set" in param.opts for param in self.params):
                hint = config_key_hint(exc.option_name, given)
            if hint is None:
                raise
            # the hint instead of click's guesses at a similar option (--lr: '--help')
            raise NoSuchOption(exc.option_name, f"{exc.message}; {hint}", ctx=exc.ctx) from None


class _Typer(typer.Typer):
    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False,
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


def config_keys() -> list[str]:
    """Every key --set can change that has a value of its own (training.epochs, optimizer.lr, data.classes), and
    loss, optimizer and schedule as their .name; the registries' parameters for every name they hold."""
    import dataclasses  # noqa: PLC0415
    import typing  # noqa: PLC0415

    from .. import registry  # noqa: PLC0415
    from ..config.schema import Config, DataConfig, _import_registries, dataclass_params  # noqa: PLC0415

    _import_registries()
    keys = []

    def walk(cls, prefix: str) -> None:
        for param in dataclass_params(cls):
            inner = [a for a in (param.annotation, *typing.get_args(param.annotation))
                     if isinstance(a, type) and dataclasses.is_dataclass(a)]
            if inner:
                walk(inner[0], f"{prefix}{param.name}.")
            elif param.name not in ("data", "model", "callbacks", "loss", "optimizer", "schedule") or prefix:
                keys.append(prefix + param.name)

    walk(Config, "")
    walk(DataConfig, "data.")
    for section, reg in (("data", registry.datasets), ("loss", registry.losses), ("optimizer", registry.optimizers),
                         ("schedule", registry.schedules)):
        keys.append(f"{section}.name")
        keys += [f"{section}.{param.name}" for name in reg.names() for param in reg.params(name)]
    return list(dict.fromkeys(keys))


def config_key_hint(option: str, args: list[str]) -> str | None:
    """'to change the config's training.epochs write --set training.epochs=3' for `--epochs 3`, or None where the
    option names no config key. `--optimizer sgd` names optimizer.name (as loss and schedule do theirs)."""
    if not option.startswith("--"):
        return None
    name = option[2:].replace("-", "_").lower()
    try:
        known = config_keys()
    except Exception:  # noqa: BLE001 (a plugin that fails to import: click's own message is still true)
        return None
    keys = [key for key in known if key.rsplit(".", 1)[-1] == name
            or (key.endswith(".name") and key.split(".")[0] == name != "data")]
    if not keys:
        return None
    value = "VALUE"
    for i, arg in enumerate(args):
        if arg.startswith(option + "="):
            value = arg[len(option) + 1:]
            break
        if arg == option:
            following = args[i + 1] if i + 1 < len(args) else ""
            if following and not (following.startswith("-") and not _is_number(following)):
                value = following
            break
    sets = [f"--set {shlex.quote(f'{key}={value}')}" for key in keys]
    if len(keys) == 1:
        return f"to change the config's {keys[0]} write {sets[0]}"
    return f"to change the config's {_either(keys)} write {_either(sets)}"


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _register_commands() -> None:
    from . import eval as eval_command  # noqa: PLC0415
    from . import export, find_lr, graph, info, plot, predict, profile, runs, serve, train, tune  # noqa: PLC0415

    for module in (train, eval_command, predict, serve, plot, export, graph, info, profile, find_lr, tune, runs):
        module.register(app, reports_errors)


_register_commands()


def main() -> None:
    app()
