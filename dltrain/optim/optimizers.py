"""Optimizers: SGD (momentum, Nesterov), Adam and AdamW, plus gradient clipping by global norm.

Formulas follow torch.optim. Weight decay applies to parameters whose `decay` flag is set
(weights), not to biases or normalization parameters, unless `decay_all: true`.
Optimizer state is a plain dict of arrays (checkpointable as is).

The parameters (and the state slots) are views of one flat buffer, updated through the kernels
(backend/kernels.py; the formulas, as array code, in backend/reference.py). On the GPU the gradients are
gathered into one and a step costs two kernel launches instead of several per parameter; on the CPU one
compiled pass updates each parameter's part in turn. An optimizer without `fused_update` (a user's own)
runs its `update`, one parameter at a time.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Lt

from .. import backend
from ..registry import NonNegativeFloat, PositiveFloat, optimizers

Beta = Annotated[float, Ge(0), Lt(1)]


def clip_grad_norm(params, max_norm: float, read: bool = True):
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm before.

    With read=False the norm stays a 0-d array on the gradients' device and the scaling happens there too
    (the GPU training loop checks it later, without waiting for the GPU at every step)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = backend.array_module(grads[0])
    total = xp.sqrt(sum((g.astype(xp.float64) ** 2).sum() for g in grads))
    if not read:  # min(1, max_norm / norm): the same factor as below, computed on the device
        scale = xp.minimum(1.0, max_norm / (total + 1e-6)).astype(grads[0].dtype)
        for g in grads:
            g *= scale
        return total
    total = float(total)
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total


class Optimizer:
    """Base: holds the parameters, the learning rate (set by the schedule) and named state slots."""

    slot_names: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0, decay_all: bool = False):
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.decay_all = decay_all
        self.steps = 0
        self.slots = {name: [None] * len(self.params) for name in self.slot_names}
        self._flat = None  # fused: (flat parameters, {slot: flat slot}, decay, the views handed out) once made

    def decays(self, param) -> bool:
        return self.weight_decay > 0 and (self.decay_all or param.decay)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def set_momentum(self, momentum: float) -> None:
        """A schedule's momentum (one_cycle): an optimizer without one ignores it."""

    def step(self) -> None:
        self.steps += 1
        if type(self).fused_update is Optimizer.fused_update:  # a user's optimizer: its own update per parameter
            for i, p in enumerate(self.params):
                if p.grad is not None:
                    self.update(i, p, p.grad)
            return
        if not self.params or any(p.grad is None for p in self.params):
            self._step_each()
            return
        kernels = backend.kernels_for(self.params[0].data)
        flat, slots, decay = self._flat_buffers()
        if kernels.GATHER_GRADIENTS:  # GPU: one launch for all parameters, after one gathering copy
            grads = backend.array_module(flat).concatenate([p.grad.ravel() for p in self.params])
            self.fused_update(kernels, flat, grads.astype(flat.dtype, copy=False), slots, decay)
            return
        start = 0  # CPU: the buffers' part of each parameter in turn, its gradient read where it is (no copy)
        for p in self.params:
            part = slice(start, start + p.size)
            self.fused_update(kernels, flat[part], p.grad.reshape(-1).astype(flat.dtype, copy=False),
                              {name: slot[part] for name, slot in slots.items()},
                              decay if isinstance(decay, float) else decay[part])
            start += p.size

    def _step_each(self) -> None:
        """Some parameters have no gradient (frozen, or unused in this step): update those that have one, each
        through the kernels on its own part of the buffers (views: updated in place)."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            slots = {name: self.slot(name, i, p.data).reshape(-1) for name in self.slot_names}
            decay = self.weight_decay if self.decays(p) else 0.0
            grad = p.grad.reshape(-1).astype(p.data.dtype, copy=False)
            self.fused_update(backend.kernels_for(p.data), p.data.reshape(-1), grad, slots, decay)

    def update(self, index: int, param, grad) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define update() (or fused_update())")

    def fused_update(self, kernels, flat, grads, slots: dict, decay) -> None:
        """The built-in optimizers' update of flat parameter and slot buffers (or parts of them), through the kernels
        of backend/kernels.py; an optimizer without it defines update() for one parameter at a time."""
        raise NotImplementedError(f"{type(self).__name__} must define fused_update()")

    def _flat_buffers(self):
        """(flat parameters, {slot name: flat slot}, per-element weight decay or 0.0), made once and
        again whenever a parameter or slot array was replaced since (checkpoint loading)."""
        if self._flat is not None:
            flat, slots, decay, views = self._flat
            if all(p.data is v for p, v in zip(self.params, views[None])) and all(
                    a is v for name in self.slot_names for a, v in zip(self.slots[name], views[name])):
                return flat, slots, decay
        xp = backend.array_module(self.params[0].data)
        dtype = self.params[0].data.dtype
        sizes = [p.size for p in self.params]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]

        def flatten(arrays):
            flat = xp.concatenate([xp.asarray(a, dtype=dtype).ravel() for a in arrays])
            return flat, [flat[s:s + n].reshape(p.shape) for s, n, p in zip(starts, sizes, self.params)]

        flat, views = flatten(p.data for p in self.params)
        for p, view in zip(self.params, views):
            p.data = view
        all_views = {None: views}
        slots = {}
        for name in self.slot_names:
            slots[name], all_views[name] = flatten(a if a is not None else xp.zeros(p.shape, dtype)
                                                   for a, p in zip(self.slots[name], self.params))
            self.slots[name] = list(all_views[name])
        decay = 0.0
        if self.weight_decay > 0:
            decay = xp.concatenate([xp.full(p.size, self.weight_decay if self.decays(p) else 0.0, dtype)
                                    for p in self.params])
        self._flat = (flat, slots, decay, all_views)
        return flat, slots, decay

    def slot(self, name: str, index: int, like):
        """A zero-initialised state array (e.g. momentum) for parameter `index`."""
        array = self.slots[name][index]
        if array is None:
            array = self.slots[name][index] = backend.array_module(like).zeros_like(like)
        return array

    def state_dict(self) -> dict:
        """{'steps': n, 'slots': {'velocity/0': array, ...}}; missing slots are not yet created."""
        arrays = {f"{name}/{i}": a for name, per_param in self.slots.items()
                  for i, a in enumerate(per_param) if a is not None}
        return {"steps": self.steps, "slots": arrays}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.slots = {name: [None] * len(self.params) for name in self.slot_names}
        for key, array in state["slots"].items():
            name, index = key.rsplit("/", 1)
            like = self.params[int(index)].data
            self.slots[name][int(index)] = backend.to_device(array, backend.device_of(like)).astype(like.dtype)


@optimizers.register("sgd")
class SGD(Optimizer):
    """Stochastic gradient descent: v = momentum * v + g; p -= lr * v (Nesterov: p -= lr * (g + momentum * v))."""

    slot_names = ("velocity",)

    def __init__(self, params, lr: PositiveFloat = 0.1, momentum: Beta = 0.0, nesterov: bool = False,
                 weight_decay: NonNegativeFloat = 0.0, decay_all: bool = False):
        super().__init__(params, lr, weight_decay, decay_all)
        if nesterov and momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.momentum = momentum
        self.nesterov = nesterov
        if not momentum:  # plain SGD keeps no state (the NumPy update never makes a velocity)
            self.slot_names = ()

    def set_momentum(self, momentum: float) -> None:
        """A schedule's momentum (one_cycle); plain SGD (momentum 0, no velocity) stays plain."""
        if self.momentum:
            self.momentum = momentum

    def fused_update(self, kernels, flat, grads, slots, decay):
        kernels.sgd_step(flat, grads, slots.get("velocity"), decay, self.lr, self.momentum, self.nesterov)


