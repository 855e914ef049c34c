"""dltrain export CHECKPOINT_OR_RUN_DIR [--format onnx] [--out model.onnx] [--opset N]"""

from __future__ import annotations

from pathlib import Path

import typer

from .interrupts import stops_cleanly
from .options import CODE_OPTION


def export(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT",
                                      help="A .safetensors checkpoint, or a run directory (uses its best)."),
    format_: str = typer.Option("onnx", "--format", metavar="FORMAT", help="Export format: onnx."),
    out: Path | None = typer.Option(None, "--out", metavar="FILE",
                                    help="The file to write (default: the checkpoint's name, .onnx)."),
    opset: int = typer.Option(17, "--opset", metavar="N", help="ONNX operator set version (13 or newer)."),
    code: list[Path] = CODE_OPTION,
) -> None:
    """Export a trained model to ONNX (normalization folded in, dynamic batch), checked by onnx's checker."""
    from ..errors import ConfigError  # noqa: PLC0415
    from ..export.onnx import export_checkpoint  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415

    load_code(code)
    if format_ != "onnx":
        raise ConfigError(f"--format: expected 'onnx', got {format_!r}")
    with stops_cleanly(out or "the .onnx file"):
        path = export_checkpoint(checkpoint, out, opset)
    print(path)


def register(app: typer.Typer, reports_errors) -> None:
    app.command("export")(reports_errors(export))
