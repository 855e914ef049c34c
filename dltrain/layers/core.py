"""The basic layers: linear, activations, dropout, flatten, batchnorm and the sequential container.

Each is registered under the name a config uses; its constructor's typed signature is its
parameter list (see dltrain/registry.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from .. import backend
from .. import functional as F
from ..autograd import Tensor, is_grad_enabled
from ..registry import EntryOf, NonNegativeFloat, PositiveFloat, PositiveInt, Probability, initializers, layers
from . import init as _init  # noqa: F401 (registers the initializers)
from .module import Module, carry_padding_mask

InitName = Annotated[str, EntryOf(initializers)]  # a registered initializer, looked up when a config is checked


@layers.register("linear")
class Linear(Module):
    """Fully connected: y = x W^T + b, W shaped (units, in_features) as in torch.nn.Linear."""

    def __init__(self, units: PositiveInt, bias: bool = True, init: InitName = "he_uniform"):
        super().__init__()
        self.units = units
        self.use_bias = bias
        self.init = init

    def build_shape(self, input_shape):
        if len(input_shape) != 1:
            raise self.shape_error("(batch, features): flatten first", f"per-sample shape {input_shape}")
        self.weight, self.bias = self.add_weight_and_bias((self.units, input_shape[0]), self.init, self.use_bias)
        return (self.units,)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def forward_relu(self, x):
        return F.linear(x, self.weight, self.bias, activation="relu")

    def forward_batchnorm(self, x, batchnorm, relu: bool):
        """This layer, the eval-mode batchnorm after it and optionally a ReLU as one linear map (see BatchNorm.fold)."""
        weight, bias = batchnorm.fold(self.weight, self.bias)
        return F.linear(x, weight, bias, activation="relu" if relu else None)

    def describe(self):
        return f"units={self.units}" + ("" if self.use_bias else ", bias=False")


class _Activation(Module):
    """An elementwise function with no parameters."""

    function = None

    def forward(self, x):
        return type(self).function(x)


@layers.register("relu")
class ReLU(_Activation):
    """The rectified linear unit: max(x, 0), elementwise."""

    function = staticmethod(F.relu)


@layers.register("tanh")
class Tanh(_Activation):
    """The hyperbolic tangent, elementwise."""

    function = staticmethod(F.tanh)


@layers.register("sigmoid")
class Sigmoid(_Activation):
    """The logistic sigmoid: 1 / (1 + exp(-x)), elementwise."""

    function = staticmethod(F.sigmoid)


@layers.register("leaky_relu")
class LeakyReLU(Module):
    """x for x > 0, negative_slope * x otherwise."""

    def __init__(self, negative_slope: NonNegativeFloat = 0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


@layers.register("gelu")
class GELU(Module):
    """x * Phi(x), exact ('none') or with the tanh approximation."""

    def __init__(self, approximate: Literal["none", "tanh"] = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)


@layers.register("softmax")
class Softmax(Module):
    """Probabilities over the last axis. Before a cross_entropy loss, training uses its logits."""

    def forward(self, x):
        return F.softmax(x, dim=-1)


@layers.register("dropout")
class Dropout(Module):
    """Zero each value with probability `rate` in training (kept ones scaled by 1/(1-rate)); identity in eval."""

    def __init__(self, rate: Probability = 0.5):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        return F.dropout(x, self.rate, self.training)

    def describe(self):
        return f"rate={self.rate}"


@layers.register("flatten")
class Flatten(Module):
    """(batch, d1, d2, ...) -> (batch, d1 * d2 * ...). The padding mask ends here (no time axis is left)."""

    keeps_padding_mask = False

    def build_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x):
        return F.flatten(x)


@layers.register("batchnorm")
class BatchNorm(Module):
    """Normalize each feature (axis 1) by batch statistics in training, running ones in eval; then scale and shift.

    momentum follows torch: running = (1 - momentum) * running + momentum * batch.
    """

    def __init__(self, momentum: Probability = 0.1, eps: PositiveFloat = 1e-5, affine: bool = True):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.affine = affine

    def build_shape(self, input_shape):
        features = input_shape[0]
        dtype = backend.default_dtype()
        if self.affine:
            self.weight = self.add_parameter("weight", initializers.get("ones")((features,)), decay=False)
            self.bias = self.add_parameter("bias", initializers.get("zeros")((features,)), decay=False)
        else:
            self.weight = self.bias = None
        self.add_buffer("running_mean", backend.np.zeros(features, dtype=dtype))
        self.add_buffer("running_var", backend.np.ones(features, dtype=dtype))
        return input_shape

    def forward(self, x, activation=None):
        return F.batch_norm(x, self._buffers["running_mean"], self._buffers["running_var"], self.weight, self.bias,
                            training=self.training, momentum=self.momentum, eps=self.eps, activation=activation)

    def forward_relu(self, x):
        return self.forward(x, activation="relu")

    def fold(self, weight, bias):
        """Eval mode: the (weight, bias) arrays of the layer before this one (output channels first) with this
        normalization folded in, so that one op does both: x * scale + shift per channel applied to W x + b is
        (scale W) x + (scale b + shift)."""
        kernels = backend.kernels_for(weight.data)
        _, scale, shift = kernels.batch_norm_eval_scale(self._buffers["running_mean"], self._buffers["running_var"],
                                                        None if self.weight is None else self.weight.data,
                                                        None if self.bias is None else self.bias.data, self.eps)
        folded_weight = weight.data * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        return folded_weight, shift if bias is None else bias.data * scale + shift


@layers.register("layernorm")
class LayerNorm(Module):
    """Normalize each position over its last axis (features) with its own mean and variance, then scale and shift:
    torch.nn.LayerNorm(features) over (batch, ..., features). The same in training and evaluation.

    Options:
        eps: added to the variance.
        affine: learn a scale `weight` (ones at first) and a shift `bias` (zeros), one per feature.
    """

    def __init__(self, eps: PositiveFloat = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.affine = affine

    def build_shape(self, input_shape):
        if not input_shape:
            raise self.shape_error("(batch, ..., features)", "(batch,)")
        self.features = input_shape[-1]
        if self.affine:
            self.weight = self.add_parameter("weight", initializers.get("ones")((self.features,)), decay=False)
            self.bias = self.add_parameter("bias", initializers.get("zeros")((self.features,)), decay=False)
        else:
            self.weight = self.bias = None
        return input_shape

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)

    def describe(self):
        return ", ".join([f"eps={self.eps:g}"] + ([] if self.affine else ["affine=False"]))


def format_shape(shape) -> str:
    """A per-sample shape shown with its batch axis: (batch, 28, 28)."""
    return "(" + ", ".join(["batch", *map(str, shape)]) + ")"


def _offers(layer, method: str) -> bool:
    """Whether `layer` has `method` from the class that gives it its forward: a subclass (a plugin's layer) that
    overrides forward runs as itself, never through its parent's fused op."""
    mro = type(layer).__mro__
    owner = next((cls for cls in mro if method in vars(cls)), None)
    return owner is not None and owner is next(cls for cls in mro if "forward" in vars(cls))


def fused_steps(layers: list, fold_batchnorm: bool = False):
    """The layers as run: (layer, batchnorm, relu). A ReLU layer right after a layer that has forward_relu (linear,
    conv2d, batchnorm) runs inside that layer's op: the same values, one pass over the output fewer and no array of
    its own. With fold_batchnorm (inference: no gradients), an eval-mode batchnorm right after a layer that has
    forward_batchnorm (linear, conv2d) is folded into its weights, with the ReLU after it: three layers, one op."""
    i = 0
    while i < len(layers):
        layer = layers[i]
        batchnorm = None
        if fold_batchnorm and _offers(layer, "forward_batchnorm") and i + 1 < len(layers) and \
                type(layers[i + 1]) is BatchNorm and not layers[i + 1].training:
            batchnorm = layers[i + 1]
        after = i + (2 if batchnorm is not None else 1)
        relu = layers[after] if after < len(layers) and type(layers[after]) is ReLU else None
        if relu is not None and (batchnorm is not None or _offers(layer, "forward_relu")):
            yield layer, batchnorm, relu
            i = after + 1
        else:
            yield layer, batchnorm, None
            i = after


def run_layers(layers: list, x: Tensor, watch=None) -> Tensor:
    """Each layer in turn, fused as fused_steps says (batchnorms folded when no gradient is recorded); none when
    `watch(layer, output)` is to see every layer's output (gradient logging)."""
    if watch is not None:
        for layer in layers:
            x = layer(x)
            watch(layer, x)
        return x
    for layer, batchnorm, relu in fused_steps(layers, fold_batchnorm=not is_grad_enabled()):
        if batchnorm is not None:
            x = carry_padding_mask(x, layer.forward_batchnorm(x, batchnorm, relu is not None), layer)
        else:
            x = layer(x) if relu is None else carry_padding_mask(x, layer.forward_relu(x), layer)
    return x


@layers.register("sequential")
class Sequential(Module):
    """Layers applied in order; the output shape of each is the input shape of the next. The output's padding mask
    is the one its last layer gives (each inner layer carries or drops it), never the input's brought back."""

    keeps_padding_mask = False  # the inner layers decide

    def __init__(self, layers: list):  # noqa: A002 (the config key)
        super().__init__()
        self.layers = list(layers)

    def children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def build_shape(self, input_shape):
        # Paths as the config spells them: model[2].linear, model[3].residual.layers[0].conv2d
        prefix = self.path if self.path == "model" else f"{self.path}.layers"
        shape = input_shape
        for i, layer in enumerate(self.layers):
            layer.path = f"{prefix}[{i}].{layer.registry_name}"
            shape = layer.build(shape)
        return shape

    def forward(self, x: Tensor) -> Tensor:
        return run_layers(self.layers, x)

    def summary_rows(self, depth: int = 0) -> list[tuple[str, str, tuple, int]]:
        """(indented name, options, output shape, parameter count) per layer, nested ones indented."""
        rows = []
        for layer in self.layers:
            rows.append(("  " * depth + layer.registry_name, layer.describe(), layer.output_shape,
                         layer.num_parameters()))
            if isinstance(layer, Sequential):
                rows.extend(layer.summary_rows(depth + 1))
        return rows

    def summary(self) -> str:
        """A plain-text table: each layer's output shape and parameter count, then the total."""
        header = ("layer", "options", "output shape", "params")
        body = [(name, opts, format_shape(shape), f"{count:,}")
                for name, opts, shape, count in self.summary_rows()]
        body.append(("total", "", "", f"{self.num_parameters():,}"))
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)
