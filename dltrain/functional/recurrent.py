"""Recurrent networks over (batch, time, features). rnn is unrolled in time with the ordinary ops, so
backpropagation through time is just autodiff over the unrolled graph; lstm and gru are each one op over the
whole sequence whose backward is backpropagation through time written out (fewer, larger operations: one
product and one pointwise kernel per step each way on the GPU, the hidden weights' gradients one product).

Weights follow torch.nn.RNN / LSTM / GRU: w_ih (G*H, I), w_hh (G*H, H), b_ih and b_hh (G*H,),
gates stacked in torch's order (LSTM: i, f, g, o; GRU: r, z, n). The input projection of all
time steps is one matrix product; only the hidden-state product runs per step.
"""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result
from ..errors import ShapeError
from .activation import tanh
from .linear import linear
from .shape import reshape, stack, transpose


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
    """x_t @ w_ih.T + b_ih for every step at once, time-major: (time, batch, G*H) from one (time * batch, features)
    product. A step's slice [t] is then one contiguous block, read in one sweep by the step forward and written so by
    its backward (a (batch, time, G*H) slice is a row every T*G*H values); and NumPy runs a 3-D @ 2-D product as one
    small product per sample (3x slower for 128 sequences)."""
    n, steps, features = x.shape
    rows = reshape(transpose(x, (1, 0, 2)), (steps * n, features))  # a copy of x, the smallest array here
    return reshape(linear(rows, w_ih, b_ih), (steps, n, -1))


def rnn(input, h0, w_ih, w_hh, b_ih=None, b_hh=None) -> tuple[Tensor, Tensor]:
    """Elman RNN: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh). Returns (all h_t, last h)."""
    x, h, _ = _prepare("rnn", input, h0, w_ih, w_hh, 1)
    projected = _input_projection(x, w_ih, b_ih)
    outputs = []
    for t in range(x.shape[1]):
        h = tanh(projected[t] + linear(h, w_hh, b_hh))
        outputs.append(h)
    return stack(outputs, axis=1), h


def _sequence_setup(projected: Tensor, h0: Tensor):
    """What a whole-sequence op starts from, given the time-major input projections (T, N, G*H) and h_0: (array
    module, steps, batch, hidden units, dtype, the kernels (their recurrent step functions), the hidden states
    (T+1, N, H) with h_0 in place)."""
    xp = backend.array_module(h0.data)
    steps = projected.shape[0]
    n, hidden = h0.shape
    states = xp.empty((steps + 1, n, hidden), dtype=h0.dtype)  # h_0 ... h_T
    states[0] = h0.data
    return xp, steps, n, hidden, h0.dtype, backend.kernels_for(h0.data), states


