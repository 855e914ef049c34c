import numpy as np
import pytest

import dltrain
from dltrain import backend
from dltrain.errors import ConfigError, ShapeError
from dltrain.gradcheck import check_layer
from dltrain.layers import BatchNorm, Dropout, Sequential, build_layer, build_model

R = np.random.default_rng(5)

LAYER_SPECS = {
    "linear": ({"linear": {"units": 4}}, (5, 3)),
    "linear_no_bias_glorot": ({"linear": {"units": 2, "bias": False, "init": "glorot_normal"}}, (3, 4)),
    "relu": ("relu", (4, 6)),
    "leaky_relu": ({"leaky_relu": {"negative_slope": 0.2}}, (4, 6)),
    "tanh": ("tanh", (4, 6)),
    "sigmoid": ("sigmoid", (4, 6)),
    "gelu": ("gelu", (4, 6)),
    "softmax": ("softmax", (4, 6)),
    "dropout_train": ({"dropout": {"rate": 0.3}}, (4, 6)),
    "batchnorm_train_2d": ("batchnorm", (6, 3)),
    "batchnorm_train_4d": ("batchnorm", (3, 2, 2, 2)),
    "flatten": ("flatten", (2, 3, 2)),
    "sequential": ({"sequential": {"layers": [{"linear": {"units": 5}}, "tanh", {"linear": {"units": 2}}]}}, (4, 3)),
}


@pytest.mark.parametrize("name", sorted(LAYER_SPECS))
def test_layer_gradients(name, device):
    spec, shape = LAYER_SPECS[name]
    x = R.standard_normal(shape)
    if name in ("relu", "leaky_relu"):
        x = np.where(np.abs(x) < 0.05, 0.1, x)  # off the kink
    check_layer(build_layer(spec), x, device=device)


def test_batchnorm_eval_gradients_use_running_statistics():
    layer = build_layer("batchnorm")
    with backend.default_dtype_as(np.float64):
        layer.build((3,))
    layer._buffers["running_mean"][:] = [0.5, -1.0, 2.0]
    layer._buffers["running_var"][:] = [2.0, 0.5, 1.5]
    layer.eval()
    check_layer(layer, R.standard_normal((4, 3)))


def test_deep_model_gradients_through_every_layer_kind():
    model = build_layer({"sequential": {"layers": [
        {"linear": {"units": 6}}, "batchnorm", "gelu", {"linear": {"units": 5}}, "sigmoid",
        {"dropout": {"rate": 0.25}}, {"linear": {"units": 3}}, "softmax"]}})
    check_layer(model, R.standard_normal((5, 4)))


def test_dropout_train_and_eval_differ():
    layer = Dropout(rate=0.5)
    layer.build((1000,))
    x = dltrain.tensor(np.ones((4, 1000), np.float32))
    train_out = layer(x).numpy()
    assert set(np.unique(train_out)) == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert 0.45 < (train_out == 0).mean() < 0.55
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())


def test_dropout_is_reproducible_from_the_seed():
    layer = Dropout(rate=0.5)
    x = dltrain.tensor(np.ones((3, 50), np.float32))
    backend.manual_seed(42)
    first = layer(x).numpy()
    backend.manual_seed(42)
    np.testing.assert_array_equal(layer(x).numpy(), first)


def test_batchnorm_train_uses_batch_statistics_and_eval_running_ones():
    layer = BatchNorm(momentum=0.1)
    layer.build((2,))
    data = R.normal(loc=[3.0, -2.0], scale=[2.0, 0.5], size=(64, 2)).astype(np.float32)
    out = layer(dltrain.tensor(data)).numpy()
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-3)
    layer.eval()
    eval_out = layer(dltrain.tensor(data)).numpy()
    # After one step the running stats are 0.9 * (0, 1) + 0.1 * batch: far from the batch's.
    assert np.abs(eval_out.mean(axis=0)).min() > 0.1


