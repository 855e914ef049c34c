"""dltrain graph CONFIG_OR_CHECKPOINT [--out FILE.svg|.png|.dot] [--backward] [--ops]"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import typer

from .options import CODE_OPTION


def graph(
    source: Path = typer.Argument(..., metavar="CONFIG_OR_CHECKPOINT",
                                  help="A YAML config, a .safetensors checkpoint or a run directory."),
    out: Path | None = typer.Option(None, "--out", metavar="FILE",
                                    help="FILE.svg, FILE.png or FILE.dot (default <name>-graph.svg)."),
    backward: bool = typer.Option(False, "--backward", help="Also run backward; label edges with gradient norms."),
    ops: bool = typer.Option(False, "--ops", help="One node per op (grouped by layer) instead of one box per layer."),
    batch: int = typer.Option(4, "--batch", min=1, metavar="N", help="Samples in the recorded batch."),
    code: list[Path] = CODE_OPTION,
) -> None:
    """Draw the autodiff graph of one forward (and backward) pass of a model on a small batch."""
    from ..errors import DltrainError  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415
    from ..training.graph import record, to_dot  # noqa: PLC0415

    load_code(code)
    model, split = _model_and_data(source)
    graph_data = record(model, split.x[:batch], split.y[:batch], backward=backward)
    dot_text = to_dot(graph_data, ops=ops, backward=backward)
    out = out or Path(f"{source.stem or source.name}-graph.svg")
    if out.suffix not in (".svg", ".png", ".dot"):
        raise DltrainError(f"--out {out}: expected a .svg, .png or .dot file name")
    dot_file = out.with_suffix(".dot")
    dot_file.write_text(dot_text)
    if out.suffix == ".dot":
        print(out)
        return
    dot = shutil.which("dot")
    if dot is None:
        print(f"{dot_file}\nGraphviz's dot is not installed, so the graph was written as text; render it with "
              f"`dot -T{out.suffix[1:]} {dot_file} -o {out}` (apt-get install graphviz)")
        return
    rendered = subprocess.run([dot, f"-T{out.suffix[1:]}", str(dot_file), "-o", str(out)], capture_output=True,
                              text=True)
    if rendered.returncode != 0:
        raise DltrainError(f"dot could not render {dot_file}: {rendered.stderr.strip()}")
    dot_file.unlink()
    print(out)


def _model_and_data(source: Path):
    """A training Model with its weights (from a checkpoint) or freshly initialised (from a config), and its data."""
    from ..config import config_from_dict, load_config  # noqa: PLC0415
    from ..training.checkpoint import load_checkpoint, resolve_checkpoint  # noqa: PLC0415
    from ..training.model import build_for  # noqa: PLC0415

    checkpoint = None
    if source.is_dir() or source.suffix == ".safetensors":
        checkpoint = load_checkpoint(resolve_checkpoint(source))
        config = config_from_dict(checkpoint.config, f"{checkpoint.path} (config)")
    else:
        config = load_config(source)
    built = build_for(config, "cpu", checkpoint)
    if checkpoint is not None:
        built.model.network.load_state_dict(checkpoint.model)
    return built.model, built.splits.train


def register(app: typer.Typer, reports_errors) -> None:
    app.command("graph")(reports_errors(graph))
