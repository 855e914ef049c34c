"""Module and Parameter: what every layer shares.

A layer is built in two steps, so that configs never state input sizes:
`Layer(**options)` records the options, then `build(input_shape)` (the per-sample shape,
batch axis left out) creates the parameters and returns the output shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from .. import backend
from ..autograd import Tensor
from ..errors import ShapeError
from ..registry import initializers

MAX_PARAMETER_VALUES = 1 << 28  # 268M values (1 GiB in float32) per parameter


class Parameter(Tensor):
    """A trainable tensor. `decay` says whether weight decay applies (weights yes, biases and norms no)."""

    __slots__ = ("decay",)

    def __init__(self, data, decay: bool = True, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)
        self.decay = decay


class Module:
    registry_name = "module"

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
        return self.forward(x)

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
