"""Two optimizer steps against values worked out by hand from the update formulas.

Parameter p0 = [1, -2]; gradients g1 = [0.5, 1], then g2 = [-1, 0.5].
"""

import numpy as np
import pytest

from dltrain import optim
from dltrain.layers import Parameter
from dltrain.registry import optimizers

G1, G2 = np.array([0.5, 1.0]), np.array([-1.0, 0.5])


def run_two_steps(opt_name, decay=True, **options):
    param = Parameter(np.array([1.0, -2.0]), decay=decay)
    opt = optimizers.get(opt_name)([param], **options)
    seen = []
    for g in (G1, G2):
        param.grad = g.copy()
        opt.step()
        seen.append(param.data.copy())
    return seen


@pytest.mark.parametrize("name, options, expected", [
    # v1 = g1 -> p1 = p0 - 0.1 v1;  v2 = 0.9 v1 + g2 = [-0.55, 1.4] -> p2 = p1 - 0.1 v2
    ("sgd", {"lr": 0.1, "momentum": 0.9}, [[0.95, -2.1], [1.005, -2.24]]),
    # step = g + 0.9 v:  [0.95, 1.9], then [-1.495, 1.76]
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, [[0.905, -2.19], [1.0545, -2.366]]),
    # L2: g1 + 0.1 p0 = [0.6, 0.8];  g2 + 0.1 p1 = [-0.906, 0.292]
    ("sgd", {"lr": 0.1, "weight_decay": 0.1}, [[0.94, -2.08], [1.0306, -2.1092]]),
    # step 1: m_hat / sqrt(v_hat) = g1 / |g1| = [1, 1];  step 2: m = [-0.055, 0.14], v = [0.00124975, 0.001249],
    # m_hat = m / 0.19, v_hat = v / 0.001999 -> m_hat / sqrt(v_hat) = [-0.366104, 0.932180]
    ("adam", {"lr": 0.1}, [[0.9, -2.1], [0.936610, -2.193218]]),
    # decoupled: p *= 1 - 0.1 * 0.1 before each Adam step
    ("adamw", {"lr": 0.1, "weight_decay": 0.1}, [[0.89, -2.08], [0.917710, -2.152418]]),
])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
def test_two_steps_match_hand_computed_values(name, options, expected, compiled):
    from dltrain import backend

    with backend.fused_kernels(compiled):
        seen = run_two_steps(name, **options)
    np.testing.assert_allclose(seen, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_parameter_without_a_gradient_is_left_alone_and_the_others_step(name):
    """A frozen (or unused) parameter has no gradient: the others take the same step as alone."""
    frozen = Parameter(np.array([5.0, 5.0]))
    param = Parameter(np.array([1.0, -2.0]))
    opt = optimizers.get(name)([frozen, param], lr=0.1, weight_decay=0.1)
    for g in (G1, G2):
        param.grad = g.copy()
        opt.step()
    np.testing.assert_array_equal(frozen.data, [5.0, 5.0])
    np.testing.assert_allclose(param.data, run_two_steps(name, lr=0.1, weight_decay=0.1)[-1], rtol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_biases_and_norms_unless_asked(name):
    plain = run_two_steps(name, lr=0.1, weight_decay=0.0)
    not_decayed = run_two_steps(name, decay=False, lr=0.1, weight_decay=0.5)
    decayed_anyway = run_two_steps(name, decay=False, lr=0.1, weight_decay=0.5, decay_all=True)
    np.testing.assert_allclose(not_decayed, plain)
    assert not np.allclose(decayed_anyway, plain)


def test_state_dict_round_trip_continues_identically():
    def make():
        param = Parameter(np.array([1.0, -2.0]))
        return param, optim.Adam([param], lr=0.1)

    a, opt_a = make()
    a.grad = G1.copy()
    opt_a.step()
    b, opt_b = make()
    b.data[...] = a.data
    opt_b.load_state_dict(opt_a.state_dict())
    assert set(opt_a.state_dict()["slots"]) == {"m/0", "v/0"}
    for p, opt in ((a, opt_a), (b, opt_b)):
        p.grad = G2.copy()
        opt.step()
    np.testing.assert_array_equal(a.data, b.data)


def test_clip_grad_norm_scales_all_gradients_together():
    p1, p2 = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    p1.grad, p2.grad = np.array([3.0]), np.array([4.0])
    norm = optim.clip_grad_norm([p1, p2], max_norm=1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose([p1.grad[0], p2.grad[0]], [0.6, 0.8], atol=1e-6)
    p1.grad, p2.grad = np.array([0.3]), np.array([0.4])
    optim.clip_grad_norm([p1, p2], max_norm=1.0)
    np.testing.assert_array_equal([p1.grad[0], p2.grad[0]], [0.3, 0.4])  # below the limit: untouched


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(ValueError, match="nesterov momentum needs momentum > 0"):
        optim.SGD([Parameter(np.zeros(1))], nesterov=True)


def test_an_optimizer_without_fused_update_runs_its_own_update_where_kernels_exist(device):
    """A user's optimizer defining only update() trains on every device, where compiled kernels are on by default
    (on the GPU it used to crash)."""
    from dltrain import backend
    from dltrain.layers.module import Parameter
    from dltrain.optim.optimizers import Optimizer

    class HalfStep(Optimizer):
        def update(self, index, param, grad):
            param.data -= 0.5 * self.lr * grad

    param = Parameter(backend.to_device(np.ones(3, np.float32), device))
    assert backend.fused(param.data) is not None
    param.grad = backend.to_device(np.full(3, 2.0, np.float32), device)
    HalfStep([param], lr=0.1).step()
    np.testing.assert_allclose(backend.to_numpy(param.data), np.full(3, 0.9, np.float32))