def lstm(input, state, w_ih, w_hh, b_ih=None, b_hh=None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """LSTM: gates i, f, g, o; c_t = f c_{t-1} + i g; h_t = o tanh(c_t). `state` is (h0, c0) or None.
    Returns (all h_t, (last h, last c)); like gru, the whole sequence is one op (_lstm_sequence)."""
    h0, c0 = state if state is not None else (None, None)
    x, h, hidden = _prepare("lstm", input, h0, w_ih, w_hh, 4)
    c = as_tensor(c0, like=x) if c0 is not None else Tensor(h.data * 0)
    # The two biases only ever enter as their sum: the step kernel adds it (no pass over all the projections for
    # b_ih), and the gradient the two share is summed over the steps once.
    biases = [as_tensor(b, like=x) for b in (b_ih, b_hh) if b is not None]
    bias = biases[0] + biases[1] if len(biases) == 2 else (biases[0] if biases else None)
    hc = _lstm_sequence(_input_projection(x, w_ih, None), h, c, as_tensor(w_hh, like=x), bias)
    outputs, cells = hc[0], hc[1]
    return outputs, (outputs[:, -1], cells[:, -1])


def _lstm_sequence(projected: Tensor, h0: Tensor, c0: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Every h_t and c_t, stacked as (2, N, T, H), from the input projections x_t W_ih^T (T, N, 4H), h_0 and c_0
    (N, H), W_hh and the gates' bias b (b_ih + b_hh, or None).

    Forward, per step: gates_t = h_{t-1} W_hh^T (one product) and the pointwise part (one kernel), which adds
    x_t W_ih^T and b and keeps the activations i, f, g, o. Backward, from the last step to the first:
        dh_t = (gradient of h_t) + d(a_{t+1}) W_hh
        dc_t = (gradient of c_t) + dc_{t+1} f_{t+1} + dh_t o (1 - tanh(c_t)^2)
        d(a_t) = [dc g i (1 - i), dc c_{t-1} f (1 - f), dc i (1 - g^2), dh tanh(c_t) o (1 - o)]
    (a_t the gate pre-activations), then dW_hh = sum_t d(a_t)^T h_{t-1} and db = sum_t d(a_t) over all steps; d(a_t)
    is also the projections' gradient."""
    xp, steps, n, hidden, dtype, step, states = _sequence_setup(projected, h0)
    cells = xp.empty((steps + 1, n, hidden), dtype=dtype)  # c_0 ... c_T
    cells[0] = c0.data
    acts = xp.empty((steps, n, 4 * hidden), dtype=dtype)  # h_{t-1} W_hh^T, then the activations i, f, g, o
    w_t = xp.ascontiguousarray(w.data.T)  # the per-step products ran 8% faster so than on the transposed view
    bias = None if b is None else b.data
    for t in range(steps):
        xp.matmul(states[t], w_t, out=acts[t])
        step.lstm_forward(projected.data[t], acts[t], bias, cells[t], states[t + 1], cells[t + 1])
    out = xp.empty((2, n, steps, hidden), dtype=dtype)
    out[0] = states[1:].transpose(1, 0, 2)
    out[1] = cells[1:].transpose(1, 0, 2)

    def backward(g):
        g = xp.ascontiguousarray(g)
        d_gates = xp.empty_like(acts)  # d(a_t) (T, N, 4H): the projections' gradient as well (a_t = x_t W_ih^T + ...)
        carried = xp.empty((n, hidden), dtype=dtype)  # d(a_{t+1}) W_hh
        dc_next = xp.empty((n, hidden), dtype=dtype)  # dc_{t+1} f_{t+1}
        for t in range(steps - 1, -1, -1):
            step.lstm_backward(g[0][:, t], g[1][:, t], carried, dc_next, t < steps - 1, acts[t], cells[t],
                               cells[t + 1], d_gates[t], d_gates[t])
            if t > 0 or h0.requires_grad:
                xp.matmul(d_gates[t], w.data, out=carried)
        flat = d_gates.reshape(steps * n, 4 * hidden)
        grads = [d_gates if projected.requires_grad else None,
                 carried if h0.requires_grad else None,
                 dc_next if c0.requires_grad else None,
                 flat.T @ states[:-1].reshape(steps * n, hidden) if w.requires_grad else None]
        if b is not None:
            grads.append(flat.sum(axis=0) if b.requires_grad else None)
        return grads

    parents = (projected, h0, c0, w) if b is None else (projected, h0, c0, w, b)
    return make_result(out, parents, backward, "lstm")


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
    """All hidden states (N, T, H) from the input projections x_t W_ih^T + b_ih (T, N, 3H) and h_0 (N, H).

    Forward, per step: gh_t = h_{t-1} W_hh^T (one product) and the pointwise part (one kernel on the GPU),
    keeping gh_t (+ b_hh), r_t, z_t and n_t. Backward, from the last step to the first:
        dh_t  = (gradient of output t) + d(gh_{t+1}) W_hh + dh_{t+1} z_{t+1}
        d(in_t) = [d_r, d_z, d_n],  d(gh_t) = [d_r, d_z, d_n r]  (pre-activation gradients of the gates)
    then dW_hh = sum_t d(gh_t)^T h_{t-1} and db_hh = sum_t d(gh_t), each over all steps at once."""
    xp, steps, n, hidden, dtype, step, states = _sequence_setup(projected, h0)
    gh = xp.empty((steps, n, 3 * hidden), dtype=dtype)  # h_{t-1} W_hh^T + b_hh per step
    rz = xp.empty((steps, n, 2 * hidden), dtype=dtype)
    new = xp.empty((steps, n, hidden), dtype=dtype)  # the candidate n_t
    w_t = xp.ascontiguousarray(w.data.T)
    bias = None if b is None else b.data
    for t in range(steps):
        xp.matmul(states[t], w_t, out=gh[t])
        step.gru_forward(projected.data[t], gh[t], bias, states[t], states[t + 1], rz[t], new[t])
    out = xp.ascontiguousarray(states[1:].transpose(1, 0, 2))

    def backward(g):
        g = xp.ascontiguousarray(g)
        d_projected = xp.empty(projected.shape, dtype=dtype)
        d_gh = xp.empty_like(gh)
        carried = xp.empty((n, hidden), dtype=dtype)  # d(gh_{t+1}) W_hh
        direct = xp.empty((n, hidden), dtype=dtype)  # dh_{t+1} z_{t+1}
        for t in range(steps - 1, -1, -1):
            step.gru_backward(g[:, t], carried, direct, t < steps - 1, states[t], rz[t], new[t], gh[t],
                              d_projected[t], d_gh[t])
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
