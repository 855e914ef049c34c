"""Where a training step's time goes, layer by layer: `dltrain profile CONFIG`.

Runs the trainer's own train_step on the config's model and data (nothing is written) for the free-running
step time, then times one part at a time: gathering the batch, each top-level layer's forward, the loss, each
layer's backward (every op made while a layer ran has its backward timed and charged to that layer), gradient
clipping when the config clips, and the optimizer step. On a
GPU the device is synchronised around every part, so the parts add up to more than a free-running
step (no overlap of host and GPU work); the free-running step time is measured separately and shown.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from .. import backend
from ..autograd import Tensor
from ..layers.core import fused_steps
from ..layers.module import carry_padding_mask
from ..optim import clip_grad_norm
from .steps import Batch


@dataclass
class Profile:
    """Median milliseconds per step of each part, in step order."""

    forward: dict = field(default_factory=dict)  # layer or loss -> [ms per step]
    backward: dict = field(default_factory=dict)
    other: dict = field(default_factory=dict)  # batch gather, optimizer step -> [ms per step]
    free_running_ms: float = 0.0
    batch_size: int = 0
    device: str = "cpu"

    def rows(self) -> list[tuple[str, float | None, float | None, float]]:
        """(part, forward ms, backward ms, total ms), medians over the timed steps, in step order;
        None where a part has no forward and backward (batch gather, optimizer step)."""
        rows = []
        for part in dict.fromkeys(["batch gather", *self.forward, *self.backward, "gradient clipping",
                                   "optimizer step"]):
            if part in self.other:
                rows.append((part, None, None, _median(self.other[part])))
            elif part in self.forward or part in self.backward:
                f, b = _median(self.forward.get(part)), _median(self.backward.get(part))
                rows.append((part, f, b, f + b))
        return rows


def _median(values) -> float:
    return statistics.median(values) if values else 0.0


class _Clock:
    """Times parts of a step, synchronising the device first so a part's time is its own."""

    def __init__(self, device: str):
        self.device = device

    def now(self) -> float:
        backend.synchronize(self.device)
        return time.perf_counter()


def _tensors_made_since(root: Tensor, known: set) -> list[Tensor]:
    """The op results reachable from `root` that are not in `known` (and marks them known)."""
    found, stack = [], [root]
    while stack:
        tensor = stack.pop()
        if id(tensor) in known:
            continue
        known.add(id(tensor))
        if tensor.backward_fn is not None:
            found.append(tensor)
        stack.extend(tensor.parents)
    return found


def _charge_backward(tensors: list[Tensor], part: str, spent: dict, clock: _Clock) -> None:
    """Wrap each op's backward so its time is added to spent[part]."""
    for tensor in tensors:
        inner = tensor.backward_fn

        def timed(g, inner=inner):
            start = clock.now()
            grads = inner(g)
            spent[part] = spent.get(part, 0.0) + clock.now() - start
            return grads

        tensor.backward_fn = timed


def profile_steps(trainer, steps: int = 20, warmup: int = 3) -> Profile:
    """Profile `steps` training steps of a set-up Trainer (after `warmup` untimed ones)."""
    cfg = trainer.config.training
    model, optimizer, train = trainer.model, trainer.optimizer, trainer.splits.train
    clock = _Clock(trainer.device)
    batch = min(cfg.batch_size, len(train))
    order = backend.to_device(backend.host_rng().permutation(len(train)), trainer.device)
    network = model.network
    network.train()
    layers = network.layers[:-1] if model.skips_softmax else network.layers
    result = Profile(batch_size=batch, device=trainer.device)

    def indices(step):
        start = (step * batch) % max(1, len(train) - batch + 1)
        return order[start:start + batch]

    trainer.prepare_steps()
    trainer.tally.start_epoch()

    def train_step(step):  # as training runs it: schedule, clipping, non-finite checks
        at = step % trainer.steps_per_epoch
        optimizer.lr = trainer.schedule.lr(0, at)
        idx = indices(step)
        trainer.train_step(Batch(0, at, optimizer.lr, train.x[idx], train.y[idx], len(idx)))

    for step in range(warmup):
        train_step(step)
    start = clock.now()
    for step in range(steps):
        train_step(warmup + step)
    result.free_running_ms = (clock.now() - start) / steps * 1e3

    for step in range(steps):
        forward, spent, other, known = {}, {}, {}, set()
        t0 = clock.now()
        idx = indices(warmup + step)
        x, y = train.x[idx], train.y[idx]
        other["batch gather"] = clock.now() - t0
        h = model.input_tensor(x)
        for layer, _, relu in fused_steps(layers):  # as training runs them: a ReLU inside the layer before it
            part = layer.path if relu is None else f"{layer.path} + {relu.path}"
            t0 = clock.now()
            h = layer(h) if relu is None else carry_padding_mask(h, layer.forward_relu(h), layer)
            forward[part] = clock.now() - t0
            _charge_backward(_tensors_made_since(h, known), part, spent, clock)
        t0 = clock.now()
        loss = model.loss(h, y)
        forward["loss"] = clock.now() - t0
        _charge_backward(_tensors_made_since(loss, known), "loss", spent, clock)
        optimizer.zero_grad()
        loss.backward()
        if cfg.grad_clip:
            t0 = clock.now()
            clip_grad_norm(network.parameters(), cfg.grad_clip)
            other["gradient clipping"] = clock.now() - t0
        t0 = clock.now()
        optimizer.step()
        other["optimizer step"] = clock.now() - t0
        for times, into in ((forward, result.forward), (spent, result.backward), (other, result.other)):
            for part, seconds in times.items():
                into.setdefault(part, []).append(seconds * 1e3)
    return result


def format_profile(profile: Profile) -> str:
    rows = profile.rows()
    total = sum(t for *_, t in rows) or 1.0
    width = max(len(part) for part, *_ in rows)

    def ms(value):
        return f"{'-':>11}" if value is None else f"{value:11.3f}"

    lines = [f"{'part':<{width}}  {'forward ms':>11}  {'backward ms':>11}  {'total ms':>11}  share",
             *(f"{part:<{width}}  {ms(f)}  {ms(b)}  {ms(t)}  {t / total:5.1%}" for part, f, b, t in rows),
             f"{'sum of parts':<{width}}  {'':>11}  {'':>11}  {ms(total)}",
             "",
             f"free-running step: {profile.free_running_ms:.3f} ms at batch {profile.batch_size} on the "
             f"{profile.device} ({profile.batch_size / profile.free_running_ms * 1e3:,.0f} samples/s); the parts "
             f"are timed one by one{', the GPU synchronised around each' if profile.device != 'cpu' else ''}."]
    return "\n".join(lines)
