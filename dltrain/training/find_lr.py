"""The learning-rate range test (Smith; fastai's and Lightning's lr_find): `dltrain find-lr CONFIG`.

Trains from the config's initial weights with a learning rate rising exponentially from `start` to `end`, one
training step (Trainer.train_step: the config's loss, clipping, augmentation) per rate, and records the loss,
smoothed (an exponential average with bias correction, weight 0.98 as fastai). It stops early once the smoothed loss
exceeds four times its minimum or is not finite. The suggestion is a tenth of the rate at which the smoothed loss
is lowest (fastai's lr_min): that rate is already on the edge of instability, and the steepest-slope rule some
tools use lands on the noise of the first steps when the loss is flat there. Nothing is written but the plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import backend
from ..errors import Diverged, DltrainError
from .steps import Batch

np = backend.np


@dataclass
class RangeTest:
    rates: list[float]
    losses: list[float]  # smoothed
    suggestion: float | None


def lr_range_test(trainer, start: float = 1e-7, end: float = 10.0, steps: int = 100, smoothing: float = 0.98,
                  skip_begin: int = 10) -> RangeTest:
    """Run the test on a set-up Trainer (its weights move; use a throwaway one)."""
    if not 0 < start < end:
        raise DltrainError(f"find-lr: expected 0 < --start < --end, got {start} and {end}")
    if steps < skip_begin + 3:
        raise DltrainError(f"find-lr: --steps {steps} is too few; at least {skip_begin + 3} are needed")
    train, size = trainer.splits.train, trainer.config.training.batch_size
    trainer.model.network.train()
    trainer.prepare_steps()
    trainer.tally.start_epoch()
    rates, losses = [], []
    average, best = 0.0, math.inf
    order = backend.to_device(backend.host_rng().permutation(len(train)), trainer.device)
    batches = max(1, len(train) // size)
    for i in range(steps):
        lr = start * (end / start) ** (i / (steps - 1))
        trainer.optimizer.lr = lr
        at = i % batches
        if at == 0 and i:
            order = backend.to_device(backend.host_rng().permutation(len(train)), trainer.device)
        idx = order[at * size:(at + 1) * size]
        x, y = train.x[idx], train.y[idx]
        if trainer.augment:
            x, y = trainer.augment(x, y)
        seen = trainer.tally.seen
        loss_sum = trainer.tally.loss_sum
        try:
            if not trainer.train_step(Batch(0, at % trainer.steps_per_epoch, lr, x, y, len(idx))):
                break
        except Diverged:
            break
        if hasattr(trainer.tally, "read_pending") and trainer.tally.pending:
            trainer.tally.read_pending()
        loss = (trainer.tally.loss_sum - loss_sum) / max(trainer.tally.seen - seen, 1)
        if not math.isfinite(loss):
            break
        average = smoothing * average + (1 - smoothing) * loss
        smoothed = average / (1 - smoothing ** (i + 1))
        rates.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > 4 * best and i > skip_begin:
            break
    return RangeTest(rates, losses, suggest(rates, losses, skip_begin))


def suggest(rates: list[float], losses: list[float], skip_begin: int = 10) -> float | None:
    """A tenth of the rate with the lowest smoothed loss (after the first steps), or None with too few points."""
    if len(losses) < skip_begin + 3:
        return None
    return rates[skip_begin + int(np.argmin(losses[skip_begin:]))] / 10


def plot_range_test(result: RangeTest, path, title: str) -> None:
    """Loss against learning rate (log scale), the suggestion marked; written atomically."""
    import io  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from .rundir import atomic_write  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.rates, result.losses, color="tab:blue")
    if result.suggestion is not None:
        lowest = result.rates[int(np.argmin(result.losses))]
        ax.axvline(lowest, color="tab:gray", linestyle=":", label=f"lowest loss at lr {lowest:.3g}")
        ax.axvline(result.suggestion, color="tab:red", label=f"suggested lr {result.suggestion:.3g}")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