def test_batchnorm_running_statistics_converge_to_the_data():
    layer = BatchNorm(momentum=0.1)
    layer.build((3,))
    mean, std = np.array([5.0, -1.0, 0.2]), np.array([3.0, 0.5, 1.0])
    rng = np.random.default_rng(0)
    for _ in range(300):
        batch = rng.normal(mean, std, size=(256, 3)).astype(np.float32)
        layer(dltrain.tensor(batch))
    np.testing.assert_allclose(layer._buffers["running_mean"], mean, rtol=0.03, atol=0.03)
    np.testing.assert_allclose(layer._buffers["running_var"], std ** 2, rtol=0.05)


def test_shape_inference_and_summary():
    model = build_model([{"linear": {"units": 16}}, "relu", {"linear": {"units": 3}}, "softmax"], (5,))
    assert model.output_shape == (3,)
    assert model.num_parameters() == 5 * 16 + 16 + 16 * 3 + 3
    summary = model.summary()
    assert "(batch, 16)" in summary and "(batch, 3)" in summary
    assert summary.splitlines()[-1].split() == ["total", "147"]


def test_state_dict_names_and_round_trip():
    specs = [{"linear": {"units": 4}}, "batchnorm", "relu", {"linear": {"units": 2}}]
    backend.manual_seed(1)
    a = build_model(specs, (3,))
    backend.manual_seed(2)
    b = build_model(specs, (3,))
    assert sorted(a.state_dict()) == ["0.bias", "0.weight", "1.bias", "1.running_mean", "1.running_var",
                                      "1.weight", "3.bias", "3.weight"]
    assert a.state_dict()["0.weight"].shape == (4, 3)  # (out, in) as torch.nn.Linear
    b.load_state_dict(a.state_dict())
    x = dltrain.tensor(R.standard_normal((5, 3)).astype(np.float32))
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())


def test_load_state_dict_names_the_mismatch():
    model = build_model([{"linear": {"units": 4}}], (3,))
    with pytest.raises(ShapeError, match=r"state '0.weight': expected shape \(4, 3\), got \(4, 5\)"):
        model.load_state_dict({"0.weight": np.zeros((4, 5)), "0.bias": np.zeros(4)})


def test_linear_refuses_unflattened_input_naming_the_layer():
    with pytest.raises(ShapeError, match=r"model\[0\].linear: expected input \(batch, features\): flatten first, "
                                         r"got per-sample shape \(2, 3\)"):
        build_model([{"linear": {"units": 4}}], (2, 3))


def test_unknown_layer_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown layer 'lineer' \(did you mean 'linear'\?\); available: .*relu"):
        build_layer("lineer")


def test_initializers_have_the_stated_spread():
    backend.manual_seed(0)
    he = build_model([{"linear": {"units": 500, "init": "he_normal"}}], (1000,))
    assert abs(he.state_dict()["0.weight"].std() - np.sqrt(2 / 1000)) < 1e-3
    glorot = build_model([{"linear": {"units": 500, "init": "glorot_uniform"}}], (1000,))
    bound = np.sqrt(6 / 1500)
    w = glorot.state_dict()["0.weight"]
    assert w.max() <= bound and w.min() >= -bound and w.max() > 0.99 * bound


def test_same_seed_same_weights():
    backend.manual_seed(9)
    a = build_model([{"linear": {"units": 8}}], (4,)).state_dict()["0.weight"]
    backend.manual_seed(9)
    b = build_model([{"linear": {"units": 8}}], (4,)).state_dict()["0.weight"]
    np.testing.assert_array_equal(a, b)


def test_train_eval_switch_reaches_nested_layers():
    model = Sequential([build_layer({"sequential": {"layers": [{"dropout": {"rate": 0.5}}]}})])
    model.eval()
    assert not model.layers[0].layers[0].training
    model.train()
    assert model.layers[0].layers[0].training


def test_a_parameter_too_large_to_allocate_is_refused_by_name():
    with pytest.raises(ShapeError, match=r"model\[1\].linear: a parameter of shape \(10000000000, 4\) would hold "
                                         r"40,000,000,000 values; at most 268,435,456 are allowed"):
        build_model(["relu", {"linear": {"units": 10 ** 10}}], (4,))
