"""Training is a loop that calls hooks; what a run does beside stepping the optimizer lives in callbacks.

Keras's hook names, Lightning's `on_after_backward`. Every hook gets the Trainer; one sets
`trainer.stop_training = True` to end training after the current epoch (`trainer.stop_reason` says why).

    on_train_begin(trainer)
      on_epoch_begin(trainer, epoch)                  epochs count from 1
        on_layer_output(trainer, layer, output)       each top-level layer's output, training forward pass
        on_after_backward(trainer)                    gradients computed, before clipping and the update
        on_batch_end(trainer, step, logs)             logs: loss (running mean, None while unread), samples_per_second
      on_epoch_end(trainer, epoch, logs)              logs: the metrics.csv row; `is_best` set by early stopping
    on_train_end(trainer, summary)                    summary.json's contents (None if training failed before one)

The built-in callbacks run in the order below on every epoch end. That order keeps a crash between any two
writes resumable: a metrics row or a best checkpoint ahead of `last` is simply redone (identically) by the
resumed run, which starts after the epoch `last` holds.

    (WeightAveraging) -> EarlyStopping -> MetricsWriter -> LearningRateWriter -> GradientLogger
    -> CheckpointWriter (best, then last)
    -> ProgressReporter -> CurvesWriter -> the trackers (`training.loggers`, loggers.py)
    -> the config's own callbacks (`callbacks:`), in the order given
"""

from __future__ import annotations

import contextlib

from .. import backend
from ..errors import RunDirError
from ..registry import callbacks
from . import rundir as files
from .checkpoint import save_checkpoint
from .early_stopping import EarlyStopping as Tracker
from .gradients import GradientMonitor


class Callback:
    """Override the hooks you need; the Trainer calls `on_layer_output` and `on_after_backward` only on callbacks
    that override them (they run every step)."""

    def on_train_begin(self, trainer) -> None:
        pass

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        pass

    def on_layer_output(self, trainer, layer, output) -> None:
        pass

    def on_after_backward(self, trainer) -> None:
        pass

    def on_batch_end(self, trainer, step: int, logs: dict) -> None:
        pass

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        pass

    def on_train_end(self, trainer, summary: dict | None) -> None:
        pass


def overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


def _fmt(value) -> str:
    """Exact, shortest text of a float (so resumed and uninterrupted runs compare bit for bit)."""
    return "" if value is None else repr(float(value))


class EarlyStopping(Callback):
    """Decides whether this epoch is the best so far (`logs['is_best']`) and whether to stop; its state goes into
    every checkpoint so a resumed run continues it exactly."""

    def __init__(self, config):
        es = config.training.early_stopping
        self.tracker = Tracker(es.monitor, config.monitor_mode, es.patience, es.min_delta, es.start_from_epoch,
                               es.enabled)

    def on_epoch_end(self, trainer, epoch, logs):
        logs["is_best"], stop = self.tracker.update(epoch, logs)
        if trainer.comm.broadcast(stop):  # every rank stops together, as rank 0 decides
            t = self.tracker
            trainer.stop_training, trainer.stop_reason = True, "early_stopping"
            trainer.stop_message = (f"early stopping: {t.monitor} has not improved for {t.wait} epochs "
                                    f"(best {t.best:.6g} at epoch {t.best_epoch})")


class MetricsWriter(Callback):
    """metrics.csv: one row per epoch, floats written exactly; a resumed run keeps the rows of finished epochs."""

    def on_train_begin(self, trainer):
        trainer.run.start_metrics(keep_epochs=trainer.start_epoch)

    def on_epoch_end(self, trainer, epoch, logs):
        trainer.run.append_metrics({k: (v if k == "epoch" else _fmt(v)) for k, v in logs.items()
                                    if k in files.METRIC_COLUMNS})


class LearningRateWriter(Callback):
    """lr.csv: the rate of every optimizer step of the epoch (warmup and per-step schedules change it within one),
    in one write per epoch; a resumed run keeps the rows of finished epochs."""

    def on_train_begin(self, trainer):
        trainer.run.start_table(files.LEARNING_RATES, files.LR_COLUMNS, keep_epochs=trainer.start_epoch)

    def on_epoch_end(self, trainer, epoch, logs):
        trainer.run.append_rows(files.LEARNING_RATES, files.LR_COLUMNS,
                                [{"epoch": epoch, "step": step, "lr": _fmt(lr)}
                                 for step, lr in enumerate(trainer.epoch_lrs, start=1)])


class GradientLogger(Callback):
    """training.log_gradients: per-layer gradient norms, averaged over each epoch's steps -> gradients.csv."""

    def __init__(self, layers):
        self.monitor = GradientMonitor(layers)

    def on_train_begin(self, trainer):
        trainer.run.start_table(files.GRADIENTS, self.monitor.header(), keep_epochs=trainer.start_epoch)

    def on_epoch_begin(self, trainer, epoch):
        self.monitor.start_epoch()

    def on_layer_output(self, trainer, layer, output):
        self.monitor.watch(layer, output)

    def on_after_backward(self, trainer):
        self.monitor.after_backward()

    def on_epoch_end(self, trainer, epoch, logs):
        trainer.run.append_row(files.GRADIENTS, self.monitor.header(), self.monitor.epoch_row(epoch))


