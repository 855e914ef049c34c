"""Recurrent networks over (batch, time, features). rnn and lstm are unrolled in time with the ordinary ops,
so backpropagation through time is just autodiff over the unrolled graph; gru is one op over the whole
sequence whose backward is backpropagation through time written out (fewer, larger operations).

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


def gru(input, h0, w_ih, w_hh, b_ih=None, b_hh=None) -> tuple[Tensor, Tensor]:
    """GRU (torch's form): r, z from input and state; n = tanh(x W_in + b_in + r (h W_hn + b_hn));
    h_t = (1 - z) n + z h_{t-1}. Returns (all h_t, last h).

    The recurrence over the whole sequence is one op (_gru_sequence) with its backward written out as
    backpropagation through time, so the hidden weights' gradients are one matrix product over all steps."""
    x, h, _ = _prepare("gru", input, h0, w_ih, w_hh, 3)
    projected = _input_projection(x, w_ih, b_ih)
    outputs = _gru_sequence(projected, h, as_tensor(w_hh, like=x), None if b_hh is None else as_tensor(b_hh, like=x))
    return outputs, outputs[:, -1]


def _gru_sequence(projected: Tensor, h0: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """All hidden states (N, T, H) from the input projections x_t W_ih^T + b_ih (N, T, 3H) and h_0 (N, H).

    Forward, per step: gh_t = h_{t-1} W_hh^T (one product) and the pointwise part (one kernel on the GPU),
    keeping gh_t (+ b_hh), r_t, z_t and n_t. Backward, from the last step to the first:
        dh_t  = (gradient of output t) + d(gh_{t+1}) W_hh + dh_{t+1} z_{t+1}
        d(in_t) = [d_r, d_z, d_n],  d(gh_t) = [d_r, d_z, d_n r]  (pre-activation gradients of the gates)
    then dW_hh = sum_t d(gh_t)^T h_{t-1} and db_hh = sum_t d(gh_t), each over all steps at once."""
    xp = backend.array_module(h0.data)
    steps = projected.shape[1]
    n, hidden = h0.shape
    dtype = h0.dtype
    step = backend.fused(h0.data) or _NumpyGRUStep
    states = xp.empty((steps + 1, n, hidden), dtype=dtype)  # h_0 ... h_T
    states[0] = h0.data
    gh = xp.empty((steps, n, 3 * hidden), dtype=dtype)  # h_{t-1} W_hh^T + b_hh per step
    rz = xp.empty((steps, n, 2 * hidden), dtype=dtype)
    new = xp.empty((steps, n, hidden), dtype=dtype)  # the candidate n_t
    w_t = w.data.T
    bias = None if b is None else b.data
    for t in range(steps):
        xp.matmul(states[t], w_t, out=gh[t])
        step.gru_forward(projected.data[:, t], gh[t], bias, states[t], states[t + 1], rz[t], new[t])
    out = xp.ascontiguousarray(states[1:].transpose(1, 0, 2))

    def backward(g):
        g = xp.ascontiguousarray(g)
        d_projected = xp.empty(projected.shape, dtype=dtype)
        d_gh = xp.empty_like(gh)
        carried = xp.empty((n, hidden), dtype=dtype)  # d(gh_{t+1}) W_hh
        direct = xp.empty((n, hidden), dtype=dtype)  # dh_{t+1} z_{t+1}
        for t in range(steps - 1, -1, -1):
            step.gru_backward(g[:, t], carried, direct, t < steps - 1, states[t], rz[t], new[t], gh[t],
                              d_projected[:, t], d_gh[t])
            if t > 0 or h0.requires_grad:
                xp.matmul(d_gh[t], w.data, out=carried)
        flat_d_gh = d_gh.reshape(steps * n, 3 * hidden)
        grads = [d_projected if projected.requires_grad else None,
                 carried + direct if h0.requires_grad else None,
                 flat_d_gh.T @ states[:-1].reshape(steps * n, hidden) if w.requires_grad else None]
        if b is not None:
            grads.append(flat_d_gh.sum(axis=0) if b.requires_grad else None)
        return grads

    parents = (projected, h0, w) if b is None else (projected, h0, w, b)
    return make_result(out, parents, backward, "gru")


class _NumpyGRUStep:
    """One GRU step's pointwise part on NumPy arrays, in place (a step is many small arrays, so allocations and
    passes are the cost); the GPU's is one CUDA kernel each way with the same arguments (backend/cuda.py)."""

    @staticmethod
    def gru_forward(step_in, gh, bias, h, h_new, rz, n) -> None:
        """Writes r and z (into rz), n and h_new; adds the bias into gh (kept for the backward)."""
        hidden = h.shape[1]
        if bias is not None:
            gh += bias
        np_ = backend.array_module(h)
        np_.add(step_in[:, :2 * hidden], gh[:, :2 * hidden], out=rz)
        rz *= 0.5
        np_.tanh(rz, out=rz)
        rz += 1
        rz *= 0.5  # sigmoid of r and z together, as (1 + tanh(a / 2)) / 2
        r, z = rz[:, :hidden], rz[:, hidden:]
        np_.multiply(r, gh[:, 2 * hidden:], out=n)
        n += step_in[:, 2 * hidden:]
        np_.tanh(n, out=n)
        np_.subtract(h, n, out=h_new)
        h_new *= z
        h_new += n

    @staticmethod
    def gru_backward(grad, carried, direct, has_next: bool, h, rz, n, gh, d_in, d_gh) -> None:
        """dh = grad (+ carried + direct from step t+1); writes d_in = [d_r, d_z, d_n], d_gh = [d_r, d_z, d_n r]
        and, into `direct`, dh z (this step's direct part of dh_{t-1})."""
        np_ = backend.array_module(h)
        hidden = h.shape[1]
        dh = grad + carried + direct if has_next else grad
        r, z = rz[:, :hidden], rz[:, hidden:]
        d_r, d_z, d_n = d_gh[:, :hidden], d_gh[:, hidden:2 * hidden], d_gh[:, 2 * hidden:]
        np_.multiply(n, n, out=d_n)
        np_.subtract(1, d_n, out=d_n)
        d_n *= 1 - z
        d_n *= dh  # through n = tanh(.) and h_t = (1 - z) n + z h
        np_.subtract(1, r, out=d_r)
        d_r *= r
        d_r *= gh[:, 2 * hidden:]
        d_r *= d_n
        np_.subtract(1, z, out=d_z)
        d_z *= z
        d_z *= h - n
        d_z *= dh
        d_in[...] = d_gh
        d_gh[:, 2 * hidden:] *= r  # gh_n enters as r * gh_n
        np_.multiply(dh, z, out=direct)
