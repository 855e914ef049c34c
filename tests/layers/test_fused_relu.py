"""A ReLU layer after a linear, conv2d or batchnorm layer runs inside that layer's op (activation='relu'):
the same values and gradients as the two ops one after the other, on every kernel set and device."""

import numpy as np
import pytest

import dltrain.functional as F
from dltrain import backend
from dltrain.autograd import Tensor, no_grad
from dltrain.gradcheck import check_gradients
from dltrain.layers import build_model
from dltrain.layers.core import run_layers

R = np.random.default_rng(3)

def _running(x):
    """Running statistics on the input's device."""
    return [backend.to_device(np.full(3, v), backend.device_of(x.data)) for v in (0.2, 1.5)]


# name -> (the op with the ReLU fused, arrays); the unfused twin is F.relu of the op without it.
CASES = {
    "linear": (lambda x, w, b, act=None: F.linear(x, w, b, activation=act),
               [R.standard_normal((4, 6)), R.standard_normal((5, 6)), R.standard_normal(5)]),
    "linear_3d_no_bias": (lambda x, w, act=None: F.linear(x, w, activation=act),
                          [R.standard_normal((2, 3, 6)), R.standard_normal((5, 6))]),
    "conv2d": (lambda x, w, b, act=None: F.conv2d(x, w, b, stride=2, padding=1, activation=act),
               [R.standard_normal((2, 3, 7, 6)), R.standard_normal((4, 3, 3, 3)), R.standard_normal(4)]),
    "batch_norm_train": (lambda x, g, b, act=None: F.batch_norm(x, None, None, g, b, training=True, activation=act),
                         [R.standard_normal((4, 3, 2, 2)), R.uniform(0.5, 1.5, 3), R.standard_normal(3)]),
    "batch_norm_eval": (lambda x, g, b, act=None: F.batch_norm(x, *_running(x), g, b, activation=act),
                        [R.standard_normal((5, 3)), R.uniform(0.5, 1.5, 3), R.standard_normal(3)]),
}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_fused_relu_equals_the_op_then_relu(name, compiled, device):
    fn, arrays = CASES[name]
    upstream = R.standard_normal(F.relu(fn(*[Tensor(a) for a in arrays])).shape)
    results = []
    with backend.fused_kernels(compiled):
        for fused in (True, False):
            inputs = [Tensor(backend.to_device(a, device), requires_grad=True) for a in arrays]
            out = fn(*inputs, act="relu") if fused else F.relu(fn(*inputs))
            out.backward(backend.to_device(upstream, device))
            results.append([backend.to_numpy(out.data)] + [backend.to_numpy(t.grad) for t in inputs])
        assert (out.data > 0).any() and (out.data == 0).any()
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_fused_relu_has_the_gradients_of_finite_differences(name, compiled):
    fn, arrays = CASES[name]
    with backend.fused_kernels(compiled):
        check_gradients(lambda *t: fn(*t, act="relu"), arrays)


def test_only_relu_is_fused_into_ops():
    with pytest.raises(ValueError, match=r"^conv2d: activation must be None or 'relu', got 'gelu'$"):
        F.conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3)), activation="gelu")


def test_a_fused_relu_keeps_nan_so_a_diverged_run_is_still_seen():
    x = np.array([[np.nan], [-1.0], [2.0]])
    out = F.linear(x, np.ones((1, 1)), np.zeros(1), activation="relu")
    np.testing.assert_array_equal(out.data, np.maximum(x, 0))


SPECS = [{"conv2d": {"filters": 4, "kernel_size": 3, "padding": 1}}, "relu",
         {"conv2d": {"filters": 4, "kernel_size": 3}}, "batchnorm", "relu", {"max_pool2d": {"kernel_size": 2}},
         {"residual": {"layers": [{"conv2d": {"filters": 4, "kernel_size": 3, "padding": 1}}, "batchnorm", "relu"]}},
         "flatten", {"linear": {"units": 8}}, "relu", {"dropout": {"rate": 0.0}}, "relu", {"linear": {"units": 3}}]


