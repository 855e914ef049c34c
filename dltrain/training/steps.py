"""How a training step's loss, correct count and gradients are gathered: what differs between settings.

The step itself is one function (Trainer.train_step): forward, loss, backward, clip, update. Around it:

    EveryStepReads        one process: each loss is read before backward, so a non-finite batch is caught
                          (and can be skipped) before it touches the weights
    DeferredReads         one GPU: losses (and clipping norms) stay on the device and are read every
                          DEVICE_READ_EVERY steps; reading waits for the GPU, which would stall its queue every step
    AllreduceAcrossRanks  MPI ranks: every rank's gradients, loss and correct count summed in one Allreduce,
                          after which every rank holds the global batch's gradient

Each keeps the epoch's tally: loss summed over samples, correct predictions (on the device), samples seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import backend
from ..optim import clip_grad_norm

np = backend.np

DEVICE_READ_EVERY = 50


@dataclass
class Batch:
    """Where a step is and what it trains on; `size` is the global batch (all ranks), x and y this rank's part."""

    epoch: int  # 0-based
    step: int  # 0-based
    lr: float
    x: object
    y: object
    size: int


class EveryStepReads:
    def __init__(self, trainer):
        self.trainer = trainer
        self.xp = backend.xp_for(trainer.device)

    def start_epoch(self) -> None:
        self.loss_sum, self.seen = 0.0, 0
        self.correct = self.xp.zeros((), dtype=self.xp.int64)

    def loss_is_finite(self, loss, batch: Batch) -> bool:
        """Before backward: False when the batch is skipped for a non-finite loss."""
        self.value = float(loss.data)
        if math.isfinite(self.value):
            return True
        return self.trainer.nonfinite(f"loss became {self.value}", self.trainer.first_nonfinite_output(batch.x),
                                      batch)

    def combine(self, params, loss, out, batch: Batch) -> bool:
        """After backward: the gradients to step with (here: this process's own)."""
        return True

    def clip(self, params, max_norm: float, batch: Batch) -> bool:
        norm = clip_grad_norm(params, max_norm)
        if math.isfinite(norm):
            return True
        return self.trainer.nonfinite("gradients became non-finite", self.trainer.first_nonfinite_gradient(), batch)

    def record(self, out, batch: Batch) -> None:
        self.loss_sum += self.value * batch.size
        self.seen += batch.size
        self.trainer.model.count_correct(out.data, batch.y, self.correct)

    def running_loss(self) -> float | None:
        """The epoch's mean loss so far, or None where the latest steps are not read yet."""
        return self.loss_sum / self.seen if self.seen else None

    def finish_epoch(self) -> tuple[float, int, int]:
        """(loss sum, correct, seen) of the epoch."""
        return self.loss_sum, int(self.correct), self.seen


class DeferredReads(EveryStepReads):
    def start_epoch(self) -> None:
        super().start_epoch()
        steps = self.trainer.steps_per_epoch
        self.losses = self.xp.empty(steps, dtype=backend.default_dtype())
        self.norms = self.xp.zeros(steps, dtype=self.xp.float64) if self.trainer.config.training.grad_clip else None
        self.pending: list[Batch] = []  # steps whose loss is still on the device

    def loss_is_finite(self, loss, batch):
        self.losses[batch.step] = loss.data
        return True

    def clip(self, params, max_norm, batch):
        self.norms[batch.step] = clip_grad_norm(params, max_norm, read=False)
        return True

    def record(self, out, batch):
        self.trainer.model.count_correct(out.data, batch.y, self.correct)
        self.pending.append(Batch(batch.epoch, batch.step, batch.lr, None, None, batch.size))
        if len(self.pending) >= DEVICE_READ_EVERY or batch.step + 1 == self.trainer.steps_per_epoch:
            self.read_pending()

    def running_loss(self):
        return None if self.pending else super().running_loss()

    def read_pending(self) -> None:
        """Read the pending steps' losses (and norms) in one transfer and add them up; stop at the first non-finite
        one, naming its step and, when the weights are still finite, the first layer whose output is not."""
        first, last = self.pending[0].step, self.pending[-1].step
        values = backend.to_numpy(self.losses[first:last + 1]).astype(np.float64)
        norms = backend.to_numpy(self.norms[first:last + 1]) if self.norms is not None else np.zeros(len(values))
        late = (f"the weights were already non-finite when it was read (on the GPU losses are read every "
                f"{DEVICE_READ_EVERY} steps; training.on_nonfinite: skip reads every step)")
        trainer = self.trainer
        for batch, value, norm in zip(self.pending, values, norms):
            if not math.isfinite(value):
                if all(bool(self.xp.isfinite(p.data).all()) for p in trainer.model.network.parameters()):
                    where = trainer.first_nonfinite_output(trainer.batch_inputs(batch.step))
                else:
                    where = f"not traced: {late}"
                trainer.nonfinite(f"loss became {value}", where, batch)
            if not math.isfinite(norm):
                trainer.nonfinite("gradients became non-finite", f"not traced per parameter: {late}", batch)
            self.loss_sum += value * batch.size
            self.seen += batch.size
        self.pending = []


class AllreduceAcrossRanks(EveryStepReads):
    def loss_is_finite(self, loss, batch):
        return True  # every rank must reach the Allreduce, so the check comes after it

    def combine(self, params, loss, out, batch):
        """One Allreduce of one flat buffer: every gradient weighted by this rank's share of the global batch, then
        the local loss sum and correct count."""
        local, total = len(batch.y), batch.size
        grads = [p.grad if p.grad is not None else self.xp.zeros_like(p.data) for p in params]
        right = self.xp.zeros((), dtype=self.xp.int64)
        self.trainer.model.count_correct(out.data, batch.y, right)
        stats = self.xp.asarray([float(loss.data) * local, int(right)], dtype=grads[0].dtype)
        flat = self.xp.concatenate([g.ravel() * (local / total) for g in grads] + [stats])
        summed = self.trainer.comm.sum(flat)
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = summed[offset:offset + grad.size].reshape(grad.shape)
            offset += grad.size
        self.value, self.batch_correct = float(summed[-2]) / total, int(round(float(summed[-1])))
        if math.isfinite(self.value):
            return True
        return self.trainer.nonfinite(f"loss became {self.value}", self.trainer.first_nonfinite_output(batch.x),
                                      batch)

    def record(self, out, batch):
        self.loss_sum += self.value * batch.size
        self.seen += batch.size
        self.correct += self.batch_correct


def strategy_for(trainer, defer_reads: bool):
    if trainer.comm.size > 1:
        return AllreduceAcrossRanks(trainer)
    return DeferredReads(trainer) if defer_reads else EveryStepReads(trainer)
