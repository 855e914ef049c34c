"""Layers that arrange others or the data's shape: residual blocks and reshape."""

from __future__ import annotations

import math

from .. import functional as F
from ..registry import initializers, layers
from .core import Sequential
from .module import Module


@layers.register("residual")
class Residual(Sequential):
    """y = layers(x) + shortcut(x): the identity when shapes match, else a learned projection
    (a 1x1 strided convolution for images, a linear map for vectors). The padding mask is the one the inner layers
    give (none when one of them drops it)."""

    def build_shape(self, input_shape):
        output_shape = super().build_shape(input_shape)
        self.projection = None
        if output_shape == tuple(input_shape):
            return output_shape
        if len(input_shape) == 3 and len(output_shape) == 3:
            stride = -(-input_shape[1] // output_shape[1])
            if stride < 1 or -(-input_shape[1] // stride) != output_shape[1] or \
                    -(-input_shape[2] // stride) != output_shape[2]:
                raise self.shape_error(f"a block whose output {output_shape} is its input downsampled by a whole "
                                       "stride", f"input {tuple(input_shape)}")
            self.projection_stride = stride
            shape = (output_shape[0], input_shape[0], 1, 1)
        elif len(input_shape) == 1 and len(output_shape) == 1:
            self.projection_stride = None
            shape = (output_shape[0], input_shape[0])
        else:
            raise self.shape_error(f"a block that keeps the number of axes (its output is {output_shape})",
                                   f"input {tuple(input_shape)}")
        self.projection = self.add_parameter("projection", initializers.get("he_uniform")(self.check_size(shape)))
        return output_shape

    def forward(self, x):
        out = super().forward(x)
        if self.projection is None:
            total = out + x
        elif self.projection_stride is None:
            total = out + F.linear(x, self.projection)
        else:
            total = out + F.conv2d(x, self.projection, stride=self.projection_stride)
        total.padding_mask = out.padding_mask  # Sequential's keeps_padding_mask = False: nothing else carries it
        return total

    def describe(self):
        return "projection" if self.projection is not None else "identity shortcut"


@layers.register("reshape")
class Reshape(Module):
    """Per-sample reshape (one -1 is inferred), e.g. [28, 28] to read a 1x28x28 image as 28 steps of 28 features.
    The padding mask is kept only when the first axis (time) keeps its length, so that each step's values stay that
    step's (a reshape of the features of each step); any other reshape drops it."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = list(shape)

    def build_shape(self, input_shape):
        size = math.prod(input_shape)
        known = math.prod(s for s in self.shape if s != -1)
        unknown = self.shape.count(-1)
        bad = unknown > 1 or any(s < -1 or s == 0 for s in self.shape) or \
            (unknown and size % known) or (not unknown and known != size)
        if bad:
            raise self.shape_error(f"{size} values per sample to fit shape {self.shape}",
                                   f"per-sample shape {tuple(input_shape)}")
        output_shape = tuple(size // known if s == -1 else s for s in self.shape)
        # row-major: the same first axis means each of its rows holds the same values (the same time step)
        self.keeps_padding_mask = bool(input_shape) and output_shape[:1] == tuple(input_shape[:1])
        return output_shape

    def forward(self, x):
        return F.reshape(x, (x.shape[0],) + self.output_shape)

    def describe(self):
        return f"shape={self.shape}"