def _ops(tensor) -> list[str]:
    """Every op name in the graph that made `tensor`."""
    seen, stack, names = set(), [tensor], []
    while stack:
        t = stack.pop()
        if id(t) in seen or not t.parents:
            continue
        seen.add(id(t))
        names.append(t.op)
        stack.extend(t.parents)
    return names


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
def test_a_model_runs_each_relu_after_linear_conv_or_batchnorm_inside_it(compiled):
    """Fused where a ReLU follows conv2d, batchnorm or linear (nested blocks included); not after other layers,
    and not among the layers whose outputs are watched; the outputs and parameter gradients are the same."""
    backend.manual_seed(0)
    model = build_model(SPECS, (2, 6, 6))
    x = R.standard_normal((3, 2, 6, 6))
    results = []
    with backend.fused_kernels(compiled):
        for watch in (None, lambda layer, out: None):
            for p in model.parameters():
                p.grad = None
            out = run_layers(model.layers, Tensor(x), watch)
            ops = _ops(out)  # before backward, which frees the graph
            out.backward(np.ones(out.shape))
            results.append([out.data] + [p.grad.copy() for p in model.parameters()])
            if watch is None:
                assert sorted(op for op in ops if "relu" in op) == [
                    "batch_norm_relu", "batch_norm_relu", "conv2d_relu", "linear_relu", "relu"]  # after dropout
            else:  # the watched layers are the top-level ones: the residual block's own still fuses
                assert ops.count("relu") == 4 and [op for op in ops if op.endswith("_relu")] == ["batch_norm_relu"]
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model(Tensor(x)).data, results[0][0], rtol=1e-12)


FOLD_SPECS = [{"conv2d": {"filters": 4, "kernel_size": 3, "padding": 1}}, "batchnorm", "relu",
              {"conv2d": {"filters": 4, "kernel_size": 3, "bias": False}}, "batchnorm",
              {"max_pool2d": {"kernel_size": 2}}, "batchnorm", "relu",  # not after a linear map: not folded
              {"residual": {"layers": [{"conv2d": {"filters": 4, "kernel_size": 3, "padding": 1}}, "batchnorm"]}},
              "flatten", {"linear": {"units": 8}}, "batchnorm", "relu", {"linear": {"units": 3}}]


def _fold_model(device):
    """FOLD_SPECS in float64, eval mode, with batchnorm statistics and scales far from the identity."""
    backend.set_default_dtype(np.float64)
    model = build_model(FOLD_SPECS, (2, 8, 8))
    rng = np.random.default_rng(5)
    stack = [model]
    while stack:
        layer = stack.pop()
        stack.extend(child for _, child in layer.children())
        if type(layer).__name__ == "BatchNorm":
            c = layer.weight.shape[0]
            for array, values in ((layer._buffers["running_mean"], rng.normal(size=c)),
                                  (layer._buffers["running_var"], rng.uniform(0.2, 3.0, c)),
                                  (layer.weight.data, rng.normal(size=c)), (layer.bias.data, rng.normal(size=c))):
                array[:] = values
    model.to(device)
    model.eval()
    return model


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
def test_inference_folds_each_eval_batchnorm_into_the_conv_or_linear_before_it(compiled, device, monkeypatch):
    """Under no_grad an eval-mode batchnorm right after conv2d or linear (nested blocks included) is folded into
    that layer's weight and bias (with the ReLU after it): batch_norm runs only for the one after pooling, and the
    outputs are those of the layers one by one. With gradients recorded nothing is folded."""
    model = _fold_model(device)
    x = backend.to_device(R.standard_normal((3, 2, 8, 8)), device)
    calls = []
    real_batch_norm = F.batch_norm
    monkeypatch.setattr(F, "batch_norm", lambda *a, **k: calls.append(a[0].shape) or real_batch_norm(*a, **k))
    with backend.fused_kernels(compiled):
        unfolded = backend.to_numpy(model(Tensor(x)).data)
        assert len(calls) == 5
        calls.clear()
        with no_grad():
            folded = model(Tensor(x)).data
    assert calls == [(3, 4, 3, 3)]  # the batchnorm after max_pool2d
    assert backend.device_of(folded) == device
    np.testing.assert_allclose(backend.to_numpy(folded), unfolded, rtol=1e-10, atol=1e-12)


