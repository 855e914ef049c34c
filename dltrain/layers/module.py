"""Module and Parameter: what every layer shares.

A layer is built in two steps, so that configs never state input sizes:
`Layer(**options)` records the options, then `build(input_shape)` (the per-sample shape,
batch axis left out) creates the parameters and returns the output shape.

Padding masks. A batch of right-padded sequences carries its mask on the tensor: `x.padding_mask` is None or a
boolean array (batch, time), True at PADDED positions (torch's key_padding_mask). The model's input gets it from the
data (token ids equal to the padding id), or an `embedding` with `padding_idx` sets it. Every layer's output keeps
its input's mask when the output still has the (batch, time) leading axes (see carry_padding_mask), so a layer that
reads time steps (attention, pooling, recurrent layers, and yours) reads `x.padding_mask` in its forward and needs
nothing else; a layer whose output's axis 1 is no longer the input's time steps says so with
`keeps_padding_mask = False` (see Module).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

from .. import backend
from ..autograd import Tensor
from ..errors import ShapeError
from ..registry import initializers

MAX_PARAMETER_VALUES = 1 << 28  # 268M values (1 GiB in float32) per parameter

_build_data: contextvars.ContextVar[dict | None] = contextvars.ContextVar("build_data", default=None)


@contextlib.contextmanager
def building_for(data: dict | None):
    """While building layers inside it, `data_for_build()` is `data`: what the data tells layers whose options
    default to it ('vocab_size': an embedding's vocabulary, 'padding_id')."""
    token = _build_data.set(dict(data or {}))
    try:
        yield
    finally:
        _build_data.reset(token)


def data_for_build() -> dict:
    """What the data says, for a layer's build_shape: {'vocab_size': ..., 'padding_id': ...} (empty outside
    training/model.py's Model, export and `building_for`)."""
    return _build_data.get() or {}


def carry_padding_mask(x, out, layer=None):
    """`out` with the padding mask of the layer input `x` when the layer did not set its own and the output keeps
    the (batch, time) leading axes (out.ndim >= 3 and out.shape[:2] == mask.shape): a linear map or a normalization
    of each step keeps it, a pooling to (batch, features) or a flatten drops it. A `layer` whose
    keeps_padding_mask is False gets nothing carried: its output has the mask its forward set, or none (shapes alone
    cannot tell a transpose (batch, time, features) -> (batch, features, time) with time == features from a
    per-step map). Module.__call__ applies it, and so must anything that calls a layer's forward methods directly
    (run_layers' fused steps), passing the layer."""
    mask = getattr(x, "padding_mask", None)
    if mask is not None and isinstance(out, Tensor) and out is not x and out.padding_mask is None and \
            getattr(layer, "keeps_padding_mask", True) and out.ndim >= 3 and tuple(out.shape[:2]) == tuple(mask.shape):
        out.padding_mask = mask
    return out


class Parameter(Tensor):
    """A trainable tensor. `decay` says whether weight decay applies (weights yes, biases and norms no)."""

    __slots__ = ("decay",)

    def __init__(self, data, decay: bool = True, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)
        self.decay = decay


class Module:
    """The base of every layer: options in __init__, parameters in build_shape, the computation in forward.

    A layer that reads time steps of (batch, time, features) takes the batch's padding mask from its input,
    `x.padding_mask` (None, or boolean (batch, time), True at padded positions); its output keeps the mask by
    itself while it has the (batch, time) axes (carry_padding_mask). A masked sum over time, registered as yours:

        @layers.register("masked_sum")
        class MaskedSum(Module):
            def build_shape(self, input_shape):
                return input_shape[1:]
            def forward(self, x):
                keep = 1.0 if x.padding_mask is None else ~x.padding_mask[..., None]
                return (x * keep).sum(axis=1)

    The mask is carried by shape: an output (batch, time, ...) of the input's batch and time gets the input's mask
    unless the forward set `out.padding_mask` itself. A layer whose output's axis 1 is not the input's time steps one
    for one (it reorders or mixes them: a transpose, reversing time, a reshape or a convolution across them) sets
    the class attribute `keeps_padding_mask = False`: its output then has only the mask its forward sets (None: no
    mask), even when its shape happens to be (batch, time, ...), as a transpose (batch, time, features) ->
    (batch, features, time) with time == features is. Attention keeps it (position t of the output is the query at
    step t); flatten, a reshape that changes the time axis, conv2d, sequential and residual (whose inner layers
    decide) set False. ONNX export (export/onnx.py) follows the same attribute:

        @layers.register("transpose")
        class Transpose(Module):
            keeps_padding_mask = False
            def build_shape(self, input_shape):
                return input_shape[::-1]
            def forward(self, x):
                return x.transpose(0, 2, 1)
    """

    registry_name = "module"
    keeps_padding_mask = True  # the output's (batch, time) axes, when it has them, are the input's (see above)

    def __init__(self):
        self.training = True
        self.built = False
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.path = self.registry_name  # where it sits in the config, e.g. model[2].linear
        self._parameters: dict[str, Parameter] = {}
        self._buffers: dict[str, object] = {}

    # ------------------------------------------------------------ building

    def build(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Create parameters for per-sample `input_shape`; return the per-sample output shape."""
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self.build_shape(self.input_shape))
        self.built = True
        return self.output_shape

    def build_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Layers override this: make parameters, return the output shape (default: unchanged)."""
        return input_shape

    def add_parameter(self, name: str, array, decay: bool = True) -> Parameter:
        param = Parameter(array, decay=decay, name=name)
        self._parameters[name] = param
        return param

    def check_size(self, shape: tuple) -> tuple:
        """Refuse, naming the layer, a parameter too large to allocate (a typo like units: 10000000)."""
        values = math.prod(shape)
        if values > MAX_PARAMETER_VALUES:
            raise ShapeError(f"{self.path}: a parameter of shape {tuple(shape)} would hold {values:,} values; "
                             f"at most {MAX_PARAMETER_VALUES:,} are allowed per parameter")
        return shape

    def add_weight_and_bias(self, weight_shape: tuple, init: str, bias: bool):
        """'weight' drawn by the named initializer (decayed), and a zero 'bias' of weight_shape[0] (not decayed)."""
        self.check_size(weight_shape)
        weight = self.add_parameter("weight", initializers.get(init)(weight_shape))
        bias_param = None
        if bias:
            bias_param = self.add_parameter("bias", initializers.get("zeros")(weight_shape[:1]), decay=False)
        return weight, bias_param

    def add_buffer(self, name: str, array):
        """State that is saved and moved with the model but not trained (batchnorm statistics)."""
        self._buffers[name] = array
        return array

    def shape_error(self, expected: str, actual) -> ShapeError:
        return ShapeError(f"{self.path}: expected input {expected}, got {actual}")

    # ------------------------------------------------------------ running

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, x: Tensor) -> Tensor:
        return carry_padding_mask(x, self.forward(x), self)

    def children(self) -> list[tuple[str, Module]]:
        return []

    def train(self, mode: bool = True) -> Module:
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    # ------------------------------------------------------------ state

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, param in self._parameters.items():
            yield prefix + name, param
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, object]]:
        for name, array in self._buffers.items():
            yield prefix + name, array
        for name, child in self.children():
            yield from child.named_buffers(f"{prefix}{name}.")

    def state_dict(self) -> dict[str, object]:
        """Name -> array for every parameter and buffer ('0.weight', '3.running_mean', ...)."""
        state = {name: p.data for name, p in self.named_parameters()}
        state.update(self.named_buffers())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into this (built) model; names and shapes must match exactly."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ShapeError(f"state does not fit the model: missing {missing or 'nothing'}, "
                             f"unexpected {unexpected or 'nothing'}")
        for name, array in own.items():
            if tuple(state[name].shape) != tuple(array.shape):
                raise ShapeError(f"state '{name}': expected shape {tuple(array.shape)}, got {tuple(state[name].shape)}")
            xp = backend.array_module(array)
            array[...] = xp.asarray(state[name], dtype=array.dtype)

    def to(self, device: str) -> Module:
        """Move parameters and buffers to 'cpu' or 'gpu'."""
        for param in self._parameters.values():
            param.data = backend.to_device(param.data, device)
        for name, array in self._buffers.items():
            self._buffers[name] = backend.to_device(array, device)
        for _, child in self.children():
            child.to(device)
        return self

    def zero_grad(self) -> None:
        for param in self.parameters():
            param.grad = None

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def describe(self) -> str:
        """Short description of the options, for summaries ('units=10')."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"
