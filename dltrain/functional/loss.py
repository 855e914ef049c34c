"""Fused losses: one op each, so the gradient is the short closed form and never overflows."""

from __future__ import annotations

from .. import backend
from ..autograd import Tensor, as_tensor, make_result
from ..errors import ShapeError
from .activation import _stable_log_softmax

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _raw(value):
    return value.data if isinstance(value, Tensor) else value


def cross_entropy(input, target, weight=None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0, check_targets: bool = True) -> Tensor:
    """Softmax cross-entropy from logits (N, C) or (N, C, d1, ...) and integer class targets, or class
    probabilities shaped like the logits (mixup, cutmix), as torch.nn.functional.cross_entropy takes them.

    With class weights w and smoothing e, each sample's loss is
    (1 - e) * w[y] * -log p[y] + e / C * sum_c w[c] * -log p[c]; 'mean' divides by sum of w[y].
    check_targets=False skips checking that targets lie in [0, C) (on a GPU that check waits for the
    device); only for targets already checked, as the trainer checks its labels once when loading data.
    """
    _check_reduction(reduction)
    x = as_tensor(input)
    xp = backend.array_module(x.data)
    labels = xp.asarray(_raw(target))
    if labels.dtype.kind == "f" and labels.shape == x.shape:
        return _soft_cross_entropy(x, labels, weight, reduction, label_smoothing)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class indices, got dtype {labels.dtype}")
    if x.ndim < 2 or labels.shape != x.shape[:1] + x.shape[2:]:
        raise ShapeError(f"cross_entropy: expected logits (N, C, ...) and targets (N, ...); "
                         f"got logits {x.shape} and targets {labels.shape}")
    classes = x.shape[1]
    if weight is None and reduction == "mean" and x.ndim == 2 and labels.size:
        if not check_targets or (int(labels.min()) >= 0 and int(labels.max()) < classes):
            return _mean_cross_entropy(x, labels, label_smoothing)
    # Classes on the last axis, samples flattened: logits (M, C), labels (M,).
    logits = xp.moveaxis(x.data, 1, -1).reshape(-1, classes)
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    safe_labels = xp.where(keep, labels, 0)
    if check_targets and bool(((safe_labels < 0) | (safe_labels >= classes)).any()):  # a GPU waits here
        raise ValueError(f"cross_entropy: target values must be in [0, {classes - 1}] "
                         f"(or ignore_index={ignore_index})")
    rows = xp.arange(len(labels))
    log_p = _stable_log_softmax(logits, 1)
    w = None if weight is None else xp.asarray(_raw(weight), dtype=logits.dtype)
    sample_weight = (keep.astype(logits.dtype) if w is None else w[safe_labels] * keep)

    nll = -log_p[rows, safe_labels]
    losses = (1 - label_smoothing) * sample_weight * nll
    if label_smoothing:
        per_class = -log_p if w is None else -log_p * w
        losses = losses + label_smoothing / classes * per_class.sum(axis=1) * keep
    if reduction == "mean":
        denominator = sample_weight.sum()
        out = losses.sum() / denominator
    elif reduction == "sum":
        out = losses.sum()
    else:
        out = losses.reshape(x.shape[:1] + x.shape[2:])

    def backward(g):
        if reduction == "none":
            scale = g.reshape(-1)[:, None]
        elif reduction == "mean":
            scale = g / denominator
        else:
            scale = g
        p = xp.exp(log_p)
        grad = p * ((1 - label_smoothing) * sample_weight)[:, None]
        grad[rows, safe_labels] -= (1 - label_smoothing) * sample_weight
        if label_smoothing:
            total_w = classes if w is None else w.sum()
            smooth = p * total_w - (1 if w is None else w)
            grad += label_smoothing / classes * smooth * keep[:, None]
        grad *= scale
        moved = grad.reshape(x.shape[:1] + x.shape[2:] + (classes,))
        return (xp.moveaxis(moved, -1, 1),)

    return make_result(out, (x,), backward, "cross_entropy")


