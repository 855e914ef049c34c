"""Inverted dropout: zero each value with probability p, scale the rest by 1/(1-p)."""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result


def dropout(input, p: float = 0.5, training: bool = True) -> Tensor:
    """In training, a fresh random mask from the run's generator; outside training, the identity."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    x = as_tensor(input)
    if not training or p == 0:
        return x
    # The kept values are scaled now so that evaluation needs no rescaling.
    if p == 1:
        return make_result(x.data * 0, (x,), lambda g: (g * 0,), "dropout")
    out, mask = backend.kernels_for(x.data).dropout(x.data, backend.uniform_like(x.data), p)
    return make_result(out, (x,), lambda g: (g * mask,), "dropout")
