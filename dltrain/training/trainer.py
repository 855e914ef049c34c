"""The training loop: epochs of shuffled minibatches around one train_step, with callbacks around them.

    on_train_begin
    for each epoch:  on_epoch_begin -> shuffle -> for each batch: train_step, on_batch_end
                     validate -> on_epoch_end (early stopping, metrics.csv, gradients.csv, checkpoints, progress)
    at the end:      restore the best weights, test metrics, summary.json, on_train_end

What the step does per setting (CPU, GPU, MPI ranks) is in steps.py; the callbacks are in callbacks.py.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import threading
import time

from .. import __version__, backend
from ..autograd import no_grad
from ..config import Config
from ..data import Split
from ..data.augment import Augmenter
from ..distributed import SingleProcess, on_rank_zero, shard
from ..errors import CheckpointError, ConfigError, Diverged, DltrainError, Interrupted, ShapeError, Terminated
from ..optim.optimizers import clip_grad_norm
from ..registry import optimizers, schedules
from . import rundir as files
from .callbacks import EarlyStopping, WeightAveraging, built_in, overrides
from .checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from .loggers import make_loggers
from .model import build_for, regression_figures
from .reporting import SilentReporter, silence_stdout
from .rundir import RunDir
from .steps import DEVICE_READ_EVERY, Batch, strategy_for  # noqa: F401 (DEVICE_READ_EVERY: tests read it here)

np = backend.np


@contextlib.contextmanager
def sigterm_interrupts():
    """Within this block SIGTERM stops training like Ctrl-C (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)



