"""dltrain.functional against torch.nn.functional on random inputs: forward values and gradients.

torch (CPU build) is a comparison-only dependency: `pip install torch==2.13.0`.
"""

import numpy as np
import pytest

import dltrain
import dltrain.functional as F

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
TF = torch.nn.functional

R = np.random.default_rng(11)
LABELS = np.array([0, 3, 2, 3, 1, 0])


def randn(*shape, scale=1.0):
    return (R.standard_normal(shape) * scale).astype(np.float32)


# name -> (dltrain fn, torch fn, float inputs); both take tensors of their own library.
CASES = {
    "add": (F.add, torch.add, [randn(3, 4), randn(4)]),
    "mul": (F.mul, torch.mul, [randn(2, 3, 4), randn(3, 1)]),
    "div": (F.div, torch.div, [randn(3, 4), randn(3, 4) ** 2 + 0.5]),
    "pow": (lambda x: x ** 3, lambda x: x ** 3, [randn(5)]),
    "exp": (F.exp, torch.exp, [randn(3, 3)]),
    "log": (F.log, torch.log, [np.abs(randn(3, 3)) + 0.1]),
    "sqrt": (F.sqrt, torch.sqrt, [np.abs(randn(7)) + 0.1]),
    "abs": (F.abs, torch.abs, [randn(4, 4)]),
    "maximum_ties": (F.maximum, torch.maximum, [np.array([1.0, 2.0, 3.0], np.float32),
                                                np.array([1.0, 1.0, 4.0], np.float32)]),
    "minimum": (F.minimum, torch.minimum, [randn(3, 4), randn(3, 4)]),
    "clip": (lambda x: F.clip(x, -0.5, 0.5), lambda x: torch.clamp(x, -0.5, 0.5), [randn(6, 6)]),
    "matmul": (F.matmul, torch.matmul, [randn(2, 3, 4), randn(4, 5)]),
    "sum": (lambda x: x.sum(axis=1), lambda x: x.sum(dim=1), [randn(3, 4, 2)]),
    "mean": (lambda x: x.mean(axis=(0, 2), keepdims=True), lambda x: x.mean(dim=(0, 2), keepdim=True),
             [randn(3, 4, 2)]),
    "max_ties": (lambda x: x.max(axis=1), lambda x: torch.amax(x, dim=1),
                 [np.array([[1.0, 3.0, 3.0], [0.0, -1.0, 2.0]], np.float32)]),
    "relu": (F.relu, TF.relu, [randn(4, 5)]),
    "leaky_relu": (F.leaky_relu, TF.leaky_relu, [randn(4, 5)]),
    "tanh": (F.tanh, torch.tanh, [randn(4, 5)]),
    "sigmoid": (F.sigmoid, torch.sigmoid, [randn(4, 5, scale=5)]),
    "gelu": (F.gelu, TF.gelu, [randn(4, 5, scale=3)]),
    "gelu_tanh": (lambda x: F.gelu(x, "tanh"), lambda x: TF.gelu(x, approximate="tanh"), [randn(4, 5, scale=3)]),
    "softmax": (lambda x: F.softmax(x, dim=1), lambda x: TF.softmax(x, dim=1), [randn(3, 5)]),
    "softmax_huge_logits": (lambda x: F.softmax(x, dim=-1), lambda x: TF.softmax(x, dim=-1),
                            [randn(3, 5, scale=1e4)]),
    "log_softmax_huge_logits": (lambda x: F.log_softmax(x, dim=-1), lambda x: TF.log_softmax(x, dim=-1),
                                [randn(3, 5, scale=1e4)]),
    "linear": (F.linear, TF.linear, [randn(6, 3), randn(5, 3), randn(5)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, LABELS), lambda x: TF.cross_entropy(x, torch.tensor(LABELS)),
                      [randn(6, 4)]),
    "cross_entropy_huge_logits": (lambda x: F.cross_entropy(x, LABELS),
                                  lambda x: TF.cross_entropy(x, torch.tensor(LABELS)), [randn(6, 4, scale=1e4)]),
    "cross_entropy_smoothing": (lambda x: F.cross_entropy(x, LABELS, label_smoothing=0.1),  # the fused path
                                lambda x: TF.cross_entropy(x, torch.tensor(LABELS), label_smoothing=0.1),
                                [randn(6, 4)]),
    "cross_entropy_weight_smoothing": (
        lambda x: F.cross_entropy(x, LABELS, weight=np.array([1, 2, 0.5, 1], np.float32), label_smoothing=0.1),
        lambda x: TF.cross_entropy(x, torch.tensor(LABELS), weight=torch.tensor([1, 2, 0.5, 1]),
                                   label_smoothing=0.1),
        [randn(6, 4)]),
    "mse_loss": (F.mse_loss, TF.mse_loss, [randn(4, 3), randn(4, 3)]),
    "bce_with_logits": (F.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits,
                        [randn(5, 2, scale=30), R.uniform(0, 1, (5, 2)).astype(np.float32)]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
               lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=1),
               [randn(2, 3, 9, 8), randn(4, 3, 3, 3), randn(4)]),
    "conv2d_dilated": (lambda x, w: F.conv2d(x, w, dilation=2), lambda x, w: TF.conv2d(x, w, dilation=2),
                       [randn(1, 2, 7, 7), randn(3, 2, 2, 2)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1), lambda x: TF.max_pool2d(x, 3, 2, 1), [randn(2, 3, 7, 6)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2), lambda x: TF.avg_pool2d(x, 2), [randn(2, 3, 6, 6)]),
    "avg_pool2d_padded_exclusive": (lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                                    lambda x: TF.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [randn(1, 2, 5, 6)]),
    "embedding": (lambda w: F.embedding(np.array([[1, 3], [3, 0]]), w),
                  lambda w: TF.embedding(torch.tensor([[1, 3], [3, 0]]), w), [randn(4, 5)]),
    "batch_norm_train_4d": (
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True),
        [randn(4, 3, 2, 2), randn(3), randn(3)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_gradients_match_torch(name, device):
    """On every device (the GPU's fused kernels included) against torch on the CPU."""
    _check_against_torch(name, device)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_reference_kernels_match_torch(name):
    """On the CPU with the compiled kernels off (DLTRAIN_FUSED_KERNELS=0): the plain array code of
    backend/reference.py."""
    with dltrain.backend.fused_kernels(False):
        _check_against_torch(name, "cpu")


def _check_against_torch(name, device):
    ours_fn, torch_fn, inputs = CASES[name]
    ours = [dltrain.tensor(a, requires_grad=True, device=device) for a in inputs]
    theirs = [torch.tensor(a, requires_grad=True) for a in inputs]
    out = ours_fn(*ours)
    expected = torch_fn(*theirs)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    upstream = R.standard_normal(expected.shape).astype(np.float32)
    out.backward(upstream)
    expected.backward(torch.tensor(upstream))
    for mine, ref in zip(ours, theirs):
        np.testing.assert_allclose(dltrain.backend.to_numpy(mine.grad), ref.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_batch_norm_running_statistics_match_torch():
    x = randn(8, 3)
    mean, var = np.zeros(3, np.float32), np.ones(3, np.float32)
    t_mean, t_var = torch.zeros(3), torch.ones(3)
    for _ in range(3):
        F.batch_norm(dltrain.tensor(x), mean, var, training=True, momentum=0.3)
        TF.batch_norm(torch.tensor(x), t_mean, t_var, training=True, momentum=0.3)
    np.testing.assert_allclose(mean, t_mean.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, t_var.numpy(), rtol=1e-6, atol=1e-6)
