"""The training loop: epochs of shuffled minibatches, validation, early stopping, checkpoints, metrics.

    for each epoch:  shuffle -> for each batch: forward -> loss -> backward -> (clip) -> step
                     validate -> metrics row -> early stopping -> last (and best) checkpoint
    at the end:      restore the best weights, test metrics, summary.json
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

from .. import __version__, backend
from ..autograd import Tensor, no_grad
from ..config import Config
from ..data import Split, prepare
from ..distributed import SingleProcess, shard
from ..errors import CheckpointError, Diverged, DltrainError, Interrupted, ShapeError, Terminated
from ..layers.core import run_layers
from ..optim import clip_grad_norm
from ..registry import optimizers, schedules
from . import rundir as files
from .checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from .early_stopping import EarlyStopping
from .gradients import GradientMonitor
from .model import Model, data_info
from .rundir import RunDir, RunDirError

np = backend.np

# On a GPU the step's loss stays on the device and is read every this many steps (reading it waits
# for the GPU to finish, which would stall the queue of kernels every step).
DEVICE_READ_EVERY = 50


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


def _fmt(value) -> str:
    """Exact, shortest text of a float (so resumed and uninterrupted runs compare bit for bit)."""
    return "" if value is None else repr(float(value))


class Trainer:
    def __init__(self, config: Config, run: RunDir, device: str, reporter, resume: Checkpoint | None = None,
                 comm=None):
        self.config = config
        self.comm = comm or SingleProcess()
        self.run = run
        self.device = device
        self.reporter = reporter
        self.resume = resume

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg = self.config
        backend.manual_seed(cfg.seed)
        backend.reuse_freed_memory()  # a training step allocates the same sizes every time
        if self.device == "cpu":
            backend.fused(np.zeros(1, backend.default_dtype()))  # load the compiled kernels now, not in epoch 1
            # ranks on one machine share its cores (BLAS and the compiled kernels)
            backend.apply_threads(backend.default_threads(local_ranks=self.comm.local_size()))
        task = Model.task_of(cfg)
        stats = self.resume.normalization if self.resume else None
        shape = tuple(self.resume.data["input_shape"]) if self.resume else None
        self.splits = prepare(cfg.data, task, cfg.seed, self.device, stats=stats, expected_shape=shape)
        train = self.splits.train
        if cfg.training.batch_size < self.comm.size:
            raise DltrainError(f"training.batch_size {cfg.training.batch_size} is the global batch and must be at "
                               f"least the number of ranks ({self.comm.size})")
        if cfg.training.batch_size > len(train):
            raise DltrainError(f"training.batch_size {cfg.training.batch_size} is larger than the training split "
                               f"({len(train)} samples); use a smaller batch or more data")
        self.info = data_info(self.splits, task)
        self.model = Model(cfg, self.splits.input_shape, self.splits.classes, self.info["target_width"])
        self.model.network.to(self.device)
        self.optimizer = optimizers.build(cfg.optimizer, params=self.model.network.parameters())
        self.steps_per_epoch = math.ceil(len(train) / cfg.training.batch_size)
        self.schedule = schedules.build(cfg.schedule, base_lr=self.optimizer.lr, total_epochs=cfg.training.epochs,
                                        steps_per_epoch=self.steps_per_epoch, batch_size=cfg.training.batch_size)
        es = cfg.training.early_stopping
        self.early = EarlyStopping(es.monitor, cfg.monitor_mode, es.patience, es.min_delta, es.start_from_epoch,
                                   es.enabled)
        self.start_epoch = 0
        self.global_step = 0
        self.skipped = 0  # batches skipped for non-finite values (training.on_nonfinite: skip)
        self.gradients = GradientMonitor(self.model.network.layers) if cfg.training.log_gradients else None
        # see train_epoch; tests turn it on for the CPU, where the same code runs on NumPy
        self.defer_loss_reads = self.device != "cpu" and self.comm.size == 1 and cfg.training.on_nonfinite == "stop"
        if self.resume:
            self._restore(self.resume)

    def _restore(self, ckpt: Checkpoint) -> None:
        try:
            self.model.network.load_state_dict(ckpt.model)
            self.optimizer.load_state_dict(ckpt.optimizer)
            backend.set_rng_state(ckpt.state["rng"])
            self.early.load_state_dict(ckpt.state["early_stopping"])
        except (ShapeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{ckpt.path}: cannot resume from this checkpoint ({exc})") from None
        self.start_epoch = int(ckpt.state["epoch"])
        self.global_step = int(ckpt.state["global_step"])

    def load_weights(self, path) -> None:
        """Start from another checkpoint's weights (fine-tuning); the optimizer and schedule start fresh."""

        source = load_checkpoint(resolve_checkpoint(path))
        try:
            self.model.network.load_state_dict(source.model)
        except ShapeError as exc:
            raise CheckpointError(f"--init-from {path}: its weights do not fit this config's model ({exc})") from None

    def _save(self, name: str, epoch: int) -> None:
        if not self.run.writable:  # MPI ranks other than 0
            return
        state = {"epoch": epoch, "global_step": self.global_step, "rng": backend.get_rng_state(),
                 "early_stopping": self.early.state_dict()}
        try:
            save_checkpoint(self.run.file(name), self.model.network, self.optimizer, self.splits.normalization,
                            self.config.to_dict(), state, self.info)
        except OSError as exc:  # the previous checkpoint of that name is still intact (atomic write)
            raise RunDirError(f"cannot write {self.run.file(name)}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------ the loop

    def _nonfinite(self, what: str, where: str, epoch: int, step: int, lr: float) -> None:
        """Stop (default), or skip this batch while the config allows more skips."""
        cfg = self.config.training
        message = f"{what} at epoch {epoch + 1}, step {step + 1} (lr {lr:.4g}); first non-finite: {where}"
        if cfg.on_nonfinite == "skip" and self.skipped < cfg.max_nonfinite_skips:
            self.skipped += 1
            self.reporter.message(f"skipped a batch: {message} ({self.skipped} of at most "
                                  f"{cfg.max_nonfinite_skips} skips)")
            return
        raise Diverged(f"{message}; stopped, the last good checkpoint is kept")

    def _first_nonfinite_output(self, x) -> str:
        """Run the batch again layer by layer and name the first layer whose output is NaN or infinite."""
        xp = backend.xp_for(self.device)
        buffers = {name: array.copy() for name, array in self.model.network.named_buffers()}
        first = []

        def watch(layer, output):
            if not first and not bool(xp.isfinite(output.data).all()):
                first.append(layer.path)

        try:
            with no_grad():
                run_layers(self.model.network.layers, Tensor(x), watch)
            return f"the output of {first[0]}" if first else "the loss (every layer's output is finite)"
        finally:  # the diagnosis must not move batchnorm's running statistics
            for name, array in self.model.network.named_buffers():
                array[...] = buffers[name]

    def _first_nonfinite_gradient(self) -> str:
        xp = backend.xp_for(self.device)
        for name, param in reversed(list(self.model.network.named_parameters())):  # backward order
            if param.grad is not None and not bool(xp.isfinite(param.grad).all()):
                return f"the gradient of parameter {name}"
        return "the gradients"

    def _sum_over_ranks(self, params, loss, out, y, local: int, total: int) -> tuple[float, int]:
        """One Allreduce of one flat buffer: every gradient weighted by this rank's share of the global batch,
        then the local loss sum and correct count. Afterwards every rank holds the global-batch gradient."""
        xp = backend.xp_for(self.device)
        grads = [p.grad if p.grad is not None else xp.zeros_like(p.data) for p in params]
        right = 0 if self.model.task == "regression" else int((self.model.loss.predict(out.data) == y).sum())
        stats = xp.asarray([float(loss.data) * local, right], dtype=grads[0].dtype)
        flat = xp.concatenate([g.ravel() * (local / total) for g in grads] + [stats])
        summed = self.comm.sum(flat)
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = summed[offset:offset + grad.size].reshape(grad.shape)
            offset += grad.size
        return float(summed[-2]) / total, int(round(float(summed[-1])))

    def _evaluate(self, split: Split) -> tuple[float, float | None]:
        """(loss, accuracy) on a split; with several ranks each evaluates its shard and the sums are reduced."""
        batch_size = self.config.training.eval_batch_size
        if self.comm.size == 1:
            result = self.model.evaluate(split, batch_size)
            return result.loss, result.accuracy
        mine = shard(np.arange(len(split)), self.comm.rank, self.comm.size)  # a contiguous range
        lo, hi = (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)
        part = Split(split.x[lo:hi], split.y[lo:hi])
        result = self.model.evaluate(part, batch_size) if len(part) else None
        local = [result.loss * len(part), (result.accuracy or 0.0) * len(part), len(part)] if result else [0, 0, 0]
        loss_sum, right, n = backend.to_numpy(self.comm.sum(np.asarray(local, dtype=np.float64)))
        return loss_sum / n, None if self.model.task == "regression" else right / n

    def train_epoch(self, epoch: int) -> tuple[float, float | None, float]:
        """One pass over shuffled training data; returns (mean loss, accuracy, lr at the last step).

        On the CPU every step's loss is read and checked before the update. On a GPU (one process,
        training.on_nonfinite: stop) losses and correct counts accumulate on the device and are read
        every DEVICE_READ_EVERY steps, so the host never waits for the GPU in between."""
        cfg = self.config.training
        train = self.splits.train
        n = len(train)
        order = backend.host_rng().permutation(n) if cfg.shuffle else np.arange(n)
        order = backend.to_device(order, self.device)
        backend.reseed_device_generator(self.device)
        self.model.network.train()
        params = self.model.network.parameters()
        if self.gradients:
            self.gradients.start_epoch()
        xp = backend.xp_for(self.device)
        deferred = self.defer_loss_reads
        step_losses = xp.empty(self.steps_per_epoch, dtype=backend.default_dtype()) if deferred else None
        step_norms = xp.zeros(self.steps_per_epoch, dtype=xp.float64) if deferred and cfg.grad_clip else None
        correct_on_device = xp.zeros((), dtype=xp.int64) if deferred else None
        pending: list[tuple[int, int]] = []  # (step, batch size) whose loss is still on the device
        loss_sum = 0.0
        correct = 0
        seen = 0
        started = time.perf_counter()
        for step in range(self.steps_per_epoch):
            lr = self.schedule.lr(epoch, step)
            self.optimizer.lr = lr
            batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            idx = shard(batch, self.comm.rank, self.comm.size) if self.comm.size > 1 else batch
            x, y = train.x[idx], train.y[idx]
            out = self.model.outputs(Tensor(x), watch=self.gradients.watch if self.gradients else None)
            loss = self.model.loss(out, y)
            batch_correct = None
            if self.comm.size > 1:  # every rank must reach the Allreduce, so the check comes after it
                self.optimizer.zero_grad()
                loss.backward()
                value, batch_correct = self._sum_over_ranks(params, loss, out, y, len(idx), len(batch))
                if not math.isfinite(value):
                    self._nonfinite(f"loss became {value}", self._first_nonfinite_output(x), epoch, step, lr)
                    continue
            elif deferred:
                step_losses[step] = loss.data
                self.optimizer.zero_grad()
                loss.backward()
            else:
                value = float(loss.data)
                if not math.isfinite(value):
                    self._nonfinite(f"loss became {value}", self._first_nonfinite_output(x), epoch, step, lr)
                    continue
                self.optimizer.zero_grad()
                loss.backward()
            if self.gradients:
                self.gradients.after_backward()
            if cfg.grad_clip and deferred:
                step_norms[step] = clip_grad_norm(params, cfg.grad_clip, read=False)
            elif cfg.grad_clip:
                norm = clip_grad_norm(params, cfg.grad_clip)
                if not math.isfinite(norm):
                    self._nonfinite("gradients became non-finite", self._first_nonfinite_gradient(), epoch, step, lr)
                    continue
            self.optimizer.step()
            self.global_step += 1
            if deferred:
                if self.model.task != "regression":
                    self.model.loss.add_correct(out.data, y, correct_on_device)
                pending.append((step, len(batch)))
                if len(pending) < DEVICE_READ_EVERY and step + 1 < self.steps_per_epoch:
                    continue
                loss_sum, seen = self._read_step_losses(step_losses, step_norms, pending, loss_sum, seen, epoch,
                                                        order)
                pending = []
            else:
                loss_sum += value * len(batch)
                if batch_correct is not None:
                    correct += batch_correct
                elif self.model.task != "regression":
                    correct += int((self.model.loss.predict(out.data) == y).sum())
                seen += len(batch)
            self.reporter.batch(epoch + 1, step + 1, loss_sum / seen, seen / (time.perf_counter() - started))
        if seen == 0:
            raise Diverged(f"every batch of epoch {epoch + 1} was skipped for non-finite values; stopped")
        if deferred:
            correct = int(correct_on_device)
        width = 1 if self.model.task == "classification" else train.y.shape[1]
        accuracy = None if self.model.task == "regression" else correct / (seen * width)
        return loss_sum / seen, accuracy, lr

    def _read_step_losses(self, step_losses, step_norms, pending, loss_sum: float, seen: int, epoch: int, order):
        """Read the losses (and gradient norms, when clipping) of the pending steps in one transfer and add the
        losses up; stop at the first non-finite one, naming its step and, when the weights are still finite,
        the first layer whose output is not."""
        first, last = pending[0][0], pending[-1][0]
        values = backend.to_numpy(step_losses[first:last + 1]).astype(np.float64)
        norms = backend.to_numpy(step_norms[first:last + 1]) if step_norms is not None else np.zeros(len(values))
        late = (f"the weights were already non-finite when it was read (on the GPU losses are read every "
                f"{DEVICE_READ_EVERY} steps; training.on_nonfinite: skip reads every step)")
        for (step, size), value, norm in zip(pending, values, norms):
            lr = self.schedule.lr(epoch, step)
            if not math.isfinite(value):
                xp = backend.xp_for(self.device)
                if all(bool(xp.isfinite(p.data).all()) for p in self.model.network.parameters()):
                    batch_size = self.config.training.batch_size
                    where = self._first_nonfinite_output(self.splits.train.x[order[step * batch_size:
                                                                                   (step + 1) * batch_size]])
                else:
                    where = f"not traced: {late}"
                self._nonfinite(f"loss became {value}", where, epoch, step, lr)
            if not math.isfinite(norm):
                self._nonfinite("gradients became non-finite", f"not traced per parameter: {late}", epoch, step, lr)
            loss_sum += value * size
            seen += size
        return loss_sum, seen

    def fit(self) -> dict:
        started = time.perf_counter()
        self.run.start_metrics(keep_epochs=self.start_epoch)
        if self.gradients:
            self.run.start_table(files.GRADIENTS, self.gradients.header(), keep_epochs=self.start_epoch)
        self.completed = self.start_epoch  # epochs whose checkpoint is on disk
        self.trained_samples, self.train_seconds = 0, 0.0
        stop_reason, error = "completed", None
        self.reporter.start(self.config.training.epochs, self.steps_per_epoch)
        try:
            # Overflow shows up as a non-finite loss, which is caught and reported: no numpy warnings.
            with sigterm_interrupts(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                stop_reason = self._run_epochs()
        except Diverged as exc:
            stop_reason, error = "diverged", exc
        except (KeyboardInterrupt, Terminated) as exc:
            signal_name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
            stop_reason = "interrupted"
            if self.completed:
                error = Interrupted(f"interrupted ({signal_name}): the checkpoint of the last complete epoch "
                                    f"({self.completed}) is kept; continue with --resume {self.run.path}", code)
            else:
                error = Interrupted(f"interrupted ({signal_name}) during epoch 1, before any checkpoint was "
                                    f"written: there is nothing to resume; train again to start over", code)
        finally:
            self.reporter.close()
        summary = self._finish(stop_reason, self.completed, time.perf_counter() - started)
        if error:
            summary["error"] = str(error)
            self.run.write_summary(summary)
            raise error
        return summary

    def _run_epochs(self) -> str:
        """Train from start_epoch on; returns 'completed' or 'early_stopping'."""
        cfg = self.config.training
        for epoch in range(self.start_epoch, cfg.epochs):
            epoch_start = time.perf_counter()
            train_loss, train_acc, lr = self.train_epoch(epoch)
            self.train_seconds += time.perf_counter() - epoch_start
            self.trained_samples += len(self.splits.train)
            val_loss, val_accuracy = self._evaluate(self.splits.val) if self.splits.val else (None, None)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                   "val_loss": val_loss, "val_accuracy": val_accuracy,
                   "lr": lr, "seconds": time.perf_counter() - epoch_start}
            is_best, stop = self.early.update(epoch + 1, row)
            stop = self.comm.broadcast(stop)  # every rank stops together, as rank 0 decides
            # This order keeps a crash between any two writes resumable: a metrics row or a best
            # checkpoint ahead of `last` is simply redone (identically) by the resumed run.
            self.run.append_metrics({k: (v if k == "epoch" else _fmt(v)) for k, v in row.items()})
            if self.gradients:
                self.run.append_row(files.GRADIENTS, self.gradients.header(), self.gradients.epoch_row(epoch + 1))
            if is_best:
                self._save(files.BEST, epoch + 1)
            self._save(files.LAST, epoch + 1)
            self.completed = epoch + 1
            self.reporter.epoch_end(row, is_best)
            if stop:
                self.reporter.message(f"early stopping: {self.early.monitor} has not improved for "
                                      f"{self.early.wait} epochs (best {self.early.best:.6g} at epoch "
                                      f"{self.early.best_epoch})")
                return "early_stopping"
        return "completed"

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
        summary = {
            "stop_reason": stop_reason,
            "epochs_run": epochs_run,
            "best_epoch": self.early.best_epoch,
            "monitor": self.early.monitor,
            "best_value": self.early.best,
            "total_seconds": round(seconds, 3),
            "train_samples_per_second": (round(self.trained_samples / self.train_seconds, 1)
                                         if self.train_seconds else None),
            "dltrain_version": __version__,
            "seed": self.config.seed,
            "device": self.device,
        }
        collectives_ok = self.comm.size == 1 or stop_reason != "interrupted"
        has_weights = restored or stop_reason not in ("diverged", "interrupted")  # weights a checkpoint holds
        if self.splits.test is not None and has_weights and collectives_ok:
            test_loss, test_accuracy = self._evaluate(self.splits.test)
            summary["test_loss"] = test_loss
            if test_accuracy is not None:
                summary["test_accuracy"] = test_accuracy
        if self.comm.size > 1:
            summary["ranks"] = self.comm.size
            summary["allreduce_seconds"] = round(self.comm.seconds, 3)
        self.run.write_summary(summary)
        return summary