class WeightAveraging(Callback):
    """training.ema: after every optimizer step, average = decay * average + (1 - decay) * weights. Validation, the
    test and checkpoints' model/ use the average (checkpoints keep the trained weights under training/, for resume).
    Batchnorm's running statistics are averaged the same way (as timm's ModelEmaV2), so the averaged model
    normalizes with statistics that followed its own averaged weights, not only the last ones."""

    def __init__(self, decay: float):
        self.decay = decay
        self.average = None

    def restore(self, trainer, checkpoint) -> None:
        """Resume: the average is the checkpoint's model/, the weights being trained its training/."""
        if checkpoint.training is None:
            raise RunDirError(f"{checkpoint.path}: training.ema is on, but this checkpoint has no trained weights "
                              f"beside its average (it was written without training.ema)")
        names = list(trainer.model.network.state_dict())
        self.average = [backend.to_device(checkpoint.model[name], trainer.device) for name in names]
        trainer.model.network.load_state_dict(checkpoint.training)

    def on_train_begin(self, trainer):
        self.network = trainer.model.network
        if self.average is None:
            self.average = [a.copy() for a in self.arrays]
        self.steps_seen = trainer.global_step

    @property
    def arrays(self) -> list:
        """The model's weights and buffers, read afresh (the optimizer's first step makes them views of its flat
        buffer)."""
        return list(self.network.state_dict().values())

    def on_batch_end(self, trainer, step, logs):
        if trainer.global_step == self.steps_seen:  # a batch whose gradient waits for more (accumulate_steps)
            return
        self.steps_seen = trainer.global_step
        for average, live in zip(self.average, self.arrays):
            if backend.is_floating(live):
                average *= self.decay
                average += (1 - self.decay) * live

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the average inside this block, its trained weights again after it."""
        arrays = self.arrays
        kept = [a.copy() for a in arrays]
        try:
            for live, average in zip(arrays, self.average):
                live[...] = average
            yield kept
        finally:
            for live, saved in zip(arrays, kept):
                live[...] = saved

    def keep_average(self) -> None:
        """End of training: the model keeps the average."""
        for live, average in zip(self.arrays, self.average):
            live[...] = average


class CheckpointWriter(Callback):
    """checkpoints/best.safetensors when the epoch is the best, then checkpoints/last.safetensors (atomic writes;
    MPI ranks other than 0 write nothing). `trainer.completed` counts the epochs `last` holds."""

    def __init__(self, early_stopping: EarlyStopping):
        self.early_stopping = early_stopping

    def on_epoch_end(self, trainer, epoch, logs):
        if logs.get("is_best"):
            self.save(trainer, files.BEST, epoch)
        self.save(trainer, files.LAST, epoch)
        trainer.completed = epoch

    def save(self, trainer, name: str, epoch: int) -> None:
        if not trainer.run.writable:
            return
        state = {"epoch": epoch, "global_step": trainer.global_step, "rng": backend.get_rng_state(),
                 "early_stopping": self.early_stopping.tracker.state_dict()}
        network = trainer.model.network
        try:
            if trainer.averaging is None:
                save_checkpoint(trainer.run.file(name), network, trainer.optimizer, trainer.splits.normalization,
                                trainer.config.to_dict(), state, trainer.info)
                return
            with trainer.averaging.swapped_in() as trained:
                save_checkpoint(trainer.run.file(name), network, trainer.optimizer, trainer.splits.normalization,
                                trainer.config.to_dict(), state, trainer.info,
                                training=dict(zip(network.state_dict(), trained)))
        except OSError as exc:  # the previous checkpoint of that name is still intact (atomic write)
            raise RunDirError(f"cannot write {trainer.run.file(name)}: {exc.strerror or exc}") from None


class ProgressReporter(Callback):
    """Hands progress to a reporter (a live bar on a terminal, one line per epoch otherwise, nothing when quiet)."""

    def __init__(self, reporter):
        self.reporter = reporter

    def on_train_begin(self, trainer):
        self.reporter.start(trainer.config.training.epochs, trainer.steps_per_epoch)

    def on_batch_end(self, trainer, step, logs):
        if logs["loss"] is not None:
            self.reporter.batch(trainer.epoch, step, logs["loss"], logs["samples_per_second"])

    def on_epoch_end(self, trainer, epoch, logs):
        self.reporter.epoch_end({k: v for k, v in logs.items() if k in files.METRIC_COLUMNS}, logs.get("is_best"))
        if trainer.stop_training and trainer.stop_message:
            self.reporter.message(trainer.stop_message)

    def on_train_end(self, trainer, summary):
        self.reporter.close()


class CurvesWriter(Callback):
    """curves.png when training ends, however it ends (the epochs that finished); before the trackers, which
    upload it. A plotting problem never fails a finished run."""

    def on_train_end(self, trainer, summary):
        if not (trainer.run.writable and trainer.plot_curves):
            return
        try:
            from .plotting import plot_runs  # noqa: PLC0415 (matplotlib loads only here)

            plot_runs([trainer.run.path], trainer.run.file(files.CURVES))
        except Exception:  # noqa: BLE001 (matplotlib missing, or a run with no rows yet)
            pass


def built_in(trainer, reporter, loggers=()) -> list[Callback]:
    """The callbacks every run has, in the order that keeps it resumable, then the trackers and the config's own."""
    early = EarlyStopping(trainer.config)
    found = [trainer.averaging] if trainer.averaging else []  # the average is up to date before anything reads it
    found += [early, MetricsWriter(), LearningRateWriter()]
    if trainer.config.training.log_gradients:
        found.append(GradientLogger(trainer.model.network.layers))
    found += [CheckpointWriter(early), ProgressReporter(reporter), CurvesWriter(), *loggers]
    found += [callbacks.build(spec) for spec in trainer.config.callbacks]
    return found
