"""Image layers over (batch, channels, height, width): conv2d, max/avg pooling, global average pooling."""

from __future__ import annotations

from typing import Literal

from .. import functional as F
from ..functional.conv import output_size
from ..registry import NonNegativeInt, PositiveInt, layers
from .core import InitName
from .module import Module


class _Spatial(Module):
    """Shared shape logic: input must be (channels, height, width) per sample."""

    def spatial_input(self, input_shape) -> tuple[int, int, int]:
        if len(input_shape) != 3:
            raise self.shape_error("(batch, channels, height, width)", f"per-sample shape {input_shape}")
        return input_shape

    def spatial_output(self, input_shape, kernel: int, stride: int, padding: int, dilation: int = 1):
        _, h, w = input_shape
        oh, ow = (output_size(s, kernel, stride, padding, dilation) for s in (h, w))
        if oh < 1 or ow < 1:
            reach = dilation * (kernel - 1) + 1
            raise self.shape_error(f"at least {reach}x{reach} pixels (after padding {padding}) for its kernel",
                                   f"{h}x{w} (per-sample shape {tuple(input_shape)})")
        return oh, ow


@layers.register("conv2d")
class Conv2D(_Spatial):
    """2-D convolution (cross-correlation) with `filters` output channels; padding 'same' keeps height and width."""

    keeps_padding_mask = False  # each output channel mixes every input channel: axis 1 is not carried one for one

    def __init__(self, filters: PositiveInt, kernel_size: PositiveInt = 3, stride: PositiveInt = 1,
                 padding: NonNegativeInt | Literal["same"] = 0, dilation: PositiveInt = 1, bias: bool = True,
                 init: InitName = "he_uniform"):
        super().__init__()
        self.filters, self.kernel_size, self.stride = filters, kernel_size, stride
        self.padding, self.dilation, self.use_bias, self.init = padding, dilation, bias, init

    def build_shape(self, input_shape):
        channels, _, _ = self.spatial_input(input_shape)
        if self.padding == "same":
            if self.stride != 1 or (self.dilation * (self.kernel_size - 1)) % 2:
                raise self.shape_error("padding 'same' with stride 1 and an odd kernel reach",
                                       f"kernel_size {self.kernel_size}, stride {self.stride}")
            self.padding = self.dilation * (self.kernel_size - 1) // 2
        oh, ow = self.spatial_output(input_shape, self.kernel_size, self.stride, self.padding, self.dilation)
        shape = (self.filters, channels, self.kernel_size, self.kernel_size)
        self.weight, self.bias = self.add_weight_and_bias(shape, self.init, self.use_bias)
        return (self.filters, oh, ow)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def forward_relu(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, activation="relu")

    def forward_batchnorm(self, x, batchnorm, relu: bool):
        """This convolution, the eval-mode batchnorm after it and optionally a ReLU as one op (BatchNorm.fold)."""
        weight, bias = batchnorm.fold(self.weight, self.bias)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation,
                        activation="relu" if relu else None)

    def describe(self):
        return f"filters={self.filters}, kernel={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _Pool(_Spatial):
    function = None

    def __init__(self, kernel_size: PositiveInt = 2, stride: PositiveInt | None = None, padding: NonNegativeInt = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding

    def build_shape(self, input_shape):
        channels, _, _ = self.spatial_input(input_shape)
        if self.padding > self.kernel_size // 2:
            raise self.shape_error(f"padding at most half the kernel ({self.kernel_size // 2})", self.padding)
        return (channels, *self.spatial_output(input_shape, self.kernel_size, self.stride, self.padding))

    def forward(self, x):
        return type(self).function(x, self.kernel_size, self.stride, self.padding)

    def describe(self):
        return f"kernel={self.kernel_size}, stride={self.stride}"


@layers.register("max_pool2d")
class MaxPool2D(_Pool):
    """The largest value of each window (stride defaults to the kernel size)."""

    function = staticmethod(F.max_pool2d)


@layers.register("avg_pool2d")
class AvgPool2D(_Pool):
    """The mean of each window (stride defaults to the kernel size)."""

    function = staticmethod(F.avg_pool2d)


@layers.register("global_avg_pool")
class GlobalAvgPool(_Spatial):
    """(batch, channels, height, width) -> (batch, channels): each channel's mean."""

    def build_shape(self, input_shape):
        return (self.spatial_input(input_shape)[0],)

    def forward(self, x):
        return F.global_avg_pool(x)
