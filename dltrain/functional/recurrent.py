"""Recurrent networks over (batch, time, features), unrolled in time with the ordinary ops, so
backpropagation through time is just autodiff over the unrolled graph.

Weights follow torch.nn.RNN / LSTM / GRU: w_ih (G*H, I), w_hh (G*H, H), b_ih and b_hh (G*H,),
gates stacked in torch's order (LSTM: i, f, g, o; GRU: r, z, n). The input projection of all
time steps is one matrix product; only the hidden-state product runs per step.
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor
from ..errors import ShapeError
from .activation import sigmoid, tanh
from .linear import linear
from .shape import stack


def _prepare(name: str, input, h0, w_ih, w_hh, gates: int):
    x = as_tensor(input)
    if x.ndim != 3:
        raise ShapeError(f"{name}: expected input (batch, time, features), got shape {x.shape}")
    hidden = w_hh.shape[1]
    if w_ih.shape != (gates * hidden, x.shape[2]):
        raise ShapeError(f"{name}: expected w_ih of shape {(gates * hidden, x.shape[2])} for input {x.shape}, "
                         f"got {w_ih.shape}")
    if h0 is None:
        h0 = Tensor(backend.array_module(x.data).zeros((x.shape[0], hidden), dtype=x.dtype))
    return x, as_tensor(h0, like=x), hidden


def _input_projection(x: Tensor, w_ih, b_ih) -> Tensor:
    """x_t @ w_ih.T + b_ih for every step at once: (batch, time, G*H)."""
    return linear(x, w_ih, b_ih)


def rnn(input, h0, w_ih, w_hh, b_ih=None, b_hh=None) -> tuple[Tensor, Tensor]:
    """Elman RNN: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh). Returns (all h_t, last h)."""
    x, h, _ = _prepare("rnn", input, h0, w_ih, w_hh, 1)
    projected = _input_projection(x, w_ih, b_ih)
    outputs = []
    for t in range(x.shape[1]):
        h = tanh(projected[:, t] + linear(h, w_hh, b_hh))
        outputs.append(h)
    return stack(outputs, axis=1), h


def lstm(input, state, w_ih, w_hh, b_ih=None, b_hh=None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """LSTM: gates i, f, g, o; c_t = f c_{t-1} + i g; h_t = o tanh(c_t). `state` is (h0, c0) or None."""
    h0, c0 = state if state is not None else (None, None)
    x, h, hidden = _prepare("lstm", input, h0, w_ih, w_hh, 4)
    c = as_tensor(c0, like=x) if c0 is not None else Tensor(h.data * 0)
    projected = _input_projection(x, w_ih, b_ih)
    outputs = []
    for t in range(x.shape[1]):
        gates = projected[:, t] + linear(h, w_hh, b_hh)
        i = sigmoid(gates[:, :hidden])
        f = sigmoid(gates[:, hidden:2 * hidden])
        g = tanh(gates[:, 2 * hidden:3 * hidden])
        o = sigmoid(gates[:, 3 * hidden:])
        c = f * c + i * g
        h = o * tanh(c)
        outputs.append(h)
    return stack(outputs, axis=1), (h, c)


def gru(input, h0, w_ih, w_hh, b_ih=None, b_hh=None) -> tuple[Tensor, Tensor]:
    """GRU (torch's form): r, z from input and state; n = tanh(x W_in + b_in + r (h W_hn + b_hn));
    h_t = (1 - z) n + z h_{t-1}."""
    x, h, hidden = _prepare("gru", input, h0, w_ih, w_hh, 3)
    projected = _input_projection(x, w_ih, b_ih)
    outputs = []
    for t in range(x.shape[1]):
        step_in = projected[:, t]
        step_h = linear(h, w_hh, b_hh)
        r = sigmoid(step_in[:, :hidden] + step_h[:, :hidden])
        z = sigmoid(step_in[:, hidden:2 * hidden] + step_h[:, hidden:2 * hidden])
        n = tanh(step_in[:, 2 * hidden:] + r * step_h[:, 2 * hidden:])
        h = n + z * (h - n)  # = (1 - z) n + z h, one op fewer
        outputs.append(h)
    return stack(outputs, axis=1), h
