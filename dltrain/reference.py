"""The reference pages of the documentation, written from the code itself: every registry entry with its parameters
(name, type, default, constraint) and its docstring, and every command with its options, from the Typer app. The docs
site's build (docs/hooks/reference.py) calls these, so a new parameter or command appears without anyone editing
docs/.

    python -m dltrain.reference layers      # the page's Markdown on stdout
"""

from __future__ import annotations

import inspect
import sys

from . import registry
from .config.schema import _import_registries, describe

# page name -> (registry attribute, title, what the page is for)
REGISTRIES = {
    "layers": ("layers", "Layers", "What a config's `model:` list can hold: `- relu`, or `- linear: {units: 10}`. "
                                   "Input sizes are never given: each layer learns its input shape when the model "
                                   "is built."),
    "losses": ("losses", "Losses", "What `loss:` can name: `loss: cross_entropy`, or `loss: {name: cross_entropy, "
                                   "label_smoothing: 0.1}`."),
    "optimizers": ("optimizers", "Optimizers", "What `optimizer:` can name: `optimizer: {name: sgd, lr: 0.1, "
                                               "momentum: 0.9}`."),
    "schedules": ("schedules", "Learning-rate schedules", "What `schedule:` can name: `schedule: {name: cosine, "
                                                          "warmup_epochs: 1}`."),
    "datasets": ("datasets", "Datasets", "What `data:` can name, with each data set's own options beside the ones "
                                         "every data set takes (`val_fraction`, `test_path`, `normalize`, `augment`, "
                                         "...: see the config page)."),
    "augmentations": ("augmentations", "Augmentations", "What `data.augment` can list, applied in order to "
                                                        "training batches: `- random_crop: {padding: 4}`."),
    "callbacks": ("callbacks", "Callbacks", "What `callbacks:` can list. dltrain ships none beyond its built-in ones "
                                            "(checkpoints, early stopping, metrics, trackers); a file given with "
                                            "`--code` or an installed plugin registers its own."),
    "initializers": ("initializers", "Weight initializers", "What a layer's `init` parameter can name."),
}


def _default(param: registry.Param) -> str:
    if param.required:
        return "required"
    return f"`{param.default!r}`"


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def registry_page(page: str) -> str:
    """The Markdown of one registry's reference page: each entry, its docstring and its parameters."""
    _import_registries()
    attribute, title, intro = REGISTRIES[page]
    reg = getattr(registry, attribute)
    lines = [f"# {title}", "", intro, "", "*Generated from the code (`dltrain/reference.py`): each entry's signature "
             "and docstring.*", ""]
    names = reg.names()
    if not names:
        lines += ["None registered.", ""]
    lines += [" · ".join(f"[`{name}`](#{_anchor(name)})" for name in names), ""] if names else []
    for name in names:
        lines += [f"## `{name}`", "", inspect.getdoc(reg.get(name)) or "", ""]
        params = reg.params(name)
        if params:
            lines += ["| parameter | type | default |", "|---|---|---|"]
            lines += [f"| `{p.name}` | {_cell(describe(p.annotation))} | {_cell(_default(p))} |" for p in params]
        else:
            lines.append("No parameters.")
        lines.append("")
    return "\n".join(lines)


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "" for c in name.lower().replace(" ", "-"))


def cli_page() -> str:
    """The Markdown of the command-line reference: every command, its usage, its help and every option."""
    import typer  # noqa: PLC0415

    from .cli import app  # noqa: PLC0415

    group = typer.main.get_command(app)
    context = typer.Context(group, info_name="dltrain")
    lines = ["# Command line", "", "*Generated from the code (`dltrain/reference.py`): the commands and options as "
             "`dltrain COMMAND --help` gives them.*", "", f"`{group.get_usage(context).removeprefix('Usage: ')}`", "",
             inspect.cleandoc(group.help or ""), ""]
    lines += _options_table(group, context)
    names = group.list_commands(context)
    lines += ["", " · ".join(f"[`{name}`](#dltrain-{_anchor(name)})" for name in names), ""]
    for name in names:
        command = group.get_command(context, name)
        if command.hidden:
            continue
        sub = typer.Context(command, info_name=name, parent=context)
        lines += [f"## dltrain {name}", "", f"`{command.get_usage(sub).removeprefix('Usage: ')}`", "",
                  inspect.cleandoc(command.help or ""), ""]
        lines += _options_table(command, sub)
        lines.append("")
    return "\n".join(lines)


def _options_table(command, context) -> list[str]:
    rows = []
    for param in command.get_params(context):
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        if param.param_type_name == "argument":
            names = f"`{param.metavar or param.name.upper()}`"
        else:
            names = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
            if not getattr(param, "is_flag", False) and param.metavar:
                names += f" `{param.metavar}`"
        default = param.default
        shown = "" if default in (None, False, (), []) or callable(default) or param.required else f"`{default}`"
        text = (getattr(param, "help", None) or "") + (" (required)" if param.required else "")
        rows.append(f"| {_cell(names)} | {_cell(text)} | {_cell(shown)} |")
    return ["| argument or option | what it does | default |", "|---|---|---|", *rows] if rows else []


def main(argv: list[str]) -> None:
    page = argv[0] if argv else "layers"
    print(cli_page() if page == "cli" else registry_page(page))


if __name__ == "__main__":
    main(sys.argv[1:])
