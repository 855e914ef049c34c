"""What the user sees while training: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def silence_stdout() -> None:
    """After the reader of our output went away (EPIPE, `dltrain ... | head`): standard output goes to /dev/null at
    the descriptor, so the rest of the run, and Python's flush at exit, write nowhere instead of failing again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real descriptor (a test's captured stream)
        pass
    finally:
        os.close(devnull)


def in_units(value: float) -> str:
    """A figure in the data's units (an MAE) to four significant digits, never in exponent form: 47.64, 0.003125,
    23,461 (house prices)."""
    if value != 0 and abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}" if value == 0 or abs(value) >= 1e-4 else f"{value:.2e}"


def format_row(row: dict, epochs: int) -> str:
    """One epoch's line; a regression's validation MAE (in the data's units) and R² as `dltrain eval` writes them."""
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}"]
    for key, label, spec in (("train_loss", "loss", ".4f"), ("train_accuracy", "acc", ".4f"),
                             ("val_loss", "val_loss", ".4f"), ("val_accuracy", "val_acc", ".4f"),
                             ("val_mae", "val_mae", None), ("val_r2", "val_r2", ".4f")):
        if row.get(key) not in (None, ""):
            parts.append(f"{label} {float(row[key]):{spec}}" if spec else f"{label} {in_units(float(row[key]))}")
    parts.append(f"lr {float(row['lr']):.4g}")
    parts.append(f"{float(row['seconds']):.1f}s")
    return "  ".join(parts)


class PlainReporter:
    """One line per epoch, no control characters (CI logs, pipes)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def start(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs = epochs

    def batch(self, epoch: int, step: int, running_loss: float, samples_per_second: float) -> None:
        pass

    def epoch_end(self, row: dict, is_best: bool) -> None:
        print(format_row(row, self.epochs) + ("  *" if is_best else ""), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichReporter(PlainReporter):
    """A live progress bar for the current epoch (batch, running loss, samples/s, ETA) below the epoch lines."""

    def __init__(self, console: Console | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

        self.console = console or Console()
        self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:,.0f} samples/s"),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.task = None
        self.current_epoch = None

    def start(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.task = self.progress.add_task("train", total=steps_per_epoch, epoch="", loss=0.0, speed=0.0)
        self.progress.start()

    def batch(self, epoch: int, step: int, running_loss: float, samples_per_second: float) -> None:
        if epoch != self.current_epoch:
            self.current_epoch = epoch
            self.progress.reset(self.task, total=self.steps, epoch=f"{epoch}/{self.epochs}", loss=0.0, speed=0.0)
        self.progress.update(self.task, completed=step, loss=running_loss, speed=samples_per_second)

    def epoch_end(self, row: dict, is_best: bool) -> None:
        self.progress.console.print(format_row(row, self.epochs) + ("  [green]*best[/green]" if is_best else ""),
                                    highlight=False)

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool = False):
    if quiet:
        return SilentReporter()
    return RichReporter() if sys.stdout.isatty() else PlainReporter()


class SilentReporter(PlainReporter):
    def epoch_end(self, row: dict, is_best: bool) -> None:
        pass

    def message(self, text: str) -> None:
        pass
