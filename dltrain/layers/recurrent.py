"""Sequence layers over (batch, time, features): rnn, lstm, gru, and embedding for integer tokens."""

from __future__ import annotations

import math

from .. import backend
from .. import functional as F
from ..registry import PositiveInt, layers
from .module import Module


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
        if self.return_sequences:
            return outputs
        return last[0] if isinstance(last, tuple) else last

    def describe(self):
        return f"units={self.units}" + (", return_sequences" if self.return_sequences else "")


@layers.register("rnn")
class RNN(_Recurrent):
    """Elman RNN with tanh; outputs the last state, or every state with return_sequences."""

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
    """Integer tokens (batch, time) -> vectors (batch, time, units), one learned row per token id."""

    def __init__(self, vocab_size: PositiveInt, units: PositiveInt):
        super().__init__()
        self.vocab_size, self.units = vocab_size, units

    def build_shape(self, input_shape):
        shape = self.check_size((self.vocab_size, self.units))
        table = backend.host_rng().standard_normal(shape).astype(backend.default_dtype())
        self.weight = self.add_parameter("weight", table, decay=False)
        return tuple(input_shape) + (self.units,)

    def forward(self, x):
        return F.embedding(x, self.weight)

    def describe(self):
        return f"vocab_size={self.vocab_size}, units={self.units}"