def _soft_cross_entropy(x: Tensor, probabilities, weight, reduction: str, label_smoothing: float) -> Tensor:
    """-sum_c w_c t_c log p_c per sample, t the target probabilities (smoothed towards 1/C); 'mean' divides by the
    number of samples, as torch does for probability targets."""
    xp = backend.array_module(x.data)
    classes = x.shape[1]
    logits = xp.moveaxis(x.data, 1, -1).reshape(-1, classes)
    t = xp.moveaxis(probabilities.astype(logits.dtype), 1, -1).reshape(-1, classes)
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / classes
    wt = t if weight is None else t * xp.asarray(_raw(weight), dtype=logits.dtype)
    log_p = _stable_log_softmax(logits, 1)
    losses = -(wt * log_p).sum(axis=1)
    out = losses.reshape(x.shape[:1] + x.shape[2:]) if reduction == "none" else _reduce(losses, reduction)

    def backward(g):
        scale = g.reshape(-1)[:, None] if reduction == "none" else _reduced_grad_scale(g, len(losses), reduction)
        grad = (xp.exp(log_p) * wt.sum(axis=1, keepdims=True) - wt) * scale
        return (xp.moveaxis(grad.reshape(x.shape[:1] + x.shape[2:] + (classes,)), -1, 1),)

    return make_result(out, (x,), backward, "cross_entropy")


def _mean_cross_entropy(x: Tensor, labels, smoothing: float = 0.0) -> Tensor:
    """The training case: (N, C) logits, valid labels, mean over samples, no host read (on a GPU the step runs on).
    Loss: mean of (1 - e) -log p[y] + e/C sum_c -log p[c]; gradient: (softmax - (1 - e) onehot - e/C) / N, i.e.
    (1 - e)(softmax - onehot)/N + e (softmax - 1/C)/N."""
    kernels = backend.kernels_for(x.data)  # log-softmax and per-row losses in one kernel, the gradient in another
    log_p, row_loss = kernels.log_softmax_nll(x.data, labels)
    if not smoothing:
        return make_result(row_loss.mean(), (x,), lambda g: (kernels.cross_entropy_backward(log_p, labels, g),),
                           "cross_entropy")
    xp = backend.array_module(log_p)
    n, classes = log_p.shape
    loss = (1 - smoothing) * row_loss.mean() - (smoothing / (classes * n)) * log_p.sum()

    def backward(g):
        grad = kernels.cross_entropy_backward(log_p, labels, g * (1 - smoothing))
        grad += (xp.exp(log_p) - 1 / classes) * (g * (smoothing / n))
        return (grad,)

    return make_result(loss, (x,), backward, "cross_entropy")


def _reduce(losses, reduction: str):
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _reduced_grad_scale(g, size: int, reduction: str):
    return g / size if reduction == "mean" else g


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    _check_reduction(reduction)
    x = as_tensor(input)
    y = as_tensor(target, like=x)
    if x.shape != y.shape:
        raise ShapeError(f"mse_loss: expected input and target of the same shape; got {x.shape} and {y.shape}")
    diff = x.data - y.data

    def backward(g):
        grad = 2 * diff * _reduced_grad_scale(g, diff.size, reduction)
        return grad, (-grad if y.requires_grad else None)

    return make_result(_reduce(diff * diff, reduction), (x, y), backward, "mse_loss")


def _softplus(xp, v):
    """log(1 + exp(v)) without overflow."""
    return xp.maximum(v, 0) + xp.log1p(xp.exp(-xp.abs(v)))


def binary_cross_entropy_with_logits(input, target, weight=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """-w * [pos_weight * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x))], from logits x."""
    _check_reduction(reduction)
    x = as_tensor(input)
    y = as_tensor(target, like=x)
    if x.shape != y.shape:
        raise ShapeError(f"binary_cross_entropy_with_logits: expected input and target of the same shape; "
                         f"got {x.shape} and {y.shape}")
    xp = backend.array_module(x.data)
    w = 1 if weight is None else xp.asarray(_raw(weight), dtype=x.dtype)
    pw = 1 if pos_weight is None else xp.asarray(_raw(pos_weight), dtype=x.dtype)
    softplus_neg = _softplus(xp, -x.data)  # -log sigmoid(x)
    softplus_pos = _softplus(xp, x.data)  # -log(1 - sigmoid(x))
    losses = w * (pw * y.data * softplus_neg + (1 - y.data) * softplus_pos)
    losses = xp.broadcast_to(losses, x.shape)

    def backward(g):
        scale = _reduced_grad_scale(g, losses.size, reduction)
        sig = 0.5 * (1 + xp.tanh(0.5 * x.data))
        grad_x = scale * w * (-pw * y.data * (1 - sig) + (1 - y.data) * sig)
        grad_y = scale * w * (pw * softplus_neg - softplus_pos) if y.requires_grad else None
        return grad_x, grad_y

    return make_result(_reduce(losses, reduction), (x, y), backward, "binary_cross_entropy_with_logits")
