"""Recurrent networks over (batch, time, features), unrolled in time with the ordinary ops, so
backpropagation through time is just autodiff over the unrolled graph.

Weights follow torch.nn.RNN / LSTM / GRU: w_ih (G*H, I), w_hh (G*H, H), b_ih and b_hh (G*H,),
gates stacked in torch's order (LSTM: i, f, g, o; GRU: r, z, n). The input projection of all
time steps is one matrix product; only the hidden-state product runs per step.
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result
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
    kernels = backend.fused(h.data)
    outputs = []
    for t in range(x.shape[1]):
        gates = projected[:, t] + linear(h, w_hh, b_hh)
        if kernels:  # GPU: the pointwise part is one kernel each way
            hc = _fused_lstm_step(kernels, gates, c)
            h, c = hc[0], hc[1]
            outputs.append(h)
            continue
        i = sigmoid(gates[:, :hidden])
        f = sigmoid(gates[:, hidden:2 * hidden])
        g = tanh(gates[:, 2 * hidden:3 * hidden])
        o = sigmoid(gates[:, 3 * hidden:])
        c = f * c + i * g
        h = o * tanh(c)
        outputs.append(h)
    return stack(outputs, axis=1), (h, c)


def _fused_lstm_step(kernels, gates: Tensor, c: Tensor) -> Tensor:
    """h_t and c_t stacked as (2, N, H), from the gate pre-activations and c_{t-1} (the GPU's LSTM step)."""
    hc, saved = kernels.lstm_forward(gates.data, c.data)

    def backward(g):
        d_gates, grad_c = kernels.lstm_backward(g, c.data, saved)
        return d_gates, (grad_c if c.requires_grad else None)

    return make_result(hc, (gates, c), backward, "lstm_cell")


def gru_cell(step_in, h, w_hh, b_hh=None) -> Tensor:
    """One GRU step as a single fused op (forward and hand-derived backward side by side).

    step_in = x_t W_ih^T + b_ih (N, 3H), h = h_{t-1} (N, H):
        gh = h W_hh^T + b_hh;  r = s(in_r + gh_r);  z = s(in_z + gh_z);  n = tanh(in_n + r gh_n)
        h_t = n + z (h - n)
    Checked against the same step written with separate ops (tests/layers).
    """
    step_in, h = as_tensor(step_in), as_tensor(h)
    w = as_tensor(w_hh, like=h)
    b = None if b_hh is None else as_tensor(b_hh, like=h)
    xp = backend.array_module(h.data)
    hidden = h.shape[1]
    gh = h.data @ w.data.T
    if b is not None:
        gh += b.data
    kernels = backend.fused(h.data)
    if kernels:  # GPU: the pointwise part of each direction is one kernel
        out, r, z, n = kernels.gru_forward(step_in.data, gh, h.data)

        def fused_backward(g):
            d_gates, d_gh, grad_h = kernels.gru_backward(g, h.data, r, z, n, gh)
            if h.requires_grad:
                grad_h += d_gh @ w.data
            grads = [d_gates if step_in.requires_grad else None, grad_h if h.requires_grad else None,
                     d_gh.T @ h.data if w.requires_grad else None]
            if b is not None:
                grads.append(d_gh.sum(axis=0) if b.requires_grad else None)
            return grads

        return make_result(out, (step_in, h, w) if b is None else (step_in, h, w, b), fused_backward, "gru_cell")
    # In place where possible: a step is many small arrays, so allocations and passes are the cost.
    rz = xp.add(step_in.data[:, :2 * hidden], gh[:, :2 * hidden])
    rz *= 0.5
    xp.tanh(rz, out=rz)
    rz += 1
    rz *= 0.5  # sigmoid of r and z together, as (1 + tanh(a / 2)) / 2
    r, z = rz[:, :hidden], rz[:, hidden:]
    gh_n = gh[:, 2 * hidden:]
    n = xp.multiply(r, gh_n)
    n += step_in.data[:, 2 * hidden:]
    xp.tanh(n, out=n)
    out = xp.subtract(h.data, n)
    out *= z
    out += n

    def backward(g):
        d_gates = xp.empty_like(gh)  # gradient of the pre-activations [r, z, n]
        d_r, d_z, d_n = d_gates[:, :hidden], d_gates[:, hidden:2 * hidden], d_gates[:, 2 * hidden:]
        xp.multiply(n, n, out=d_n)
        xp.subtract(1, d_n, out=d_n)
        d_n *= 1 - z
        d_n *= g  # through n = tanh(.) and h_t = (1 - z) n + z h
        xp.subtract(1, r, out=d_r)
        d_r *= r
        d_r *= gh_n
        d_r *= d_n
        xp.subtract(1, z, out=d_z)
        d_z *= z
        d_z *= h.data - n
        d_z *= g
        d_gh = d_gates.copy()
        d_gh[:, 2 * hidden:] *= r  # gh_n enters as r * gh_n
        grad_h = None
        if h.requires_grad:
            grad_h = d_gh @ w.data
            grad_h += g * z
        grads = [d_gates if step_in.requires_grad else None, grad_h,
                 d_gh.T @ h.data if w.requires_grad else None]
        if b is not None:
            grads.append(d_gh.sum(axis=0) if b.requires_grad else None)
        return grads

    parents = (step_in, h, w) if b is None else (step_in, h, w, b)
    return make_result(out, parents, backward, "gru_cell")


def gru(input, h0, w_ih, w_hh, b_ih=None, b_hh=None) -> tuple[Tensor, Tensor]:
    """GRU (torch's form): r, z from input and state; n = tanh(x W_in + b_in + r (h W_hn + b_hn));
    h_t = (1 - z) n + z h_{t-1}. Each step is one fused gru_cell op."""
    x, h, _ = _prepare("gru", input, h0, w_ih, w_hh, 3)
    projected = _input_projection(x, w_ih, b_ih)
    outputs = []
    for t in range(x.shape[1]):
        h = gru_cell(projected[:, t], h, w_hh, b_hh)
        outputs.append(h)
    return stack(outputs, axis=1), h
