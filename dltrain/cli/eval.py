"""dltrain eval CHECKPOINT_OR_RUN_DIR [--split test|val|train] [--data PATH] [--json] [--plots [--plots-dir DIR]]
[--tta VIEW ... | --no-tta]"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .options import CODE_OPTION, NO_TTA_OPTION, TTA_OPTION, chosen_views


def evaluate(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint, or a run directory (uses its best)."),
    split: str = typer.Option("test", "--split", help="Which split to evaluate: test, val or train."),
    data: Path | None = typer.Option(None, "--data", help="Evaluate on this data path instead of the config's."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    device: str = typer.Option("cpu", "--device", help="cpu, gpu or auto."),
    plots: bool = typer.Option(False, "--plots", help="Also draw the results: confusion matrix, ROC and "
                                                      "precision-recall curves, or predicted against true."),
    plots_dir: Path | None = typer.Option(None, "--plots-dir", help="Where --plots writes (default: RUN/plots)."),
    tta: list[str] = TTA_OPTION,
    no_tta: bool = NO_TTA_OPTION,
    code: list[Path] = CODE_OPTION,
) -> None:
    """Test metrics from a self-contained checkpoint: loss, accuracy, per-class scores, confusion matrix."""
    from .. import backend  # noqa: PLC0415
    from ..errors import ConfigError  # noqa: PLC0415
    from ..inference.evaluate import SPLITS, evaluate_checkpoint  # noqa: PLC0415
    from ..plugins import load_code  # noqa: PLC0415

    load_code(code)
    if split not in SPLITS:
        raise ConfigError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    views = chosen_views(tta, no_tta)
    where = (plots_dir or _plots_dir(checkpoint)) if plots or plots_dir else None
    report = evaluate_checkpoint(checkpoint, split, data, backend.resolve_device(device), plots=where, views=views)
    if as_json:
        print(json.dumps(report))
        return
    _print_report(report)
    for name, path in report.get("plots", {}).get("files", {}).items():
        print(f"{name}: {path}")


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
