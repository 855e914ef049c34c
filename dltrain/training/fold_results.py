"""What a k-fold run's directory holds, and how it is read: the folds' files and figures, apart from the driver
(folds.py) so that listing, plotting and loading a model need not import training.

    runs/cv/folds.csv        one row per finished fold, then the mean and the sample standard deviation (n - 1)
    runs/cv/fold-0/ ...      the folds' ordinary runs
    runs/cv/final/           the final run (training.final), whose last epoch's model stands for the k-fold run
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import statistics
from pathlib import Path

from ..errors import CheckpointError, RunDirError
from . import rundir as files

FOLDS = files.FOLDS  # written when the k-fold run's directory is created: it marks one
FINAL = files.FINAL
FIGURES = ("best_value", "best_epoch", "test_accuracy", "test_loss", "test_mae", "test_r2", "epochs",
           "seconds")  # averaged over folds (test_mae, test_r2: regression, in the data's units)
COLUMNS = ("fold", "stop_reason", "epochs", "best_epoch", "monitor", "best_value", "test_accuracy", "test_loss",
           "test_mae", "test_r2", "seconds", "run_dir")
FOLD_KEYS = ("fold", "stop_reason", "epochs_run", "best_epoch", "monitor", "best_value", "test_accuracy", "test_loss",
             "test_mae", "test_r2", "total_seconds", "run_dir")  # what summary.json keeps of each fold's summary
UNFINISHED = ("interrupted", "failed")  # a fold that ended so is run again (resumed from its last checkpoint)


def fold_dir(path: str | Path, index: int) -> Path:
    return Path(path) / f"fold-{index}"


def is_cross_validation(path: Path) -> bool:
    """Whether `path` is the directory of a k-fold run (training/folds.py), not one of its folds."""
    return (Path(path) / files.FOLDS).is_file() and (Path(path) / files.CONFIG).is_file()


def final_checkpoint(path: Path) -> Path:
    """The model of a k-fold run's final run (its last epoch's, which its summary's test metrics are of); a
    CheckpointError saying what to do when there is none, or it has not finished."""
    final = Path(path) / FINAL
    summary = None
    with contextlib.suppress(RunDirError):
        summary = files.RunDir(final, writable=False).read_summary()
    if not final.is_dir():
        raise CheckpointError(f"{path}: a k-fold run keeps one model per fold and no final run: give one fold's run "
                              f"directory ({Path(path) / 'fold-0'}, ...), or add one model trained on all the training "
                              f"data: dltrain train --resume {path} --final")
    if summary is None or summary.get("stop_reason") in (*UNFINISHED, "diverged"):
        how = f"it ended {summary['stop_reason']}" if summary else "it has not finished"
        raise CheckpointError(f"{path}: the k-fold run's final run ({final}) is not a trained model: {how}; "
                              f"continue it with dltrain train --resume {path}")
    return final / files.LAST


def _value(summary: dict, figure: str):
    return summary.get("epochs_run") if figure == "epochs" else summary.get(
        "total_seconds" if figure == "seconds" else figure)


def mean_and_std(values: list) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1) of the numbers among `values`; the std of one is None."""
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if not numbers:
        return None, None
    return statistics.fmean(numbers), statistics.stdev(numbers) if len(numbers) > 1 else None


def fold_figures(results: list[dict]) -> dict:
    """{figure: (mean, std)} over the folds' summaries, for FIGURES."""
    return {figure: mean_and_std([_value(r, figure) for r in results]) for figure in FIGURES}


def fold_rows(results: list[dict]) -> list[dict]:
    """folds.csv's rows: one per fold, then 'mean' and 'std' (blank where a figure is missing or there is one fold)."""
    rows = [{"fold": r["fold"], "stop_reason": r.get("stop_reason"), "epochs": r.get("epochs_run"),
             "best_epoch": r.get("best_epoch"), "monitor": r.get("monitor"), "best_value": r.get("best_value"),
             "test_accuracy": r.get("test_accuracy"), "test_loss": r.get("test_loss"), "test_mae": r.get("test_mae"),
             "test_r2": r.get("test_r2"), "seconds": r.get("total_seconds"), "run_dir": r["run_dir"]} for r in results]
    figures = fold_figures(results)
    for position, label in ((0, "mean"), (1, "std")):
        row = {"fold": label, "monitor": rows[0]["monitor"] if rows else None}
        row.update({figure: figures[figure][position] for figure in FIGURES})
        rows.append(row)
    return rows


def write_folds(run: files.RunDir, results: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    if results:
        writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in fold_rows(results)])
    run.write(FOLDS, text.getvalue().encode())


def read_folds(path: str | Path) -> list[dict]:
    """folds.csv's fold rows (not mean and std) as strings; RunDirError naming the file when it is not that CSV."""
    file = Path(path) / FOLDS
    text = files.read_text(file, "expected the CSV a k-fold run writes")
    try:
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
    except csv.Error as exc:
        raise RunDirError(f"{file}: not a readable CSV ({exc})") from None
    if reader.fieldnames is not None and "fold" not in reader.fieldnames:
        header = ",".join(reader.fieldnames)
        raise RunDirError(f"{file}: expected a CSV with a fold column, found the header {header!r}")
    return [row for row in rows if row.get("fold", "").isdigit()]


def describe(summary: dict) -> str:
    """'val_accuracy 0.8812 ± 0.0031 over 5 folds': the figure a k-fold run is judged by."""
    if summary.get("best_value") is None:
        return f"no {summary.get('monitor')} over {summary.get('folds_run', 0)} folds"
    std = summary.get("best_value_std")
    return (f"{summary['monitor']} {summary['best_value']:.4f}" + (f" ± {std:.4f}" if std is not None else "")
            + f" over {summary['folds_run']} fold{'s' if summary['folds_run'] != 1 else ''}")
