"""layer_norm and scaled_dot_product_attention: against PyTorch in float64 (values and gradients), finite
differences, every device (the stand-in GPU runs backend/cuda.py's kernels) and kernel set, both float dtypes,
inputs left alone, non-contiguous inputs, fully masked rows, dropout, and the shape errors."""

import numpy as np
import pytest

import dltrain
import dltrain.functional as F
from dltrain import backend
from dltrain.autograd import Tensor
from dltrain.errors import ShapeError
from dltrain.gradcheck import check_gradients

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
TF = torch.nn.functional

R = np.random.default_rng(32)


def randn(*shape):
    return R.standard_normal(shape)


def key_padding(batch, keys, lengths):
    """(batch, 1, 1, S) boolean: True for each sequence's first `lengths[b]` keys (the rest is padding)."""
    return (np.arange(keys)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]


def some_masked(*shape):
    """A random boolean mask, key 0 always taking part (no fully masked row: torch gives NaN there)."""
    mask = R.uniform(size=shape) > 0.4
    mask[..., 0] = True
    return mask


def to_torch(value):
    return torch.tensor(value) if isinstance(value, np.ndarray) else value


# ---------------------------------------------------------------- layer_norm

# name -> (normalized_shape, [input, weight, bias] with None for an absent one)
LAYER_NORM = {
    "last_axis": (6, [randn(4, 6) * 3 + 1, randn(6), randn(6)]),
    "sequence_last_axis": ((5,), [randn(2, 3, 5), randn(5), randn(5)]),
    "two_trailing_axes": ((3, 4), [randn(2, 3, 4) * 2, randn(3, 4), randn(3, 4)]),
    "weight_only": (7, [randn(3, 7), randn(7), None]),
    "bias_only": (7, [randn(3, 7), None, randn(7)]),
    "no_affine": ((2, 5), [randn(3, 2, 5), None, None]),
    "width_one": (1, [randn(4, 1), randn(1), randn(1)]),
    "one_axis_input": (5, [randn(5), randn(5), randn(5)]),
}


def _layer_norm(shape, weight_given, bias_given):
    """F.layer_norm over tensors [x, weight?, bias?] in the order given."""
    def fn(x, *params):
        params = list(params)
        weight = params.pop(0) if weight_given else None
        bias = params.pop(0) if bias_given else None
        return F.layer_norm(x, shape, weight, bias)
    return fn


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", sorted(LAYER_NORM))
def test_layer_norm_matches_torch(name, compiled, device):
    """Values and every gradient against torch in float64: on the CPU through the Numba kernels or the reference,
    on the stand-in GPU through the CUDA kernels (or the reference)."""
    shape, arrays = LAYER_NORM[name]
    given = [a for a in arrays if a is not None]
    ours = [dltrain.tensor(a, requires_grad=True, device=device) for a in given]
    theirs = [torch.tensor(a, requires_grad=True) for a in given]
    by_position = iter(theirs[1:])
    weight, bias = (None if a is None else next(by_position) for a in arrays[1:])
    with backend.fused_kernels(compiled):
        out = _layer_norm(shape, arrays[1] is not None, arrays[2] is not None)(*ours)
        expected = TF.layer_norm(theirs[0], (shape,) if isinstance(shape, int) else shape, weight, bias)
        assert out.dtype == np.float64 and out.shape == tuple(expected.shape)
        np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-10, atol=1e-10)
        upstream = R.standard_normal(expected.shape)
        out.backward(backend.to_device(upstream, device))
    expected.backward(torch.tensor(upstream))
    for mine, ref in zip(ours, theirs):
        np.testing.assert_allclose(backend.to_numpy(mine.grad), ref.grad.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", sorted(LAYER_NORM))
def test_layer_norm_gradients_match_finite_differences(name, compiled, device):
    shape, arrays = LAYER_NORM[name]
    with backend.fused_kernels(compiled):
        check_gradients(_layer_norm(shape, arrays[1] is not None, arrays[2] is not None),
                        [a for a in arrays if a is not None], device=device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, width", [(1, 1), (7, 3), (5, 257), (3, 1000), (13, 64)])
def test_layer_norm_kernels_match_the_reference_op(rows, width, dtype, device):
    """The op through the compiled kernels (Numba on the CPU, CUDA on the stand-in GPU) against the op through the
    reference: odd widths and row counts, both dtypes; results in the input's dtype."""
    x0 = (R.standard_normal((rows, width)) * 2 + 3).astype(dtype)
    gamma0, beta0 = R.standard_normal(width).astype(dtype), R.standard_normal(width).astype(dtype)
    upstream = R.standard_normal((rows, width)).astype(dtype)
    results = []
    for compiled in (True, False):
        x, gamma, beta = (Tensor(backend.to_device(a, device), requires_grad=True) for a in (x0, gamma0, beta0))
        with backend.fused_kernels(compiled):
            out = F.layer_norm(x, width, gamma, beta)
            out.backward(backend.to_device(upstream, device))
        results.append([out, x.grad, gamma.grad, beta.grad])
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}
    for got, want in zip(*results):
        got = got.data if isinstance(got, Tensor) else got
        want = want.data if isinstance(want, Tensor) else want
        assert got.dtype == dtype and want.dtype == dtype
        assert backend.device_of(got) == device
        np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(want), **tol)


