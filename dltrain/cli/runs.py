"""dltrain runs [DIR...] [--sort KEY] [--where KEY=VALUE]... [--json]   and   dltrain diff RUN_A RUN_B"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .output import print_table


def runs(
    directories: list[Path] = typer.Argument(None, metavar="DIR",
                                             help="Folders to search for run directories (default runs/)."),
    sort: str | None = typer.Option(None, "--sort", metavar="KEY",
                                    help="Sort by a column or config key; -KEY for descending."),
    where: list[str] = typer.Option([], "--where", metavar="KEY=VALUE",
                                    help="Keep runs whose column or config key has this value: "
                                         "status=completed, optimizer.name=adam (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON and nothing else."),
    folds: bool = typer.Option(False, "--folds", help="List the runs of each k-fold run's folds too (RUN/fold-i) "
                                                      "after its row of means."),
) -> None:
    """A table of run directories: status, epochs, best value, test accuracy, time, speed.

    A file that cannot be read is named in a note on stderr (--json: in the row's `problems`); the other runs and
    files are listed."""
    from ..errors import ConfigError  # noqa: PLC0415
    from ..training.runs import find_runs, matches, run_row, sort_key  # noqa: PLC0415

    roots = list(directories or [Path("runs")])
    for condition in where:
        if "=" not in condition:
            raise ConfigError(f"--where {condition}: expected KEY=VALUE, e.g. status=completed or optimizer.lr=0.01")
    rows = []
    for root in roots:
        rows += [run_row(path, root) for path in find_runs([root], folds=folds)]
    rows = [row for row in rows if all(matches(row, condition) for condition in where)]
    if sort:
        rows.sort(key=sort_key(sort.lstrip("-")), reverse=sort.startswith("-"))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no run directories in {', '.join(map(str, roots))}" + (" matching --where" if where else ""))
        return
    header = ["run", "started", "device", "status", "epochs", "best", "test", "seconds", "samples/s"]
    lines = [[row["run"], row["started"][:19].replace("T", " "), str(row["device"] or ""), row["status"],
              _epochs(row), _best(row), _test(row), _number(row["seconds"], ".1f"),
              _number(row["samples_per_second"], ",.0f")] for row in rows]
    print_table(header, lines, right=("epochs", "seconds", "samples/s"))
    for row in rows:
        for problem in row["problems"]:
            print(f"note: {problem}", file=sys.stderr)


def _epochs(row) -> str:
    """Epochs run; for a k-fold run, how many of its folds have finished."""
    if row.get("folds") is not None:
        return f"{row['folds_run']}/{row['folds']} folds"
    return str(row["epochs"])


def _best(row) -> str:
    if row["best_value"] is None:
        return ""
    if row.get("folds") is not None:  # the folds' mean, ± their standard deviation
        return f"{row['monitor']} {row['best_value']:.4f}" + _spread(row.get("best_std"))
    return f"{row['monitor']} {row['best_value']:.4f} @ {row['best_epoch']}"


def _test(row) -> str:
    """Test accuracy, or for regression the MAE in the data's units, else the loss; ± the folds' std."""
    from ..training.reporting import in_units  # noqa: PLC0415

    if row["test_accuracy"] is not None:
        return f"accuracy {row['test_accuracy']:.4f}" + _spread(row.get("test_accuracy_std"))
    if row.get("test_mae") is not None:
        std = row.get("test_mae_std")
        return f"MAE {in_units(row['test_mae'])}" + (f" ± {in_units(std)}" if std is not None else "")
    return f"loss {row['test_loss']:.4f}" + _spread(row.get("test_loss_std")) if row["test_loss"] is not None else ""


def _spread(std) -> str:
    return "" if std is None else f" ± {std:.4f}"


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def diff(
    run_a: Path = typer.Argument(..., metavar="RUN_A", help="A run directory."),
    run_b: Path = typer.Argument(..., metavar="RUN_B", help="Another run directory."),
) -> None:
    """The config keys in which two runs differ, and their results side by side."""
    from ..errors import DltrainError, RunDirError  # noqa: PLC0415
    from ..training.runs import SUMMARY_FIGURES, differences, find_runs, read_config, run_row  # noqa: PLC0415

    for path in (run_a, run_b):
        if not (path.is_dir() and path in find_runs([path])):
            raise DltrainError(f"{path}: not a run directory (no config.yaml with metrics.csv or summary.json)")
    rows = [run_row(run_a), run_row(run_b)]
    for row in rows:
        if row["problems"]:
            raise RunDirError(row["problems"][0])
    changed = list(differences(read_config(run_a), read_config(run_b)))
    names = [str(run_a), str(run_b)]
    if changed:
        print_table(["config key", *names], [[key, _value(old), _value(new)] for key, old, new in changed])
    else:
        print("the configs are the same")
    print()
    print_table(["result", *names], [[figure, *(_value(row[figure]) for row in rows)] for figure in SUMMARY_FIGURES])


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)


def register(app: typer.Typer, reports_errors) -> None:
    app.command("runs")(reports_errors(runs))
    app.command("diff")(reports_errors(diff))
