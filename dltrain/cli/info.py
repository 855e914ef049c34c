"""dltrain layers | losses | optimizers | schedules | datasets | devices, and dltrain check CONFIG."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from .options import CODE_OPTION


def plural(noun: str) -> str:
    """'losses', 'layers', 'schedules': a registry's kind, counted."""
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def _show_registry(kind: str, code, extra_note: str = "") -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from .. import registry  # noqa: PLC0415
    from ..config.schema import _import_registries, describe  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415

    load_code(code)
    _import_registries()
    reg = getattr(registry, kind)
    table = Table(title=plural(reg.kind), show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("parameters (type = default)")
    table.add_column("what it does")
    for name in reg.names():
        params = []
        for p in reg.params(name):
            default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
            params.append(f"{p.name}: {describe(p.annotation)} = {default}")
        table.add_row(name, "\n".join(params) or "-", reg.doc(name))
    console = Console()
    console.print(table)
    if extra_note:
        console.print(extra_note, highlight=False)


def layers(code: list[Path] = CODE_OPTION) -> None:
    """The layers a config's model list can use, with their parameters."""
    _show_registry("layers", code,
                   "Input sizes are never given: each layer learns its input shape when the model is built.")


def losses(code: list[Path] = CODE_OPTION) -> None:
    """The losses a config can name."""
    _show_registry("losses", code)


def optimizers(code: list[Path] = CODE_OPTION) -> None:
    """The optimizers a config can name."""
    _show_registry("optimizers", code)


def schedules(code: list[Path] = CODE_OPTION) -> None:
    """The learning-rate schedules, and the options every schedule takes."""
    from .. import registry  # noqa: PLC0415
    from ..config.schema import _import_registries, describe  # noqa: PLC0415

    _import_registries()  # the schedules are registered when their module is imported
    common = ", ".join(f"{p.name} ({describe(p.annotation)}, default {p.default!r})"
                       for p in registry.schedules.params("constant"))
    _show_registry("schedules", code, f"Every schedule also takes: {common}.")


def datasets(code: list[Path] = CODE_OPTION) -> None:
    """The built-in datasets, and the options every dataset takes."""
    from ..config.schema import DataConfig, dataclass_params, describe  # noqa: PLC0415

    common = ", ".join(f"{p.name} ({describe(p.annotation)}, default {p.default!r})"
                       for p in dataclass_params(DataConfig) if p.name != "name")
    _show_registry("datasets", code, f"Every dataset also takes: {common}.")


def augmentations(code: list[Path] = CODE_OPTION) -> None:
    """The augmentations a config's data.augment list can use (training batches only)."""
    _show_registry("augmentations", code, "Applied in order to each training batch, on its device; never to "
                                         "validation, test, eval or predict.")


def devices() -> None:
    """What this machine can train on: the CPU, the GPUs CuPy sees (or why none), NCCL and MPI."""
    import importlib.util  # noqa: PLC0415

    from .. import backend  # noqa: PLC0415

    gpus = backend.gpu_descriptions()
    versions = backend.library_versions()
    print(f"cpu: NumPy {versions['numpy']}")
    if gpus:
        nccl = "NCCL available" if backend.nccl_module() is not None else "no NCCL (pip install nvidia-nccl-cu13)"
        print(f"gpu: CuPy {versions.get('cupy', 'unknown')}, {nccl}")
        for line in gpus:
            print(f"  gpu {line}")
    else:
        print(f"gpu: none usable: {backend.gpu_unavailable_reason()}")
    if importlib.util.find_spec("mpi4py") is not None:
        print("mpi: mpi4py installed; launch with: mpiexec -n N dltrain train CONFIG")
    else:
        print("mpi: mpi4py not installed (pip install 'dltrain[mpi]' for several processes or machines)")
    print(f"device: auto trains on the {'gpu' if gpus else 'cpu'} here")


def check(
    config: Path = typer.Argument(..., metavar="CONFIG", help="The YAML config to check."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config key (repeatable)."),
    code: list[Path] = CODE_OPTION,
) -> None:
    """Validate a config, load its data and print the model summary, without training."""
    from ..config import load_config  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415
    from ..training.model import build_for  # noqa: PLC0415

    load_code(code)
    cfg = load_config(config, set_)
    built = build_for(cfg)
    model, splits = built.model, built.splits
    sizes = ", ".join(f"{name} {len(s)}" for name, s in (("train", splits.train), ("val", splits.val),
                                                          ("test", splits.test)) if s is not None)
    print(f"{config}: valid. data {cfg.data['name']}: {sizes}; per-sample input {splits.input_shape}")
    print(model.network.summary())


def register(app: typer.Typer, reports_errors) -> None:
    for command in (layers, losses, optimizers, schedules, datasets, augmentations, devices):
        app.command(command.__name__)(reports_errors(command))
    app.command("check")(reports_errors(check))