def backward_keeps_dtype_and_inputs(out, tensors, arrays, dtype, device):
    """Backward from a random upstream: the output and every gradient in `dtype`, and neither the inputs nor the
    upstream gradient modified."""
    upstream = backend.to_device(randn(*out.shape).astype(dtype), device)
    kept = backend.to_numpy(upstream)
    out.backward(upstream)
    assert out.dtype == dtype and all(t.grad.dtype == dtype for t in tensors)
    for tensor, array in zip(tensors, arrays):
        np.testing.assert_array_equal(backend.to_numpy(tensor.data), array)
    np.testing.assert_array_equal(backend.to_numpy(upstream), kept)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_keeps_the_dtype_and_leaves_its_inputs_alone(dtype, device):
    arrays = [(randn(3, 4, 5) * 4).astype(dtype), randn(4, 5).astype(dtype), randn(4, 5).astype(dtype)]
    tensors = [Tensor(backend.to_device(a, device), requires_grad=True) for a in arrays]
    out = F.layer_norm(tensors[0], (4, 5), tensors[1], tensors[2])
    backward_keeps_dtype_and_inputs(out, tensors, arrays, dtype, device)


def test_layer_norm_takes_non_contiguous_inputs(device):
    """A transposed input gives the values and gradients of its contiguous copy."""
    base, gamma, beta = randn(5, 4, 3), randn(4), randn(4)
    upstream = backend.to_device(randn(5, 3, 4), device)
    results = []
    for contiguous in (False, True):
        leaf = Tensor(backend.to_device(base, device), requires_grad=True)
        x = F.transpose(leaf, (0, 2, 1))
        if contiguous:
            leaf = x = Tensor(backend.to_device(np.ascontiguousarray(base.transpose(0, 2, 1)), device),
                              requires_grad=True)
        assert x.data.flags.c_contiguous == contiguous
        params = [Tensor(backend.to_device(a, device), requires_grad=True) for a in (gamma, beta)]
        out = F.layer_norm(x, 4, *params)
        out.backward(upstream)
        grad = backend.to_numpy(leaf.grad)
        results.append([backend.to_numpy(out.data), grad if contiguous else grad.transpose(0, 2, 1)]
                       + [backend.to_numpy(p.grad) for p in params])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_layer_norm_shape_errors_name_the_op_and_the_shapes():
    with pytest.raises(ShapeError) as error:
        F.layer_norm(np.zeros((2, 3, 5)), (4, 5))
    assert str(error.value) == "layer_norm: expected input (..., 4, 5) for normalized_shape (4, 5); got input (2, 3, 5)"
    with pytest.raises(ShapeError) as error:
        F.layer_norm(np.zeros(5), (2, 5))
    assert str(error.value) == "layer_norm: expected input (..., 2, 5) for normalized_shape (2, 5); got input (5,)"
    with pytest.raises(ShapeError) as error:
        F.layer_norm(np.zeros((2, 5)), 5, weight=np.ones(4))
    assert str(error.value) == "layer_norm: expected weight of shape (5,) (normalized_shape), got (4,)"
    with pytest.raises(ShapeError) as error:
        F.layer_norm(np.zeros((2, 5)), 5, bias=np.ones((1, 5)))
    assert str(error.value) == "layer_norm: expected bias of shape (5,) (normalized_shape), got (1, 5)"


