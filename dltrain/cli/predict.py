"""dltrain predict MODEL INPUT... [--out FILE] [--format csv|jsonl] [--top-k K] [--probabilities] [--skip-bad]
[--max-image-pixels N] [--escape-formulas] [--tta VIEW ... | --no-tta]"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..limits import DEFAULT_MAX_IMAGE_PIXELS
from .interrupts import stops_cleanly
from .options import CODE_OPTION, NO_TTA_OPTION, TTA_OPTION, chosen_views


def predict(
    model: Path = typer.Argument(..., metavar="MODEL",
                                 help="A run directory (its best checkpoint), a checkpoint or an exported .onnx."),
    inputs: list[Path] = typer.Argument(..., metavar="INPUT",
                                        help="Image files, folders of images, .csv, .npz (x) or IDX files; for "
                                             "a text model text files, folders of them, .csv with its text "
                                             "column(s), or - for lines on standard input (each line "
                                             "one text; an empty line is skipped)."),
    out: Path | None = typer.Option(None, "--out", metavar="FILE",
                                    help="Write here (atomically) instead of to stdout."),
    fmt: str = typer.Option("csv", "--format", metavar="FORMAT", help="csv or jsonl."),
    top_k: int = typer.Option(1, "--top-k", min=1, metavar="K",
                              help="Also the K best classes and their probabilities."),
    probabilities: bool = typer.Option(False, "--probabilities", help="One probability column per class."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, metavar="N", help="Inputs per batch."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu, gpu or auto."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images and texts (empty, not UTF-8, a "
                                                            "missing text cell); list them on stderr at the end."),
    max_image_pixels: int = typer.Option(DEFAULT_MAX_IMAGE_PIXELS, "--max-image-pixels", min=1, metavar="N",
                                         help="Refuse (or with --skip-bad skip) images of more pixels than this, "
                                              "read from their header before decoding."),
    escape_formulas: bool = typer.Option(False, "--escape-formulas",
                                         help="CSV: put a ' before text cells a spreadsheet would run as formulas "
                                              "(beginning with = + - @, a tab or a carriage return; not numbers)."),
    tta: list[str] = TTA_OPTION,
    no_tta: bool = NO_TTA_OPTION,
    code: list[Path] = CODE_OPTION,
) -> None:
    """Predict with a trained model on new inputs: one output row per input (CSV to stdout unless --out)."""
    from .. import backend  # noqa: PLC0415
    from ..errors import ConfigError  # noqa: PLC0415
    from ..inference.predict import predict as run_predict  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415

    load_code(code)
    if fmt not in ("csv", "jsonl"):
        raise ConfigError(f"--format {fmt}: expected csv or jsonl")
    views = chosen_views(tta, no_tta)
    resolved = "cpu" if model.suffix == ".onnx" else backend.resolve_device(device)
    with stops_cleanly(out), _progress() as progress:
        source = run_predict(model, inputs, out, fmt, top_k, probabilities, batch_size, resolved, skip_bad, progress,
                             views=views, max_image_pixels=max_image_pixels, escape_formulas=escape_formulas)
    for skipped in source.skipped:
        print(f"skipped {skipped.reason}", file=sys.stderr)
    if source.skipped:
        print(f"skipped {len(source.skipped)} unreadable file(s)", file=sys.stderr)


class _progress:
    """A progress line on stderr when it is a terminal (stdout may be the predictions); nothing otherwise."""

    def __enter__(self):
        self.bar = None
        if sys.stderr.isatty():
            from rich.console import Console  # noqa: PLC0415
            from rich.progress import Progress, TextColumn  # noqa: PLC0415

            self.bar = Progress(TextColumn("predicted {task.completed:,} inputs"), console=Console(stderr=True),
                                transient=True)
            self.task = self.bar.add_task("predict", total=None)
            self.bar.start()
        return self.update if self.bar else None

    def update(self, done: int) -> None:
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()


def register(app: typer.Typer, reports_errors) -> None:
    app.command("predict")(reports_errors(predict))