@optimizers.register("adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba): moments of g and g^2, bias-corrected; weight decay added to g (L2)."""

    slot_names = ("m", "v")
    decoupled = False

    def __init__(self, params, lr: PositiveFloat = 0.001, beta1: Beta = 0.9, beta2: Beta = 0.999,
                 eps: PositiveFloat = 1e-8, weight_decay: NonNegativeFloat = 0.0, decay_all: bool = False):
        super().__init__(params, lr, weight_decay, decay_all)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def set_momentum(self, momentum: float) -> None:
        """A schedule's momentum (one_cycle) is Adam's beta1, as torch's OneCycleLR sets it."""
        self.beta1 = momentum

    def fused_update(self, kernels, flat, grads, slots, decay):
        kernels.adam_step(flat, grads, slots["m"], slots["v"], decay, self.lr, self.beta1, self.beta2, self.eps,
                          self.steps, self.decoupled)


@optimizers.register("adamw")
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay before the step."""

    decoupled = True

    def __init__(self, params, lr: PositiveFloat = 0.001, beta1: Beta = 0.9, beta2: Beta = 0.999,
                 eps: PositiveFloat = 1e-8, weight_decay: NonNegativeFloat = 0.01, decay_all: bool = False):
        super().__init__(params, lr, beta1, beta2, eps, weight_decay, decay_all)