def test_layer_norm_refuses_integer_input_and_parameters_of_another_dtype(device):
    """As torch (which has no integer layer norm and refuses a float64 weight for float32 input) and as
    scaled_dot_product_attention: integers are refused, and so is a weight or bias Tensor of another float dtype,
    whose gradient would otherwise come back in the input's dtype. Arrays given as weight or bias are constants, cast
    to the input's dtype as every op's constants are."""
    for dtype in (np.int64, np.int32, np.uint8, bool):
        with pytest.raises(TypeError) as error:
            F.layer_norm(Tensor(backend.to_device(np.ones((2, 5), dtype), device)), 5)
        assert str(error.value) == f"layer_norm: input must be floating point, got {np.dtype(dtype)}"
    x = Tensor(backend.to_device(randn(2, 5).astype(np.float32), device), requires_grad=True)
    for name in ("weight", "bias"):
        other = Tensor(backend.to_device(np.ones(5), device), requires_grad=True)  # float64
        with pytest.raises(TypeError) as error:
            F.layer_norm(x, 5, **{name: other})
        assert str(error.value) == (f"layer_norm: input, weight and bias must share one floating-point dtype, got "
                                    f"input float32, {name} float64")
    out = F.layer_norm(x, 5, backend.to_device(np.full(5, 2.0), device), backend.to_device(np.ones(5), device))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), 2 * TF.layer_norm(torch.tensor(x.numpy()), (5,)).numpy() + 1, atol=1e-5)


# ---------------------------------------------------------------- scaled_dot_product_attention

# name -> (query, key, value, keyword arguments); shapes (batch, heads, time, features) unless said otherwise.
ATTENTION = {
    "plain": (randn(2, 3, 4, 5), randn(2, 3, 4, 5), randn(2, 3, 4, 5), {}),
    "keys_not_queries_values_wider": (randn(2, 2, 3, 4), randn(2, 2, 6, 4), randn(2, 2, 6, 7), {}),
    "scale": (randn(2, 2, 3, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), {"scale": 0.7}),
    "three_axes": (randn(3, 4, 5), randn(3, 6, 5), randn(3, 6, 2), {}),
    "leading_axes_broadcast": (randn(2, 3, 4, 5), randn(1, 3, 6, 5), randn(2, 1, 6, 3), {}),
    "bool_mask_per_head": (randn(2, 3, 4, 5), randn(2, 3, 6, 5), randn(2, 3, 6, 5),
                           {"attn_mask": some_masked(2, 3, 4, 6)}),
    "bool_mask_over_heads": (randn(2, 3, 4, 5), randn(2, 3, 6, 5), randn(2, 3, 6, 2),
                             {"attn_mask": some_masked(2, 1, 4, 6)}),
    "bool_mask_2d": (randn(2, 2, 4, 5), randn(2, 2, 6, 5), randn(2, 2, 6, 5), {"attn_mask": some_masked(4, 6)}),
    "key_padding": (randn(3, 2, 5, 4), randn(3, 2, 5, 4), randn(3, 2, 5, 4),
                    {"attn_mask": key_padding(3, 5, [5, 2, 4])}),
    "float_mask": (randn(2, 2, 4, 5), randn(2, 2, 6, 5), randn(2, 2, 6, 3), {"attn_mask": randn(2, 1, 4, 6)}),
    "float_mask_with_minus_inf": (randn(2, 2, 4, 5), randn(2, 2, 6, 5), randn(2, 2, 6, 3),
                                  {"attn_mask": np.where(some_masked(4, 6), randn(4, 6), -np.inf)}),
    "causal": (randn(2, 3, 5, 4), randn(2, 3, 5, 4), randn(2, 3, 5, 4), {"is_causal": True}),
    "causal_more_keys": (randn(2, 2, 3, 4), randn(2, 2, 6, 4), randn(2, 2, 6, 5), {"is_causal": True}),
    "causal_more_queries": (randn(2, 2, 6, 4), randn(2, 2, 3, 4), randn(2, 2, 3, 5), {"is_causal": True}),
    "causal_scale": (randn(1, 2, 4, 3), randn(1, 2, 4, 3), randn(1, 2, 4, 3), {"is_causal": True, "scale": 2.0}),
}


