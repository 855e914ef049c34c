"""dltrain eval CHECKPOINT... [--split test|val|train] [--data PATH] [--json] [--plots [--plots-dir DIR]]
[--tta VIEW ... | --no-tta]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .options import CODE_OPTION, NO_TTA_OPTION, TTA_OPTION, chosen_views


def evaluate(
    checkpoints: list[Path] = typer.Argument(..., metavar="CHECKPOINT",
                                             help="A .safetensors checkpoint, a run directory (its best checkpoint) "
                                                  "or an exported .onnx model; several are evaluated in turn."),
    split: str = typer.Option("test", "--split", metavar="SPLIT", help="Which split to evaluate: test, val or train."),
    data: Path | None = typer.Option(None, "--data", metavar="PATH",
                                     help="Evaluate on this data path instead of the config's."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per checkpoint, one a line (JSON "
                                                       "Lines), and nothing else."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu, gpu or auto."),
    plots: bool = typer.Option(False, "--plots", help="Also draw the results: confusion matrix, ROC and "
                                                      "precision-recall curves, or predicted against true."),
    plots_dir: Path | None = typer.Option(None, "--plots-dir", metavar="DIR",
                                          help="Where --plots writes (default: RUN/plots; one checkpoint only)."),
    tta: list[str] = TTA_OPTION,
    no_tta: bool = NO_TTA_OPTION,
    code: list[Path] = CODE_OPTION,
) -> None:
    """Test metrics from self-contained checkpoints: loss, accuracy, per-class scores, confusion matrix."""
    from .. import backend  # noqa: PLC0415
    from ..errors import ConfigError  # noqa: PLC0415
    from ..inference.evaluate import SPLITS, evaluate_checkpoint  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415

    load_code(code)
    if split not in SPLITS:
        raise ConfigError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if plots_dir is not None and len(checkpoints) > 1:
        raise ConfigError(f"--plots-dir {plots_dir}: one folder for {len(checkpoints)} checkpoints; give one "
                          "checkpoint, or --plots alone (each run's pictures go to RUN/plots)")
    views = chosen_views(tta, no_tta)
    _check_paths(checkpoints)  # a path that names no checkpoint stops the command before the first report
    resolved = backend.resolve_device(device)
    for i, checkpoint in enumerate(checkpoints):
        where = (plots_dir or _plots_dir(checkpoint)) if plots or plots_dir else None
        report = evaluate_checkpoint(checkpoint, split, data, resolved, plots=where, views=views)
        if as_json:  # JSON Lines: one object a line
            print(json.dumps(report), flush=True)
            continue
        if i:
            print()
        _print_report(report)
        for name, path in report.get("plots", {}).get("files", {}).items():
            print(f"{name}: {path}")
        sys.stdout.flush()


def _check_paths(checkpoints: list[Path]) -> None:
    """Each path a checkpoint, a run directory holding one or an .onnx file: CheckpointError for the first that is
    not, before anything is evaluated."""
    from ..errors import CheckpointError  # noqa: PLC0415
    from ..training.checkpoint import resolve_checkpoint  # noqa: PLC0415

    for path in checkpoints:
        onnx = path.suffix == ".onnx"
        if not (path if onnx else resolve_checkpoint(path)).exists():
            raise CheckpointError(f"{path}: {'exported model' if onnx else 'checkpoint'} not found")


def _plots_dir(checkpoint: Path) -> Path:
    """RUN/plots for a run directory or a checkpoint inside one, else beside the file."""
    if checkpoint.is_dir():
        return checkpoint / "plots"
    parent = checkpoint.parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "plots"


def _print_report(report: dict) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    head = f"{report['checkpoint']}  split {report['split']}  n {report['n']}  loss {report['loss']:.4f}"
    if "accuracy" in report:
        head += f"  accuracy {report['accuracy']:.4f}"
    if report.get("test_time_augment"):
        head += f"  (averaged with {', '.join(report['test_time_augment'])})"
    for key, label in (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²")):
        if report.get(key) is not None:
            head += f"  {label} {report[key]:.4g}"
    for key, label in (("roc_auc", "ROC AUC"), ("average_precision", "average precision")):
        if report.get("plots", {}).get(key) is not None:
            head += f"  {label} {report['plots'][key]:.4f}"
    console.print(head, highlight=False)
    if "per_class" not in report:
        return
    scores = Table(title="per class")
    for column in ("class", "precision", "recall", "f1", "support"):
        scores.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        scores.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                       str(row["support"]))
    console.print(scores)
    # the heading outside the table: a title would wrap to the width of a small matrix
    console.print("confusion matrix (rows: true class, columns: predicted)", highlight=False)
    matrix = Table()
    matrix.add_column("")
    names = [row["class"] for row in report["per_class"]]
    for i in range(len(names)):
        matrix.add_column(str(i), justify="right")
    for i, counts in enumerate(report["confusion_matrix"]):
        label = str(i) if names[i] == str(i) else f"{i} {names[i]}"  # unnamed classes are their index
        matrix.add_row(label, *(str(c) for c in counts))
    console.print(matrix)


def register(app: typer.Typer, reports_errors) -> None:
    app.command("eval")(reports_errors(evaluate))
