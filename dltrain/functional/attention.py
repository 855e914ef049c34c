"""Scaled dot-product attention: softmax(q k^T * scale + mask) v, as torch.nn.functional names it."""

from __future__ import annotations

import math

from .. import backend
from ..autograd import Tensor, as_tensor, make_result, unbroadcast
from ..errors import ShapeError


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None) -> Tensor:
    """Attention of queries (..., L, E) over keys (..., S, E) and their values (..., S, Ev), giving (..., L, Ev):
    weights = softmax(query key^T * scale + mask) over the S keys, then dropout on the weights, then weights @ value.
    torch.nn.functional.scaled_dot_product_attention's arguments and semantics (we use (batch, heads, time, features)):

    - The leading dimensions of query, key and value broadcast together; the products run as the array module's
      batched matmul over them.
    - attn_mask, broadcastable to the weights' shape (..., L, S): boolean, True where a key takes part (a padded key
      is False), or floating point, added to the scores. It gets no gradient.
    - is_causal: query i attends to keys 0..i (torch's lower-triangular mask of (L, S), aligned at the top left).
    - scale: 1 / sqrt(E) unless given.
    - dropout_p: inverted dropout of the weights with the run's seeded generator (backend.uniform_like), a weight
      kept where its draw is >= dropout_p and scaled by 1 / (1 - dropout_p). Pass 0 in evaluation: there is no
      `training` flag here, as in torch.

    A query row whose every key is masked (by a boolean mask, is_causal or -inf in a float mask) gets zero weights:
    its output is 0 and the gradients through it are 0, never NaN, so a padded batch carries no NaN into the loss.
    torch 2.13 does the same (its math path's "safe softmax", since torch 2.5); older torch, and softmax over a row of
    -inf anywhere, give NaN there.

    Where this differs from torch 2.13, on purpose:
    - attn_mask and is_causal together are allowed: a key takes part where both let it (torch refuses the pair), so a
      causal layer can take its padding mask as it is.
    - A float mask of another float dtype is cast to the query's (torch refuses it).

    For the backward only the weights after the softmax (L x S per head, before dropout) are kept with the inputs,
    and the dropout's keep mask (one byte per weight) when dropout_p > 0.
    """
    q = as_tensor(query)
    k = as_tensor(key, like=q)
    v = as_tensor(value, like=q)
    xp = backend.array_module(q.data)
    _check_inputs(q, k, v, xp)
    if not 0 <= dropout_p <= 1:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be in [0, 1], got {dropout_p}")
    weights_shape = _leading_shape(q, k, v) + (q.shape[-2], k.shape[-2])
    allowed, additive = _masks(xp, attn_mask, is_causal, q.dtype, weights_shape)
    factor = q.dtype.type(1 / math.sqrt(q.shape[-1]) if scale is None else scale)

    scores = xp.matmul(q.data, k.data.swapaxes(-1, -2))  # (..., L, S)
    scores *= factor
    if additive is not None:
        scores += additive
    if allowed is not None:
        xp.copyto(scores, q.dtype.type(-math.inf), where=xp.logical_not(allowed))
    weights = _masked_softmax_in_place(xp, scores)
    keep, kept_scale = None, q.dtype.type(0 if dropout_p == 1 else 1 / (1 - dropout_p))
    if dropout_p > 0:
        keep = backend.uniform_like(weights) >= dropout_p
    out = xp.matmul(_dropped(weights, keep, kept_scale), v.data)

    def backward(g):
        grad_v = None
        if v.requires_grad:
            grad_v = unbroadcast(xp.matmul(_dropped(weights, keep, kept_scale).swapaxes(-1, -2), g), v.shape)
        if not (q.requires_grad or k.requires_grad):
            return None, None, grad_v
        grad_w = xp.matmul(g, v.data.swapaxes(-1, -2))  # d out / d (dropped weights), then through the dropout
        if keep is not None:
            grad_w *= keep
            grad_w *= kept_scale
        # Through the softmax: d scores = w (dw - sum(dw w)), per query row; 0 wherever a weight is 0 (masked keys).
        along = (grad_w * weights).sum(axis=-1, keepdims=True)
        grad_w -= along
        grad_w *= weights
        grad_q = unbroadcast(xp.matmul(grad_w, k.data) * factor, q.shape) if q.requires_grad else None
        grad_k = (unbroadcast(xp.matmul(grad_w.swapaxes(-1, -2), q.data) * factor, k.shape) if k.requires_grad
                  else None)
        return grad_q, grad_k, grad_v

    return make_result(out, (q, k, v), backward, "scaled_dot_product_attention")


