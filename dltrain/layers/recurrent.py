"""Sequence layers over (batch, time, features): rnn, lstm, gru, embedding for integer tokens, and sequence pooling.

Each reads the batch's padding mask from its input (`x.padding_mask`, True at padded positions; see module.py), so
that a right-padded sequence gives what it gives alone.
"""

from __future__ import annotations

import math
from typing import Literal

from .. import backend
from .. import functional as F
from ..autograd import Tensor
from ..errors import ConfigError
from ..registry import NonNegativeInt, PositiveInt, layers
from .core import format_shape
from .module import Module, data_for_build


def last_real_steps(mask):
    """(index of each sequence's last unpadded step, whether it has one): two (batch,) arrays from a padding mask
    (batch, time); 0 steps for a sequence that is all padding."""
    xp = backend.array_module(mask)
    real = ~mask
    return mask.shape[1] - 1 - xp.argmax(real[:, ::-1], axis=1), real.any(axis=1)


def gather_last(x: Tensor, mask) -> Tensor:
    """x (batch, time, ...) at each sequence's last unpadded step (zeros for a sequence that is all padding)."""
    xp = backend.array_module(x.data)
    last, has = last_real_steps(mask)
    picked = x[xp.arange(x.shape[0]), last]
    return picked * has.reshape((-1,) + (1,) * (picked.ndim - 1)).astype(x.dtype)


def real_steps(x: Tensor, mask):
    """The padding mask as a float (batch, time, 1) array of x's dtype: 1 at real steps, 0 at padded ones."""
    return (~mask)[..., None].astype(x.dtype)


def check_sequence_input(layer: Module, input_shape) -> tuple[int, int]:
    """(time, features) of a per-sample (time, features) input, else the layer's ShapeError."""
    if len(input_shape) != 2:
        raise layer.shape_error("(batch, time, features)", format_shape(tuple(input_shape)))
    return tuple(input_shape)


class _Recurrent(Module):
    gates = 1
    function = None

    def __init__(self, units: PositiveInt, return_sequences: bool = False):
        super().__init__()
        self.units = units
        self.return_sequences = return_sequences

    def build_shape(self, input_shape):
        if len(input_shape) != 2:
            raise self.shape_error("(batch, time, features); a reshape layer turns images into sequences",
                                   f"per-sample shape {input_shape}")
        time, features = input_shape
        size = self.gates * self.units
        bound = 1 / math.sqrt(self.units)  # torch's initialisation: U(-1/sqrt(H), 1/sqrt(H)) for all weights

        def uniform(shape):
            self.check_size(shape)
            return backend.host_rng().uniform(-bound, bound, shape).astype(backend.default_dtype())

        self.w_ih = self.add_parameter("weight_ih", uniform((size, features)))
        self.w_hh = self.add_parameter("weight_hh", uniform((size, self.units)))
        self.b_ih = self.add_parameter("bias_ih", uniform((size,)), decay=False)
        self.b_hh = self.add_parameter("bias_hh", uniform((size,)), decay=False)
        return (time, self.units) if self.return_sequences else (self.units,)

    def forward(self, x):
        outputs, last = type(self).function(x, None, self.w_ih, self.w_hh, self.b_ih, self.b_hh)
        mask = x.padding_mask
        if mask is not None:  # right padding: the steps after a sequence's end never reach its earlier states
            return outputs * real_steps(outputs, mask) if self.return_sequences else gather_last(outputs, mask)
        if self.return_sequences:
            return outputs
        return last[0] if isinstance(last, tuple) else last

    def describe(self):
        return f"units={self.units}" + (", return_sequences" if self.return_sequences else "")


@layers.register("rnn")
class RNN(_Recurrent):
    """Elman RNN with tanh; outputs the last state, or every state with return_sequences.

    Options (rnn, lstm and gru alike):
        units: the size of the hidden state.
        return_sequences: every step's state (batch, time, units) instead of the last one (batch, units).

    With a padding mask (right-padded sequences), the last state is each sequence's state at its last real step,
    and the states at padded steps are zeros; a sequence that is all padding gives zeros either way.
    """

    function = staticmethod(F.rnn)


@layers.register("lstm")
class LSTM(_Recurrent):
    """Long short-term memory (torch's gate layout i, f, g, o)."""

    gates = 4
    function = staticmethod(F.lstm)


@layers.register("gru")
class GRU(_Recurrent):
    """Gated recurrent unit (torch's formulation, gates r, z, n)."""

    gates = 3
    function = staticmethod(F.gru)