def _torch_attention(q, k, v, **kwargs):
    return TF.scaled_dot_product_attention(q, k, v, **{name: to_torch(value) for name, value in kwargs.items()})


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_matches_torch(name, device):
    *arrays, kwargs = ATTENTION[name]
    ours = [dltrain.tensor(a, requires_grad=True, device=device) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = F.scaled_dot_product_attention(*ours, **kwargs)
    expected = _torch_attention(*theirs, **kwargs)
    assert out.dtype == np.float64 and out.shape == tuple(expected.shape)
    assert backend.device_of(out.data) == device
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    upstream = R.standard_normal(expected.shape)
    out.backward(backend.to_device(upstream, device))
    expected.backward(torch.tensor(upstream))
    for label, mine, ref in zip("qkv", ours, theirs):
        assert mine.grad.shape == mine.shape
        np.testing.assert_allclose(backend.to_numpy(mine.grad), ref.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=label)


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_gradients_match_finite_differences(name, device):
    *arrays, kwargs = ATTENTION[name]
    check_gradients(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kwargs), arrays, device=device)


def test_a_mask_may_be_a_tensor_and_a_float_mask_gets_no_gradient(device):
    q, k, v = (dltrain.tensor(randn(2, 2, 3, 4), requires_grad=True, device=device) for _ in range(3))
    mask = dltrain.tensor(randn(3, 3), requires_grad=True, device=device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.sum().backward()
    assert mask.grad is None and q.grad is not None
    allowed = dltrain.tensor(some_masked(1, 1, 3, 3), device=device)
    by_tensor = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).numpy()
    np.testing.assert_array_equal(by_tensor, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.numpy()).numpy())


def test_a_mask_and_is_causal_together_mask_where_either_does(device):
    """torch refuses the pair; here a key takes part where both let it: torch with the combined boolean mask."""
    q, k, v = randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3)
    padding = key_padding(2, 5, [5, 3])
    out = F.scaled_dot_product_attention(*(dltrain.tensor(a, device=device) for a in (q, k, v)), attn_mask=padding,
                                         is_causal=True)
    both = padding & np.tril(np.ones((5, 5), bool))
    expected = _torch_attention(*(torch.tensor(a) for a in (q, k, v)), attn_mask=both)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("how", ["bool", "float_minus_inf", "causal_more_keys"])
