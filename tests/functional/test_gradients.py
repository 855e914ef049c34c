"""Every op's gradient against central finite differences in float64."""

import numpy as np
import pytest

import dltrain.functional as F
from dltrain import backend
from dltrain.gradcheck import check_gradients


def away_from_zero(a, margin=0.05):
    """Shift values off kinks at 0 (relu, abs) by more than the finite-difference step."""
    return np.where(np.abs(a) < margin, np.sign(a + 1e-12) * margin, a)


R = np.random.default_rng(7)


def like(tensor, values):
    """A constant array on the tensor's device (batchnorm updates its running statistics in place)."""
    return backend.to_device(np.asarray(values, dtype=np.float64), backend.device_of(tensor.data))


def randn(*shape):
    return R.standard_normal(shape)


def positive(*shape):
    return R.uniform(0.5, 2.0, shape)


# name -> (fn, inputs); broadcasting cases pair shapes like (3, 4) with (4,) or (3, 1).
CASES = {
    "add": (F.add, [randn(3, 4), randn(3, 4)]),
    "add_broadcast_row": (F.add, [randn(3, 4), randn(4)]),
    "add_broadcast_col": (F.add, [randn(3, 1), randn(2, 3, 4)]),
    "sub_broadcast": (F.sub, [randn(2, 3), randn(1, 3)]),
    "mul_broadcast": (F.mul, [randn(2, 3, 4), randn(3, 1)]),
    "div": (F.div, [randn(3, 4), positive(3, 4)]),
    "div_broadcast": (F.div, [randn(3, 4), positive(4)]),
    "neg": (F.neg, [randn(5)]),
    "pow_scalar_exponent": (lambda x: F.pow(x, 3.0), [randn(4, 3)]),
    "pow_tensor_exponent": (F.pow, [positive(3, 2), randn(3, 2)]),
    "pow_fractional": (lambda x: x ** 0.5, [positive(6)]),
    "exp": (F.exp, [randn(3, 3)]),
    "log": (F.log, [positive(3, 3)]),
    "sqrt": (F.sqrt, [positive(7)]),
    "abs": (F.abs, [away_from_zero(randn(4, 4))]),
    "maximum": (F.maximum, [randn(3, 4), randn(3, 4)]),
    "maximum_broadcast": (F.maximum, [randn(3, 4), randn(4)]),
    "minimum": (F.minimum, [randn(3, 4), randn(1, 4)]),
    "clip": (lambda x: F.clip(x, -0.5, 0.7), [randn(5, 5)]),
    "clip_lower_only": (lambda x: F.clip(x, min=0.1), [randn(5, 5)]),
    "where": (lambda a, b: F.where(a.data > b.data, a, b), [randn(3, 4), randn(3, 4)]),
    "where_broadcast": (lambda a, b: F.where(np.arange(4) % 2 == 0, a, b), [randn(3, 4), randn(1)]),
    "matmul_2d": (F.matmul, [randn(3, 4), randn(4, 5)]),
    "matmul_batched_broadcast": (F.matmul, [randn(2, 3, 4), randn(4, 5)]),
    "matmul_vector_left": (F.matmul, [randn(4), randn(4, 5)]),
    "matmul_vector_right": (F.matmul, [randn(2, 3, 4), randn(4)]),
    "matmul_vector_vector": (F.matmul, [randn(4), randn(4)]),
    "sum_all": (F.sum, [randn(3, 4)]),
    "sum_axis": (lambda x: F.sum(x, axis=1), [randn(3, 4, 2)]),
    "sum_axes_keepdims": (lambda x: F.sum(x, axis=(0, 2), keepdims=True), [randn(3, 4, 2)]),
    "mean_axis": (lambda x: F.mean(x, axis=-1), [randn(3, 4)]),
    "mean_all_keepdims": (lambda x: F.mean(x, keepdims=True), [randn(3, 4)]),
    "max_axis": (lambda x: F.max(x, axis=1), [randn(4, 5)]),
    "max_all": (F.max, [randn(4, 5)]),
    "max_keepdims": (lambda x: F.max(x, axis=0, keepdims=True), [randn(4, 5)]),
    "reshape": (lambda x: F.reshape(x, (6, 2)), [randn(3, 4)]),
    "transpose": (lambda x: F.transpose(x, (2, 0, 1)), [randn(2, 3, 4)]),
    "transpose_reverse": (F.transpose, [randn(2, 3, 4)]),
    "getitem_slice": (lambda x: x[1:, ::2], [randn(4, 5)]),
    "getitem_int_and_none": (lambda x: x[2, None, :3], [randn(4, 5)]),
    "getitem_int_array_repeats": (lambda x: x[np.array([0, 2, 0, 0])], [randn(4, 3)]),
    "getitem_two_int_arrays": (lambda x: x[np.array([0, 1, 1]), np.array([2, 2, 2])], [randn(3, 4)]),
    "getitem_bool_mask": (lambda x: x[np.array([True, False, True])], [randn(3, 2)]),
    "concatenate": (lambda a, b: F.concatenate([a, b], axis=1), [randn(2, 3), randn(2, 5)]),
    "concatenate_axis0": (lambda a, b, c: F.concatenate([a, b, c]), [randn(1, 3), randn(2, 3), randn(3, 3)]),
    "stack": (lambda a, b: F.stack([a, b], axis=1), [randn(2, 3), randn(2, 3)]),
    "flatten": (F.flatten, [randn(2, 3, 4)]),
    "relu": (F.relu, [away_from_zero(randn(4, 5))]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), [away_from_zero(randn(4, 5))]),
    "tanh": (F.tanh, [randn(4, 5)]),
    "sigmoid": (F.sigmoid, [randn(4, 5) * 3]),
    "gelu": (F.gelu, [randn(4, 5) * 2]),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), [randn(4, 5) * 2]),
    "softmax": (F.softmax, [randn(3, 5)]),
    "softmax_dim0": (lambda x: F.softmax(x, dim=0), [randn(3, 5)]),
    "log_softmax": (F.log_softmax, [randn(3, 5)]),
    "linear": (F.linear, [randn(4, 3), randn(5, 3), randn(5)]),
    "linear_no_bias_3d_input": (F.linear, [randn(2, 4, 3), randn(5, 3)]),
    "mse_loss": (F.mse_loss, [randn(4, 3), randn(4, 3)]),
    "mse_loss_sum": (lambda a, b: F.mse_loss(a, b, reduction="sum"), [randn(4, 3), randn(4, 3)]),
    "mse_loss_none": (lambda a, b: F.mse_loss(a, b, reduction="none"), [randn(4, 3), randn(4, 3)]),
    "bce_with_logits": (F.binary_cross_entropy_with_logits, [randn(6, 2) * 3, R.uniform(0, 1, (6, 2))]),
    "bce_with_logits_weights": (
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, weight=np.array([0.5, 2.0]),
                                                        pos_weight=np.array([3.0, 0.5]), reduction="sum"),
        [randn(6, 2), R.integers(0, 2, (6, 2)).astype(float)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([0, 2, 1, 2])), [randn(4, 3)]),
    "cross_entropy_sum": (lambda x: F.cross_entropy(x, np.array([0, 2, 1, 2]), reduction="sum"), [randn(4, 3)]),
    "cross_entropy_none": (lambda x: F.cross_entropy(x, np.array([0, 2, 1, 2]), reduction="none"), [randn(4, 3)]),
    "cross_entropy_smoothed": (lambda x: F.cross_entropy(x, np.array([0, 2, 1, 2]), label_smoothing=0.2),
                               [randn(4, 3)]),
    "cross_entropy_weighted_smoothed_ignore": (
        lambda x: F.cross_entropy(x, np.array([0, 2, -100, 1]), weight=np.array([1.0, 2.0, 0.5]),
                                  label_smoothing=0.2), [randn(4, 3)]),
    "cross_entropy_spatial": (lambda x: F.cross_entropy(x, np.array([[0, 1], [2, 2]])), [randn(2, 3, 2)]),
    "batch_norm_train_2d": (
        lambda x, w, b: F.batch_norm(x, like(x, np.zeros(3)), like(x, np.ones(3)), w, b, training=True),
        [randn(5, 3), randn(3), randn(3)]),
    "batch_norm_train_4d": (
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [randn(2, 3, 2, 2), randn(3), randn(3)]),
    "batch_norm_eval": (
        lambda x, w, b: F.batch_norm(x, like(x, [0.1, -0.2, 0.3]), like(x, [1.5, 0.5, 2.0]), w, b),
        [randn(4, 3), randn(3), randn(3)]),
    "batch_norm_no_affine": (lambda x: F.batch_norm(x, None, None, training=True), [randn(6, 2)]),
    "dropout": (lambda x: (backend.manual_seed(3), F.dropout(x, 0.4))[1], [randn(5, 6)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences(name, device):
    fn, inputs = CASES[name]
    check_gradients(fn, inputs, device=device)


def test_shared_subexpression_accumulates():
    """exp(x*x) + x*x: both uses of x*x (and of x) send their gradient back."""
    def fn(x):
        square = x * x
        return F.exp(square) + square * x
    check_gradients(fn, [randn(3, 2)])


def test_value_used_in_both_operands():
    check_gradients(lambda x: x * x + x @ x.T.sum(axis=1), [randn(3, 3)])


def test_check_gradients_catches_a_wrong_backward():
    """The helper itself must fail on a wrong formula (here: d tanh = 1 - y, not 1 - y^2)."""
    from dltrain.autograd import as_tensor, make_result

    def wrong_tanh(x):
        x = as_tensor(x)
        out = np.tanh(x.data)
        return make_result(out, (x,), lambda g: (g * (1 - out),), "wrong_tanh")

    with pytest.raises(AssertionError, match="differ"):
        check_gradients(wrong_tanh, [randn(3)])