class Trainer:
    """Trains a config's model on its data into a run directory; `fit()` runs it and returns the summary.

    `callbacks` are added after the built-in ones (see callbacks.py); any hook may set `stop_training`."""

    def __init__(self, config: Config, run: RunDir, device: str, reporter=None, resume: Checkpoint | None = None,
                 comm=None, callbacks=()):
        self.config = config
        self.comm = comm or SingleProcess()
        self.run = run
        self.device = device
        self.reporter = reporter or SilentReporter()
        self.resume = resume
        self.extra_callbacks = list(callbacks)
        self.config_name = None  # the config file's name, when there is one (MLflow's experiment by default)
        self.plot_curves = True  # curves.png at the end
        self.setup_seconds = 0.0  # data, model, and the kernels' first calls (summary.json)
        self.epoch_train_seconds = []

    # ------------------------------------------------------------ setup

    def setup(self, init_from=None) -> None:
        """Data, model, optimizer and schedule; `init_from` (a checkpoint or run directory) starts from its weights,
        and a text model also from its tokenizer: the embedding's rows belong to the tokenizer's ids."""
        started = time.perf_counter()
        self._setup(init_from)
        self.setup_seconds = time.perf_counter() - started

    def _setup(self, init_from) -> None:
        cfg = self.config
        backend.reuse_freed_memory()  # a training step allocates the same sizes every time
        if self.device == "cpu":
            backend.fused(np.zeros(1, backend.default_dtype()))  # load the compiled kernels now, not in epoch 1
            # ranks on one machine share its cores (BLAS and the compiled kernels)
            backend.apply_threads(backend.default_threads(local_ranks=self.comm.local_size()))
        source = load_checkpoint(resolve_checkpoint(init_from)) if init_from is not None else None
        text, text_source = (source.data.get("text"), str(source.path)) if source else (None, None)
        if self.comm.size > 1 and self.resume is None and text is None and cfg.token_inputs():
            # every rank must read the same ids: rank 0 fits the tokenizer, the others take its state
            text = on_rank_zero(self.comm, lambda: build_for(cfg, self.device).info["text"])
        built = build_for(cfg, self.device, self.resume, text=text, text_source=text_source)
        self.model, self.splits, self.info = built.model, built.splits, built.info
        if source is not None:
            self._load_weights(source, init_from)
        train = self.splits.train
        if cfg.training.batch_size < self.comm.size:
            raise DltrainError(f"training.batch_size {cfg.training.batch_size} is the global batch and must be at "
                               f"least the number of ranks ({self.comm.size})")
        if cfg.training.batch_size > len(train):
            raise DltrainError(f"training.batch_size {cfg.training.batch_size} is larger than the training split "
                               f"({len(train)} samples); use a smaller batch or more data")
        self.augment = Augmenter(cfg.data.get("augment") or [], self.splits.classes, self.model.blank, self.model.task)
        self.optimizer = optimizers.build(cfg.optimizer, params=self.model.network.parameters())
        self.steps_per_epoch = math.ceil(len(train) / cfg.training.batch_size)  # batches
        accumulate = cfg.training.accumulate_steps  # batches per optimizer step
        if accumulate > 1 and self.comm.size > 1:
            raise ConfigError("training.accumulate_steps > 1 is not supported across MPI ranks yet; a larger global "
                              "batch_size spreads over the ranks instead")
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / accumulate)
        self.schedule = schedules.build(cfg.schedule, base_lr=self.optimizer.lr, total_epochs=cfg.training.epochs,
                                        steps_per_epoch=self.updates_per_epoch,
                                        batch_size=cfg.training.batch_size * accumulate)
        self.start_epoch = 0
        self.global_step = 0
        self.skipped = 0  # batches skipped for non-finite values (training.on_nonfinite: skip)
        self.averaging = WeightAveraging(cfg.training.ema.decay) if cfg.training.ema.enabled else None
        self.callbacks = built_in(self, self.reporter, make_loggers(self)) + self.extra_callbacks
        self.early_stopping = next(c for c in self.callbacks if isinstance(c, EarlyStopping)).tracker
        # losses read every step unless on one GPU that may stop at a non-finite loss (see steps.py); tests set
        # it on the CPU, where the same code runs on NumPy
        self.defer_loss_reads = self.device != "cpu" and self.comm.size == 1 and cfg.training.on_nonfinite == "stop"
        finished = self.resume is not None and int(self.resume.state.get("epoch", 0)) >= cfg.training.epochs
        if not finished:  # (a resume with no epoch left trains nothing)
            self._warm_up()  # before a resume's state is loaded: the copy then holds no more than the model
        if self.resume:
            self._restore(self.resume)

    def _warm_up(self) -> None:
        """Train a copy of the model on one batch of each size an epoch has (the full batch and the last, smaller
        one) and evaluate it on one batch of each evaluation size, then put the generators back: the kernels' first
        calls (loaded from Numba's cache, per-shape loops compiled, CUDA kernels built) and the memory pool's first
        allocations happen here, in setup, instead of inside epoch 1. The run itself is untouched: its model, loss,
        augmentations, optimizer, batchnorm statistics and random draws are the same as without this."""
        cfg, train = self.config, self.splits.train
        size = cfg.training.batch_size // self.comm.size  # each rank's part of the global batch
        last = len(train) % cfg.training.batch_size // self.comm.size  # the epoch's last batch, when it is smaller
        train_sizes = [max(size, 1)] + ([last] if last and last != size else [])  # in the order an epoch has them
        evaluated = self.splits.val if self.splits.val is not None else self.splits.test
        try:  # a user's layer, loss or augmentation that cannot be copied: no warm-up, nothing else changes
            model = copy.copy(self.model)
            model.network, model.loss = copy.deepcopy(self.model.network), copy.deepcopy(self.model.loss)
            augment = copy.deepcopy(self.augment)
        except Exception as exc:  # noqa: BLE001
            self.reporter.message(f"note: no warm-up before epoch 1 (the model cannot be copied: {exc}); epoch 1 "
                                  f"pays the kernels' first calls")
            return
        optimizer = optimizers.build(cfg.optimizer, params=model.network.parameters())
        generators = copy.deepcopy(backend.get_rng_state()), np.random.get_state(), random.getstate()
        xp = backend.xp_for(self.device)
        try:
            model.network.train()
            for n in train_sizes:
                idx = backend.to_device(np.arange(min(n, len(train))), self.device)
                x, y = augment(train.x[idx], train.y[idx]) if augment else (train.x[idx], train.y[idx])
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    out = model.outputs(model.input_tensor(x))
                    loss = model.loss(out, y)
                    optimizer.zero_grad()
                    loss.backward()
                    if cfg.training.grad_clip:
                        clip_grad_norm(optimizer.params, cfg.training.grad_clip)
                    optimizer.step()
                float(loss.data)
                model.count_correct(out.data, y, xp.zeros((), dtype=xp.int64))  # the epoch's accuracy tally
            del optimizer
            if evaluated is not None:
                # A batch's size decides which kernels run (one core or all), so the evaluation size is warmed up,
                # without the test-time views (the same kernels again, several times the work); those once at a
                # training batch's size.
                n = min(cfg.training.eval_batch_size, len(evaluated))
                plain = copy.copy(model)
                plain.views = []
                plain.evaluate(Split(evaluated.x[:n], evaluated.y[:n]), n)
                if model.views:
                    n = min(n, size)
                    model.evaluate(Split(evaluated.x[:n], evaluated.y[:n]), n)
        except MemoryError:  # the copy did not fit beside the model (a GPU's memory): train without the warm-up
            self.reporter.message("note: no warm-up before epoch 1 (out of memory with a copy of the model); epoch 1 "
                                  "pays the kernels' first calls")
        finally:
            backend.set_rng_state(generators[0])
            np.random.set_state(generators[1])
            random.setstate(generators[2])
            self.model.network.train()

    def _restore(self, ckpt: Checkpoint) -> None:
        try:
            self.model.network.load_state_dict(ckpt.model)
            if self.averaging:
                self.averaging.restore(self, ckpt)
            self.optimizer.load_state_dict(ckpt.optimizer)
            backend.set_rng_state(ckpt.state["rng"])
            self.early_stopping.load_state_dict(ckpt.state["early_stopping"])
        except (ShapeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{ckpt.path}: cannot resume from this checkpoint ({exc})") from None
        self.start_epoch = int(ckpt.state["epoch"])
        self.global_step = int(ckpt.state["global_step"])

    def _load_weights(self, source, path) -> None:
        """Start from another checkpoint's weights (fine-tuning); the optimizer and schedule start fresh."""
        try:
            self.model.network.load_state_dict(source.model)
        except ShapeError as exc:
            raise CheckpointError(f"--init-from {path}: its weights do not fit this config's model ({exc})") from None

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ------------------------------------------------------------ one step

    def prepare_steps(self) -> None:
        """Choose how steps are tallied (steps.py) and which callbacks run inside a step; before train_step."""
        self.tally = strategy_for(self, self.defer_loss_reads)
        self._layer_watchers = [c for c in self.callbacks if overrides(c, "on_layer_output")]
        self._after_backward = [c for c in self.callbacks if overrides(c, "on_after_backward")]
        self._watch = self._watch_layers if self._layer_watchers else None
        self._zero_before_backward = True  # false inside a group of accumulated batches

    def train_step(self, batch: Batch) -> bool:
        """One batch: forward, loss, backward, and at the last batch of a group of training.accumulate_steps (each
        batch with the default 1) clip and update. False when the batch was skipped for a non-finite loss or
        gradient (training.on_nonfinite: skip; with stop, Diverged is raised)."""
        out = self.model.outputs(self.model.input_tensor(batch.x), watch=self._watch)
        loss = self.model.loss(out, batch.y)
        params = self.model.network.parameters()
        if not self.tally.loss_is_finite(loss, batch):
            return False
        accumulate = self.config.training.accumulate_steps
        if self._zero_before_backward:
            self.optimizer.zero_grad()
        group_start = batch.step - batch.step % accumulate
        group = min(accumulate, self.steps_per_epoch - group_start)  # the last group of an epoch may be short
        (loss if group == 1 else loss * (1.0 / group)).backward()  # the group's gradient: the mean of its batches'
        self._zero_before_backward = False
        if batch.step + 1 < group_start + group:
            self.tally.record(out, batch)
            return True  # more batches of this group to come
        self._zero_before_backward = True
        if not self.tally.combine(params, loss, out, batch):
            return False
        for callback in self._after_backward:
            callback.on_after_backward(self)
        clip = self.config.training.grad_clip
        if clip and not self.tally.clip(params, clip, batch):
            return False
        self.optimizer.step()
        self.global_step += 1
        self.tally.record(out, batch)
        return True

    def _watch_layers(self, layer, output) -> None:
        for callback in self._layer_watchers:
            callback.on_layer_output(self, layer, output)

    def nonfinite(self, what: str, where: str, batch: Batch) -> bool:
        """Stop (default): raise Diverged. Skip: return False while the config allows more skips."""
        cfg = self.config.training
        message = f"{what} at epoch {batch.epoch + 1}, step {batch.step + 1} (lr {batch.lr:.4g}); first non-finite: " \
                  f"{where}"
        if cfg.on_nonfinite == "skip" and self.skipped < cfg.max_nonfinite_skips:
            self.skipped += 1
            self.reporter.message(f"skipped a batch: {message} ({self.skipped} of at most "
                                  f"{cfg.max_nonfinite_skips} skips)")
            return False
        raise Diverged(f"{message}; stopped, the last good checkpoint is kept")

    def first_nonfinite_output(self, x) -> str:
        """Run the batch again layer by layer and name the first layer whose output is NaN or infinite."""
        xp = backend.xp_for(self.device)
        buffers = {name: array.copy() for name, array in self.model.network.named_buffers()}
        first = []

        def watch(layer, output):
            if not first and not bool(xp.isfinite(output.data).all()):
                first.append(layer.path)

        try:
            with no_grad():
                self.model.outputs(self.model.input_tensor(x), watch)
            return f"the output of {first[0]}" if first else "the loss (every layer's output is finite)"
        finally:  # the diagnosis must not move batchnorm's running statistics
            for name, array in self.model.network.named_buffers():
                array[...] = buffers[name]

    def first_nonfinite_gradient(self) -> str:
        xp = backend.xp_for(self.device)
        for name, param in reversed(list(self.model.network.named_parameters())):  # backward order
            if param.grad is not None and not bool(xp.isfinite(param.grad).all()):
                return f"the gradient of parameter {name}"
        return "the gradients"

    def batch_inputs(self, step: int):
        """The inputs of this epoch's step `step` (the whole global batch)."""
        size = self.config.training.batch_size
        return self.splits.train.x[self.order[step * size:(step + 1) * size]]

    # ------------------------------------------------------------ epochs

    def train_epoch(self, epoch: int) -> dict:
        """One pass over shuffled training data: {train_loss, train_accuracy, lr (at the last step)}."""
        cfg = self.config.training
        train = self.splits.train
        n = len(train)
        order = backend.host_rng().permutation(n) if cfg.shuffle else np.arange(n)
        self.order = backend.to_device(order, self.device)
        backend.reseed_device_generator(self.device)
        self.model.network.train()
        self.tally.start_epoch()
        started = time.perf_counter()
        self._zero_before_backward = True
        # every optimizer step's rate, as the schedule gives it (a pure function of the position): lr.csv's rows
        self.epoch_lrs = [self.schedule.lr(epoch, update) for update in range(self.updates_per_epoch)]
        for step in range(self.steps_per_epoch):
            update = step // cfg.accumulate_steps
            lr = self.epoch_lrs[update]
            self.optimizer.lr = lr
            momentum = self.schedule.momentum(epoch, update)
            if momentum is not None:
                self.optimizer.set_momentum(momentum)
            batch = self.order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            idx = shard(batch, self.comm.rank, self.comm.size) if self.comm.size > 1 else batch
            x, y = self.augment(train.x[idx], train.y[idx]) if self.augment else (train.x[idx], train.y[idx])
            if self.train_step(Batch(epoch, step, lr, x, y, len(batch))):
                logs = {"loss": self.tally.running_loss(),
                        "samples_per_second": self.tally.seen / (time.perf_counter() - started)}
                self._call("on_batch_end", step + 1, logs)
        loss_sum, correct, seen = self.tally.finish_epoch()
        if seen == 0:
            raise Diverged(f"every batch of epoch {epoch + 1} was skipped for non-finite values; stopped")
        width = 1 if self.model.task == "classification" else train.y.shape[1]
        accuracy = None if self.model.task == "regression" else correct / (seen * width)
        return {"train_loss": loss_sum / seen, "train_accuracy": accuracy, "lr": lr}

    def validate(self, split: Split | None) -> dict:
        """{val_loss, val_accuracy, val_mae, val_r2} on a split (None without one or where the task has none; the MAE
        in the data's units); with several ranks each evaluates its shard and the sums are reduced."""
        if split is None:
            return {"val_loss": None, "val_accuracy": None, "val_mae": None, "val_r2": None}
        if self.averaging and not self.averaging_kept:
            with self.averaging.swapped_in():
                return self._validate(split)
        return self._validate(split)

    def _validate(self, split: Split) -> dict:
        batch_size = self.config.training.eval_batch_size
        if self.comm.size == 1:
            result = self.model.evaluate(split, batch_size)
            return {"val_loss": result.loss, "val_accuracy": result.accuracy, "val_mae": result.mae,
                    "val_r2": result.r2}
        mine = shard(np.arange(len(split)), self.comm.rank, self.comm.size)  # a contiguous range
        lo, hi = (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)
        part = Split(split.x[lo:hi], split.y[lo:hi])
        result = self.model.evaluate(part, batch_size) if len(part) else None
        regression = self.model.task == "regression"
        width = self.model.network.output_shape[0] if regression else 0
        sums = result.error_sums if result is not None and regression else np.zeros((4, width))  # error_sums' shape
        local = [result.loss * len(part), (result.accuracy or 0.0) * len(part), len(part)] if result else [0, 0, 0]
        summed = backend.to_numpy(self.comm.sum(np.concatenate([np.asarray(local, np.float64), sums.ravel()])))
        loss_sum, right, n = summed[:3]
        mae, r2 = regression_figures(summed[3:].reshape(sums.shape), int(n), self.model.target_normalization) \
            if regression else (None, None)
        return {"val_loss": loss_sum / n, "val_accuracy": None if regression else right / n, "val_mae": mae,
                "val_r2": r2}

    def fit(self) -> dict:
        started = time.perf_counter()
        self.completed = self.start_epoch  # epochs whose checkpoint is on disk (CheckpointWriter moves it)
        self.trained_samples, self.train_seconds = 0, 0.0
        self.epoch_train_seconds = []  # each epoch's training loop (no validation): the first one shows one-time costs
        self.stop_training, self.stop_reason, self.stop_message = False, "completed", None
        self.prepare_steps()
        self.averaging_kept = False  # true once the model holds the average for good (end of training)
        error, summary = None, None
        try:
            try:
                # Overflow shows up as a non-finite loss, which is caught and reported: no numpy warnings.
                with sigterm_interrupts(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    self._call("on_train_begin")
                    self._run_epochs()
            except Diverged as exc:
                self.stop_reason, error = "diverged", exc
            except (KeyboardInterrupt, Terminated) as exc:
                self.stop_reason, error = "interrupted", self._interrupted(exc)
            except BrokenPipeError:  # `dltrain train ... | head`: the reader went away
                silence_stdout()
                self.stop_reason, error = "interrupted", self._interrupted(BrokenPipeError())
            except Exception as exc:
                if self._resume_changed_nothing():
                    self.run.keep_previous_run()
                else:
                    self._failed(exc, time.perf_counter() - started)
                raise
            if self.stop_reason == "interrupted" and self._resume_changed_nothing():  # diverging is an outcome
                summary = self.run.keep_previous_run()
            else:
                summary = self._finish(self.stop_reason, self.completed, time.perf_counter() - started)
                if error:
                    summary["error"] = str(error)
                    self.run.write_summary(summary)
        finally:
            self._call("on_train_end", summary)  # None when training failed in a way that writes no summary
        if error:
            raise error
        return summary

    def _run_epochs(self) -> None:
        """The epoch loop: train, validate, hand the row to the callbacks; they may stop it."""
        for epoch in range(self.start_epoch, self.config.training.epochs):
            self.epoch = epoch + 1
            self._call("on_epoch_begin", epoch + 1)
            epoch_start = time.perf_counter()
            logs = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            self.epoch_train_seconds.append(time.perf_counter() - epoch_start)
            self.train_seconds += self.epoch_train_seconds[-1]
            self.trained_samples += len(self.splits.train)
            logs.update(self.validate(self.splits.val), seconds=time.perf_counter() - epoch_start)
            self._call("on_epoch_end", epoch + 1, logs)
            if self.stop_training:
                self.stop_reason = "callback" if self.stop_reason == "completed" else self.stop_reason
                return

    def _resume_changed_nothing(self) -> bool:
        """A resume that stopped before completing an epoch of its own: the run's summary (its test metrics) stays
        as it was, so that `dltrain runs` still shows the finished run."""
        return self.start_epoch > 0 and self.completed == self.start_epoch and self.run.file(files.SUMMARY).exists()

    def _failed(self, exc: Exception, seconds: float) -> None:
        """A summary saying the run failed and why, so that `dltrain runs` does not call it killed and a run that
        failed before its first epoch leaves a directory the same --run-dir may use again."""
        self.run.write_summary({
            **self._summary_fields("failed", self.completed, seconds),
            "error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, DltrainError) else str(exc),
        })

    def _summary_fields(self, stop_reason: str, epochs_run: int, seconds: float) -> dict:
        return {
            "stop_reason": stop_reason,
            "epochs_run": epochs_run,
            "best_epoch": self.early_stopping.best_epoch,
            "monitor": self.early_stopping.monitor,
            "best_value": self.early_stopping.best,
            "total_seconds": round(seconds, 3),
            "train_samples_per_second": (round(self.trained_samples / self.train_seconds, 1)
                                         if self.train_seconds else None),
            "setup_seconds": round(self.setup_seconds, 3),
            "train_epoch_seconds": [round(s, 3) for s in self.epoch_train_seconds],
            "dltrain_version": __version__,
            "seed": self.config.seed,
            "device": self.device,
        }

    def _interrupted(self, exc) -> Interrupted:
        if isinstance(exc, BrokenPipeError):
            signal_name, code = "output closed", 141  # 128 + SIGPIPE, as a shell reports it
        else:
            signal_name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        if self.completed:
            return Interrupted(f"interrupted ({signal_name}): the checkpoint of the last complete epoch "
                               f"({self.completed}) is kept; continue with --resume {self.run.path}", code)
        return Interrupted(f"interrupted ({signal_name}) during epoch 1, before any checkpoint was "
                           f"written: there is nothing to resume; train again to start over", code)

    def _finish(self, stop_reason: str, epochs_run: int, seconds: float) -> dict:
        best = self.run.file(files.BEST)
        # Diverged weights are useless, so the best ones come back even when restore_best is off.
        restore = self.config.training.early_stopping.restore_best or stop_reason == "diverged"
        if self.comm.size == 1:
            restored = restore and best.is_file()
            if restored:
                self.model.network.load_state_dict(load_checkpoint(best).model)
            elif stop_reason == "interrupted" and self.run.file(files.LAST).is_file():
                # stopped mid-epoch: the test metrics are those of the last checkpoint, as eval would give
                self.model.network.load_state_dict(load_checkpoint(self.run.file(files.LAST)).model)
                restored = True
        elif stop_reason == "interrupted":  # ranks stopped at different points: no more collectives
            restored = False
        else:  # rank 0 has the files; it hands the best weights to the others
            state = load_checkpoint(best).model if self.run.writable and restore and best.is_file() else None
            state = self.comm.broadcast(state)
            restored = state is not None
            if restored:
                self.model.network.load_state_dict(state)
        if self.averaging and not restored and hasattr(self.averaging, "network"):
            self.averaging.keep_average()  # the model that is tested and returned is the average
        self.averaging_kept = True  # a checkpoint's model/ is the average already
        summary = self._summary_fields(stop_reason, epochs_run, seconds)
        collectives_ok = self.comm.size == 1 or stop_reason != "interrupted"
        has_weights = restored or stop_reason not in ("diverged", "interrupted")  # weights a checkpoint holds
        if self.splits.test is not None and has_weights and collectives_ok:
            test = self.validate(self.splits.test)
            summary["test_loss"] = test["val_loss"]
            for key in ("accuracy", "mae", "r2"):
                if test[f"val_{key}"] is not None:
                    summary[f"test_{key}"] = test[f"val_{key}"]
        if self.comm.size > 1:
            summary["ranks"] = self.comm.size
            summary["allreduce_seconds"] = round(self.comm.seconds, 3)
        self.run.write_summary(summary)
        return summary
