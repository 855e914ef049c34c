"""Learning curves from metrics.csv: loss, accuracy (or, for regression, the validation MAE) and learning rate
against epoch; the learning rate of every optimizer step from lr.csv, where the run wrote one.

Reads only what runs wrote; copes with runs that have no validation, no accuracy or one epoch. A file that cannot be
read (not UTF-8, not the CSV or JSON it should be, a word where a number belongs) is a RunDirError naming it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DltrainError
from .fold_results import is_cross_validation
from .rundir import CURVES, LEARNING_RATES, METRICS, RunDir, atomic_write
from .runs import metric_value, numbers_checked

FIGSIZE = (15, 4.5)  # inches; at DPI this gives a 1500 x 450 PNG
DPI = 100


def _column(path: Path, rows: list[dict], key: str) -> list[float | None]:
    return [metric_value(path, r, key) for r in rows]


def _fold_runs(path) -> list:
    """A k-fold run's directory stands for its folds' runs (fold-0, fold-1, ...: each a curve); others for
    themselves."""
    if not is_cross_validation(Path(path)):
        return [path]
    folds = [p for p in Path(path).iterdir() if p.is_dir() and p.name.startswith("fold-") and p.name[5:].isdigit()]
    if not folds:
        raise DltrainError(f"{path}: a k-fold run with no fold run yet (no fold-0)")
    return sorted(folds, key=lambda p: int(p.name[5:]))


def plot_runs(run_dirs: list, out: Path | None = None) -> Path:
    """Draw every run's curves (overlaid, one colour per run) into one PNG; return its path."""
    expanded = [fold for path in run_dirs for fold in _fold_runs(path)]
    out = Path(out) if out else Path(run_dirs[0]) / CURVES if expanded != list(run_dirs) else None
    fig = curves_figure(expanded)
    return _save_png(fig, out or Path(expanded[0]) / CURVES)


def _learning_rates(run: RunDir, rows: list[dict]) -> list[tuple[float, float]]:
    """(epoch, rate) points: every optimizer step's from lr.csv (step k of n in epoch e at e - 1 + k / n), and
    metrics.csv's one per epoch for the epochs lr.csv lacks (runs from before it, or resumed from one)."""
    path = run.file(LEARNING_RATES)
    steps: dict[int, float] = {}  # epoch -> its number of steps
    step_rows = numbers_checked(path, run.read_table(LEARNING_RATES))
    for row in step_rows:
        steps[int(row["epoch"])] = max(steps.get(int(row["epoch"]), 1.0), float(row.get("step") or 1))
    points = [(int(r["epoch"]) - 1 + float(r.get("step") or 1) / steps[int(r["epoch"])], float(r["lr"]))
              for r in step_rows if r.get("lr")]
    epochs = [int(r["epoch"]) for r in rows]
    points += [(e, v) for e, v in zip(epochs, _column(run.file(METRICS), rows, "lr")) if v is not None
               and e not in steps]
    return sorted(points)


def _recorded(runs: list, column: str) -> bool:
    return any(row.get(column) for _, rows, _ in runs for row in rows)