def test_training_mode_batchnorm_is_not_folded_under_no_grad(monkeypatch):
    """Batch statistics depend on the batch: a batchnorm in training mode (the running statistics still move)
    runs as itself even when no gradient is recorded."""
    model = _fold_model("cpu")
    model.train()
    calls = []
    real_batch_norm = F.batch_norm
    monkeypatch.setattr(F, "batch_norm", lambda *a, **k: calls.append(k["training"]) or real_batch_norm(*a, **k))
    with no_grad():
        model(Tensor(R.standard_normal((3, 2, 8, 8))))
    assert calls == [True] * 5


def test_a_folded_batchnorm_equals_the_hand_computed_affine_map():
    """linear then eval batchnorm: gamma (W x + b - mean) / sqrt(var + eps) + beta, in one op."""
    backend.set_default_dtype(np.float64)
    model = build_model([{"linear": {"units": 2}}, {"batchnorm": {"eps": 0.01}}], (3,))
    linear, norm = model.layers
    linear.weight.data[:] = [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]
    linear.bias.data[:] = [0.5, -0.5]
    norm._buffers["running_mean"][:] = [1.0, -2.0]
    norm._buffers["running_var"][:] = [3.99, 0.24]
    norm.weight.data[:] = [2.0, -1.0]
    norm.bias.data[:] = [0.25, 1.0]
    model.eval()
    x = np.array([[1.0, 1.0, 1.0], [0.0, 2.0, -1.0]])
    with no_grad():
        out = model(Tensor(x)).data
    linear_out = x @ linear.weight.data.T + [0.5, -0.5]  # [[3.5, 1.5], [4.5, -5.5]]
    want = [2.0, -1.0] * (linear_out - [1.0, -2.0]) / np.sqrt([4.0, 0.25]) + [0.25, 1.0]
    np.testing.assert_allclose(out, want, rtol=1e-13)
    np.testing.assert_allclose(out, [[2.75, -6.0], [3.75, 8.0]], rtol=1e-13)


def test_a_batchnorm_without_affine_folds_into_a_linear_without_bias_in_float32():
    model = build_model([{"linear": {"units": 6, "bias": False}}, {"batchnorm": {"affine": False}}, "relu"], (5,))
    norm = model.layers[1]
    norm._buffers["running_mean"][:] = np.linspace(-1, 1, 6)
    norm._buffers["running_var"][:] = np.linspace(0.3, 2, 6)
    model.eval()
    x = R.standard_normal((7, 5)).astype(np.float32)
    with no_grad():
        folded = model(Tensor(x)).data
    unfolded = model(Tensor(x)).data
    assert folded.dtype == np.float32 and (folded == 0).any() and (folded > 0).any()
    np.testing.assert_allclose(folded, unfolded, rtol=1e-5, atol=1e-6)


def test_a_subclass_that_overrides_forward_runs_as_itself_never_through_a_fused_op():
    """A plugin's layer derived from linear with its own forward keeps it, with or without a gradient (its
    parent's forward_relu and forward_batchnorm would silently drop the override)."""
    from dltrain.layers.core import BatchNorm, Linear, ReLU

    class Doubled(Linear):
        def forward(self, x):
            return super().forward(x) * 2.0

    backend.set_default_dtype(np.float64)
    layer = Doubled(4)
    layer.path = "model[0].doubled"
    layer.build((3,))
    norm = BatchNorm()
    norm.build((4,))
    layers = [layer, norm, ReLU()]
    for each in layers:
        each.eval()
    x = R.standard_normal((5, 3))
    want = np.maximum((x @ layer.weight.data.T + layer.bias.data) * 2.0 / np.sqrt(1 + 1e-5), 0)
    for grad in (True, False):
        if grad:
            out = run_layers(layers, Tensor(x)).data
        else:
            with no_grad():
                out = run_layers(layers, Tensor(x)).data
        np.testing.assert_allclose(out, want, rtol=1e-12)
        np.testing.assert_allclose(run_layers(layers[::2], Tensor(x)).data, np.maximum(
            (x @ layer.weight.data.T + layer.bias.data) * 2.0, 0), rtol=1e-12)