@layers.register("embedding")
class Embedding(Module):
    """Integer tokens (batch, time) -> vectors (batch, time, units), one learned row per token id (torch.nn.Embedding).

    Options:
        units: the size of each vector.
        vocab_size: the number of rows (token ids 0..vocab_size-1); omitted: the data's vocabulary (tokenized text).
        padding_idx: as torch's: that row starts at zero and gets no gradient, and when the input has no padding
            mask yet, the tokens equal to it become the mask (True at padded positions).
    """

    def __init__(self, units: PositiveInt, vocab_size: PositiveInt | None = None,
                 padding_idx: NonNegativeInt | None = None):
        super().__init__()
        self.vocab_size, self.units, self.padding_idx = vocab_size, units, padding_idx

    def build_shape(self, input_shape):
        if self.vocab_size is None:
            self.vocab_size = data_for_build().get("vocab_size")
            if self.vocab_size is None:
                raise ConfigError(f"{self.path}: vocab_size is not set and the data has no vocabulary to take it from "
                                  f"(tokenized text has one); set {self.registry_name}.vocab_size")
        if self.padding_idx is not None and self.padding_idx >= self.vocab_size:
            raise ConfigError(f"{self.path}: padding_idx {self.padding_idx} is not a token id of the vocabulary "
                              f"(0..{self.vocab_size - 1})")
        shape = self.check_size((self.vocab_size, self.units))
        table = backend.host_rng().standard_normal(shape).astype(backend.default_dtype())
        if self.padding_idx is not None:
            table[self.padding_idx] = 0
        self.weight = self.add_parameter("weight", table, decay=False)
        return tuple(input_shape) + (self.units,)

    def forward(self, x):
        out = F.embedding(x, self.weight, self.padding_idx)
        if self.padding_idx is not None and getattr(x, "padding_mask", None) is None and x.ndim == 2:
            raw = x.data if isinstance(x, Tensor) else x
            xp = backend.array_module(self.weight.data)
            out.padding_mask = xp.rint(xp.asarray(raw)) == self.padding_idx if raw.dtype.kind == "f" else \
                xp.asarray(raw) == self.padding_idx
        return out

    def describe(self):
        text = f"vocab_size={self.vocab_size}, units={self.units}"
        return text + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}")


@layers.register("sequence_pool")
class SequencePool(Module):
    """(batch, time, features) -> (batch, features): one vector per sequence, over its real (unpadded) steps.

    Options:
        mode: mean (over the real steps), max (over the real steps; tied maxima share the gradient, as
            torch.amax), first (step 0), last (the last real step). A sequence that is all padding gives zeros
            (and no gradient), whatever the mode: a batch of nothing but padding gives a batch of zeros.

    The padding mask ends here: the output has no time axis.
    """

    def __init__(self, mode: Literal["mean", "max", "first", "last"] = "mean"):
        super().__init__()
        self.mode = mode

    def build_shape(self, input_shape):
        return check_sequence_input(self, input_shape)[1:]

    def forward(self, x):
        mask = x.padding_mask
        xp = backend.array_module(x.data)
        if self.mode == "first":
            if mask is None:
                return x[:, 0]
            _, has = last_real_steps(mask)  # step 0 of a sequence that is all padding is padding: zeros
            return F.where(has[:, None], x[:, 0], xp.zeros((), dtype=x.dtype))
        if mask is None:
            return {"mean": lambda: F.mean(x, axis=1), "max": lambda: F.max(x, axis=1),
                    "last": lambda: x[:, -1]}[self.mode]()
        if self.mode == "last":
            return gather_last(x, mask)
        real = real_steps(x, mask)
        if self.mode == "mean":
            counts = real.sum(axis=1)
            return F.sum(x * real, axis=1) * (1 / backend.array_module(counts).maximum(counts, 1))
        _, has = last_real_steps(mask)
        pooled = F.max(F.where(real > 0, x, xp.asarray(-xp.inf, dtype=x.dtype)), axis=1)
        return F.where(has[:, None], pooled, xp.zeros((), dtype=x.dtype))

    def describe(self):
        return f"mode={self.mode}"


@layers.register("mean_pool")
class MeanPool(SequencePool):
    """The mean over each sequence's real (unpadded) steps: (batch, time, features) -> (batch, features); the short
    form of sequence_pool with mode mean. No options."""

    def __init__(self):
        super().__init__("mean")

    def describe(self):
        return ""