def curves_figure(run_dirs: list):
    """The figure of plot_runs (loss, accuracy or MAE, learning rate axes) for run directories, not k-fold ones."""
    import matplotlib  # noqa: PLC0415 (slow import, only for plotting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    runs = []
    for path in run_dirs:
        run = RunDir(path)
        if not run.path.is_dir():
            raise DltrainError(f"{path}: not a run directory")
        rows = run.read_metrics()
        if not rows:
            raise DltrainError(f"{run.file('metrics.csv')}: no epochs recorded yet (missing or empty metrics.csv)")
        numbers_checked(run.file(METRICS), rows)  # a word in any column is named before anything is drawn
        runs.append((run, rows, run.read_summary() or {}))

    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=FIGSIZE, dpi=DPI)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # the middle panel: accuracy, or for runs that have none (regression) the validation MAE in the data's units
    middle = ("accuracy" if _recorded(runs, "train_accuracy") or _recorded(runs, "val_accuracy")
              else "mae" if _recorded(runs, "val_mae") else None)
    for i, (run, rows, summary) in enumerate(runs):
        colour = colours[i % len(colours)]
        label = run.path.name if len(runs) > 1 else ""
        epochs = [int(r["epoch"]) for r in rows]
        for ax, metric in ((ax_loss, "loss"), (ax_acc, middle)) if middle else ((ax_loss, "loss"),):
            for split, style in (("train", "-"), ("val", "--")):
                values = _column(run.file(METRICS), rows, f"{split}_{metric}")
                points = [(e, v) for e, v in zip(epochs, values) if v is not None]
                if points:
                    ax.plot(*zip(*points), style, color=colour, marker="o" if len(points) == 1 else None,
                            label=f"{label} {split}".strip())
        lrs = _learning_rates(run, rows)
        if lrs:
            ax_lr.plot(*zip(*lrs), color=colour, marker="o" if len(lrs) == 1 else None, label=label or None)
        _mark_best(summary, run.file(METRICS), rows, epochs, ax_loss, ax_acc, colour)
    ax_loss.set_title("loss")
    ax_acc.set_title("validation MAE (data units)" if middle == "mae" else "accuracy")
    ax_lr.set_title("learning rate")
    if middle is None:
        ax_acc.text(0.5, 0.5, "no accuracy recorded\n(regression loss)", ha="center", va="center",
                    transform=ax_acc.transAxes, color="grey")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no ticks at epoch 1.2, 1.4, ...
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return fig


def _save_png(fig, out: Path) -> Path:
    """The figure as a PNG written atomically (a crash never leaves half an image)."""
    import io  # noqa: PLC0415

    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    try:
        atomic_write(out, buffer.getvalue())
    except OSError as exc:
        raise DltrainError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _mark_best(summary: dict, metrics: Path, rows, epochs, ax_loss, ax_acc, colour) -> None:
    """A star on the monitored curve at the best epoch, and a dotted line across the loss panel."""
    best, monitor = summary.get("best_epoch"), summary.get("monitor")
    if best is None or monitor is None or best not in epochs:
        return
    value = _column(metrics, rows, monitor)[epochs.index(best)]
    if value is None:
        return
    if monitor.endswith("r2"):
        return  # no panel draws R²
    ax = ax_acc if monitor.endswith(("accuracy", "mae")) else ax_loss  # middle panel: accuracy, or the MAE
    ax.plot([best], [value], marker="*", markersize=14, color=colour, linestyle="none",
            label=f"best ({monitor}, epoch {best})")
    ax_loss.axvline(best, color=colour, linestyle=":", alpha=0.6)


def plot_gradients(run_dirs: list, out: Path | None = None) -> Path:
    """Weight-gradient norm of every layer against its depth, log scale, one line per epoch (gradients.csv)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from .rundir import GRADIENT_PLOT, GRADIENTS  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(run_dirs), figsize=(6.5 * len(run_dirs), 4.5), dpi=DPI, squeeze=False)
    for ax, path in zip(axes[0], run_dirs):
        run = RunDir(path)
        rows = run.read_table(GRADIENTS)
        if not rows:
            raise DltrainError(f"{run.file(GRADIENTS)}: no gradient norms recorded (train with "
                               "training.log_gradients: true)")
        columns = [c for c in rows[0] if c.endswith(".weight_grad")]
        depth = list(range(1, len(columns) + 1))
        colours = plt.get_cmap("viridis")
        for i, row in enumerate(rows):
            values = [max(metric_value(run.file(GRADIENTS), row, c) or 0.0, 1e-30) for c in columns]
            ax.plot(depth, values, marker="o", markersize=3, color=colours(i / max(len(rows) - 1, 1)),
                    label=f"epoch {row['epoch']}" if i in (0, len(rows) - 1) else None)
        ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("layer with a weight matrix or kernel (input side = 1)")
        ax.set_ylabel("mean L2 norm of the weight gradient")
        ax.set_title(run.path.name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    return _save_png(fig, Path(out) if out else RunDir(run_dirs[0]).file(GRADIENT_PLOT))