def test_fully_masked_rows_give_zeros_and_finite_gradients(how, device):
    """A query with no key to attend to: output 0 and gradient 0 through it, never NaN; as torch 2.13 (older torch
    gives NaN), whose values and gradients the whole result matches."""
    q, k, v = randn(2, 2, 5, 4), randn(2, 2, 4, 4), randn(2, 2, 4, 3)
    if how == "causal_more_keys":  # a mask row all False, with is_causal (L < S)
        q, k, v = randn(2, 2, 3, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3)
        padding = np.ones((3, 5), bool)
        padding[1] = False
        kwargs = {"attn_mask": padding, "is_causal": True}
        allowed = padding & np.tril(np.ones((3, 5), bool))
    else:
        allowed = some_masked(2, 1, 5, 4)
        allowed[0, 0, 2] = allowed[1, 0, 4] = False  # two query rows with every key masked
        kwargs = {"attn_mask": allowed if how == "bool" else np.where(allowed, 0.0, -np.inf)}
    tensors = [dltrain.tensor(a, requires_grad=True, device=device) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*tensors, **kwargs)
    upstream = R.standard_normal(out.shape)
    out.backward(backend.to_device(upstream, device))
    result = out.numpy()
    empty = ~np.broadcast_to(allowed, result.shape[:-1] + (k.shape[-2],)).any(axis=-1)
    assert empty.sum() >= 2
    np.testing.assert_array_equal(result[empty], 0.0)
    assert all(np.isfinite(backend.to_numpy(t.grad)).all() for t in tensors)
    np.testing.assert_array_equal(backend.to_numpy(tensors[0].grad)[empty], 0.0)
    theirs = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    expected = _torch_attention(*theirs, attn_mask=allowed)
    np.testing.assert_allclose(result, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    expected.backward(torch.tensor(upstream))
    for label, mine, ref in zip("qkv", tensors, theirs):
        np.testing.assert_allclose(backend.to_numpy(mine.grad), ref.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=label)
    check_gradients(lambda *t: F.scaled_dot_product_attention(*t, **kwargs), [q, k, v], device=device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_keeps_the_dtype_and_leaves_its_inputs_alone(dtype, device):
    arrays = [randn(2, 2, 3, 4).astype(dtype), randn(2, 2, 5, 4).astype(dtype), randn(2, 2, 5, 6).astype(dtype)]
    mask = randn(3, 5)  # float64 even for float32 inputs: cast to theirs
    kept_mask = mask.copy()
    tensors = [Tensor(backend.to_device(a, device), requires_grad=True) for a in arrays]
    backend.manual_seed(1)
    out = F.scaled_dot_product_attention(*tensors, attn_mask=mask, dropout_p=0.2, is_causal=True)
    backward_keeps_dtype_and_inputs(out, tensors, arrays, dtype, device)
    np.testing.assert_array_equal(mask, kept_mask)
    if dtype == np.float32:  # float32 against torch in float32
        ours = [dltrain.tensor(a, requires_grad=True, device=device) for a in arrays]
        theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
        out = F.scaled_dot_product_attention(*ours, is_causal=True)
        expected = _torch_attention(*theirs, is_causal=True)
        np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_attention_takes_non_contiguous_inputs(device):
    """Heads split off a (batch, time, heads, features) projection by a transpose, as a layer does: the values
    and gradients of contiguous copies."""
    arrays = [randn(2, 5, 3, 4), randn(2, 6, 3, 4), randn(2, 6, 3, 2)]
    mask = some_masked(2, 1, 5, 12)[..., ::2]  # a strided mask too
    results = []
    for contiguous in (False, True):
        leaves = [Tensor(backend.to_device(a, device), requires_grad=True) for a in arrays]
        views = [F.transpose(t, (0, 2, 1, 3)) for t in leaves]
        if contiguous:
            views = [Tensor(backend.to_device(np.ascontiguousarray(a.transpose(0, 2, 1, 3)), device),
                            requires_grad=True) for a in arrays]
            leaves = views
        assert all(v.data.flags.c_contiguous == contiguous for v in views)
        out = F.scaled_dot_product_attention(*views, attn_mask=mask)
        out.backward(backend.to_device(np.arange(out.size, dtype=float).reshape(out.shape) / out.size, device))
        grads = [backend.to_numpy(t.grad) for t in leaves]
        if not contiguous:
            grads = [g.transpose(0, 2, 1, 3) for g in grads]
        results.append([backend.to_numpy(out.data)] + grads)
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_dropout_is_reproducible_with_a_seed_and_keeps_the_expected_share(device):
    q, k, v = (dltrain.tensor(randn(2, 4, 64, 8), device=device) for _ in range(3))
    plain = F.scaled_dot_product_attention(q, k, v).numpy()
    backend.manual_seed(7)
    first = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3).numpy()
    second = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3).numpy()
    backend.manual_seed(7)
    again = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, second) and not np.allclose(first, plain)
    np.testing.assert_array_equal(F.scaled_dot_product_attention(q, k, v, dropout_p=0.0).numpy(), plain)
    # The weights themselves: values of one-hot rows pick each weight out; a kept weight is scaled by 1 / (1 - p).
    keys = 64
    identity = dltrain.tensor(np.broadcast_to(np.eye(keys), (2, 4, keys, keys)).copy(), device=device)
    weights = F.scaled_dot_product_attention(q, k, identity).numpy()
    backend.manual_seed(8)
    dropped = F.scaled_dot_product_attention(q, k, identity, dropout_p=0.3).numpy()
    kept = dropped != 0
    assert abs(kept.mean() - 0.7) < 0.01  # 32,768 weights: the standard error is 0.0025
    np.testing.assert_allclose(dropped[kept], weights[kept] / 0.7, rtol=1e-12)
    assert (F.scaled_dot_product_attention(q, k, v, dropout_p=1.0).numpy() == 0).all()