def _dropped(weights, keep, kept_scale):
    """The weights after dropout: the kept ones scaled up, the others 0 (the weights themselves without dropout)."""
    if keep is None:
        return weights
    dropped = weights * keep
    dropped *= kept_scale
    return dropped


def _masked_softmax_in_place(xp, scores):
    """Softmax over the last axis, in place, where -inf marks a key that does not take part. A row without any key
    that does gets zeros, not NaN: its maximum (-inf) is replaced by the dtype's lowest finite value, so its
    exponentials are exp(-inf) = 0 and its total, 0, is replaced by 1. Every other row's total is at least 1 (its
    maximum's own term), so neither replacement touches it."""
    if scores.shape[-1] == 0:
        return scores
    peak = scores.max(axis=-1, keepdims=True)
    xp.maximum(peak, xp.finfo(scores.dtype).min, out=peak)
    scores -= peak
    xp.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    xp.maximum(total, 1, out=total)
    scores /= total
    return scores


def _shape_error(q, k, v) -> ShapeError:
    return ShapeError(f"scaled_dot_product_attention: expected query (..., L, E), key (..., S, E) and value "
                      f"(..., S, Ev) with leading dimensions that broadcast; got query {tuple(q.shape)}, key "
                      f"{tuple(k.shape)}, value {tuple(v.shape)}")


def _check_inputs(q, k, v, xp) -> None:
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2 or k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise _shape_error(q, k, v)
    _leading_shape(q, k, v)
    for name, t in (("key", k), ("value", v)):
        if backend.array_module(t.data) is not xp:
            raise ValueError(f"scaled_dot_product_attention: {name} is on {backend.device_of(t.data)} but the query "
                             f"is on {backend.device_of(q.data)}; move them to one device")
    dtypes = {t.dtype for t in (q, k, v)}
    if len(dtypes) > 1 or q.dtype.kind != "f":
        raise TypeError(f"scaled_dot_product_attention: query, key and value must share one floating-point dtype, "
                        f"got {q.dtype}, {k.dtype}, {v.dtype}")


def _leading_shape(q, k, v) -> tuple[int, ...]:
    try:
        return tuple(backend.np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    except ValueError:
        raise _shape_error(q, k, v) from None


def _masks(xp, attn_mask, is_causal: bool, dtype, weights_shape):
    """(allowed, additive): a boolean array, True where a key takes part, or None; a float array added to the
    scores, or None. Both broadcast to the weights' shape."""
    allowed = additive = None
    if attn_mask is not None:
        mask = xp.asarray(attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask)
        try:
            fits = backend.np.broadcast_shapes(mask.shape, weights_shape) == weights_shape
        except ValueError:
            fits = False
        if not fits:
            raise ShapeError(f"scaled_dot_product_attention: attn_mask of shape {tuple(mask.shape)} does not "
                             f"broadcast to the attention weights' shape (..., L, S) = {weights_shape}")
        if mask.dtype == bool:
            allowed = mask
        elif mask.dtype.kind == "f":
            additive = mask.astype(dtype, copy=False)
        else:
            raise TypeError(f"scaled_dot_product_attention: attn_mask must be boolean (True: the key takes part) or "
                            f"floating point (added to the scores), got {mask.dtype}")
    if is_causal:
        causal = xp.tril(xp.ones(weights_shape[-2:], dtype=bool))
        allowed = causal if allowed is None else xp.logical_and(allowed, causal)
    return allowed, additive
