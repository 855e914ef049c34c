import gc
import weakref

import numpy as np
import pytest

import dltrain
import dltrain.functional as F
from dltrain import backend, no_grad, optim
from dltrain.layers import build_model


def test_ten_thousand_op_chain_backpropagates_without_recursion():
    x = dltrain.tensor(np.array([1.0], np.float32), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    assert x.grad[0] == pytest.approx(1.0001 ** 10_000, rel=1e-3)


def test_shared_value_gets_the_sum_of_its_uses():
    x = dltrain.tensor(np.array([2.0, 3.0]), requires_grad=True)
    square = x * x
    (square + square * 3).sum().backward()  # d/dx 4 x^2 = 8 x
    np.testing.assert_allclose(x.grad, [16.0, 24.0])


def test_leaf_gradients_accumulate_across_backward_calls_until_zeroed():
    x = dltrain.tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [6.0, 6.0])
    x.zero_grad()
    assert x.grad is None


def test_gradients_given_to_two_leaves_are_separate_arrays():
    a = dltrain.tensor(np.ones(3), requires_grad=True)
    b = dltrain.tensor(np.ones(3), requires_grad=True)
    (a + b).sum().backward()
    a.grad *= 10  # in-place changes to one gradient must not reach the other
    np.testing.assert_allclose(b.grad, [1.0, 1.0, 1.0])


def test_graph_is_released_after_backward():
    x = dltrain.tensor(np.ones(3), requires_grad=True)
    hidden = x * 2
    ref = weakref.ref(hidden)
    loss = (hidden * hidden).sum()
    del hidden
    loss.backward()
    gc.collect()
    assert ref() is None
    assert loss.parents == () and loss.backward_fn is None


def test_no_grad_records_nothing():
    x = dltrain.tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 2).exp()
    assert not y.requires_grad and y.parents == ()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_gradient_is_computed_for_constant_inputs():
    data = dltrain.tensor(np.ones((4, 3), np.float32))
    w = dltrain.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    F.linear(data, w).sum().backward()
    assert data.grad is None and w.grad is not None


def test_backward_of_non_scalar_needs_a_gradient():
    x = dltrain.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"needs a single value, got shape \(3,\)"):
        (x * 2).backward()


def test_operators_with_plain_numbers_keep_float32():
    x = dltrain.tensor(np.ones((2, 2), np.float32), requires_grad=True)
    y = (2 * x + 1 - x / 3) ** 2 @ x.T
    y = -abs(y) + np.float64(0.5)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_tensor_methods_read_like_numpy():
    a = np.arange(6.0).reshape(2, 3)
    x = dltrain.tensor(a)
    np.testing.assert_allclose(x.sum(axis=0, keepdims=True).numpy(), a.sum(axis=0, keepdims=True))
    np.testing.assert_allclose(x.mean().numpy(), a.mean())
    np.testing.assert_allclose(x.max(axis=1).numpy(), a.max(axis=1))
    np.testing.assert_allclose(x.reshape(3, 2).numpy(), a.reshape(3, 2))
    np.testing.assert_allclose(x.T.numpy(), a.T)
    np.testing.assert_allclose(x.exp().log().numpy(), a, atol=1e-5)
    np.testing.assert_allclose(x[1, ::2].numpy(), a[1, ::2])


XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
XOR_Y = np.array([0, 1, 1, 0])


def fit_xor(specs, steps=500):
    backend.manual_seed(0)
    model = build_model(specs, (2,))
    opt = optim.Adam(model.parameters(), lr=0.05)
    x = dltrain.tensor(XOR_X)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), XOR_Y).backward()
        opt.step()
    with no_grad():
        return (model(x).numpy().argmax(axis=1) == XOR_Y).mean()


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_two_layer_mlp_fits_xor(activation):
    assert fit_xor([{"linear": {"units": 8}}, activation, {"linear": {"units": 2}}]) == 1.0


def test_linear_model_cannot_fit_xor():
    # No line separates XOR: the best linear classifier gets at most 3 of the 4 points right.
    assert fit_xor([{"linear": {"units": 2}}]) <= 0.75


def test_slice_gradients_mix_with_whole_gradients():
    """x feeds a full op and several slices: the slices add into one buffer without touching other arrays."""
    x = dltrain.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    whole = x * 2
    y = (whole.sum() + x[0].sum() * 3 + x[:, 1].sum() + x[np.array([1, 1])].sum())
    y.backward()
    np.testing.assert_allclose(x.grad, [[5, 6, 5], [4, 5, 4]])


def test_stepping_through_a_sequence_backpropagates_each_step():
    x = dltrain.tensor(np.ones((2, 50, 3)), requires_grad=True)
    total = x[:, 0]
    for t in range(1, 50):
        total = total + x[:, t] * t
    total.sum().backward()
    np.testing.assert_allclose(x.grad[0, :, 0], np.maximum(np.arange(50), 1))


def test_tensor_keeps_an_arrays_dtype_and_gives_numbers_the_default_as_torch_does():
    """torch.tensor(np.ones(2)) is float64; torch.tensor([1.0]) takes the default dtype. dltrain used to cast
    every float array to the default (float32), so float64 comparisons silently lost precision."""
    import dltrain
    from dltrain import backend

    assert dltrain.tensor(np.ones(2)).dtype == np.float64
    assert dltrain.tensor(np.ones(2, np.float32)).dtype == np.float32
    assert dltrain.tensor(np.float64(1.5)).dtype == np.float64
    assert dltrain.tensor([1.0, 2.0]).dtype == np.float32 and dltrain.tensor(0.5).dtype == np.float32
    assert dltrain.tensor(np.ones(2), dtype=np.float32).dtype == np.float32
    assert dltrain.tensor([1, 2]).dtype == np.int64
    backend.set_default_dtype(np.float64)
    try:
        assert dltrain.tensor([1.0]).dtype == np.float64 and dltrain.tensor(np.ones(1, np.float32)).dtype == np.float32
    finally:
        backend.set_default_dtype(np.float32)
    x = np.array([1e-10, 1.0 + 1e-12])
    np.testing.assert_array_equal((dltrain.tensor(x) * 1).data, x)  # no float32 rounding on the way