def test_dropout_gradients_match_finite_differences(device):
    """The same mask each forward (the seed is reset), so finite differences see a fixed function."""
    def fn(q, k, v):
        backend.manual_seed(3)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding(2, 5, [5, 3]), dropout_p=0.4)
    check_gradients(fn, [randn(2, 2, 4, 3), randn(2, 2, 5, 3), randn(2, 2, 5, 2)], device=device)


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_the_backward_keeps_the_weights_and_no_other_weight_sized_array(dropout_p):
    """Memory: besides the inputs, the backward holds the softmax weights (and, with dropout, their keep mask of one
    byte each); scores, exponentials and dropped weights are gone after the forward."""
    q, k, v = (Tensor(randn(2, 3, 8, 4), requires_grad=True) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    held = [cell.cell_contents for cell in out.backward_fn.__closure__]
    arrays = [a for a in held if isinstance(a, np.ndarray) and a.size > 1]
    assert sorted((a.shape, a.dtype.name) for a in arrays) == sorted(
        [((2, 3, 8, 8), "float64")] + ([((2, 3, 8, 8), "bool")] if dropout_p else []))
    assert {id(t) for t in held if isinstance(t, Tensor)} == {id(q), id(k), id(v)}


def test_attention_shape_errors_name_the_op_and_the_shapes():
    expected = ("scaled_dot_product_attention: expected query (..., L, E), key (..., S, E) and value (..., S, Ev) with "
                "leading dimensions that broadcast; got query {}, key {}, value {}")
    for shapes in [((2, 3, 4, 5), (2, 3, 6, 4), (2, 3, 6, 5)),  # E differs
                   ((2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 7, 5)),  # keys and values differ in number
                   ((2, 3, 4, 5), (2, 2, 6, 5), (2, 2, 6, 5)),  # heads do not broadcast
                   ((5,), (6, 5), (6, 5))]:  # no time axis
        with pytest.raises(ShapeError) as error:
            F.scaled_dot_product_attention(*(np.zeros(s, np.float32) for s in shapes))
        assert str(error.value) == expected.format(*shapes)
    q, k, v = np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 6, 5)), np.zeros((2, 3, 6, 5))
    for mask_shape in [(4, 5), (3, 2, 3, 4, 6), (2, 2, 4, 6)]:
        with pytest.raises(ShapeError) as error:
            F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones(mask_shape, bool))
        assert str(error.value) == (f"scaled_dot_product_attention: attn_mask of shape {mask_shape} does not broadcast "
                                    f"to the attention weights' shape (..., L, S) = (2, 3, 4, 6)")
    with pytest.raises(TypeError, match="attn_mask must be boolean .* or floating point .*, got int64"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((4, 6), np.int64))
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\], got 1.5"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    with pytest.raises(TypeError, match="share one floating-point dtype, got float32, float64, float64"):
        F.scaled_dot_product_attention(dltrain.tensor(q.astype(np.float32)), dltrain.tensor(k), dltrain.tensor(v))
