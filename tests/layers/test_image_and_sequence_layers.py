import numpy as np
import pytest

import dltrain
import dltrain.functional as F
from dltrain import backend, no_grad, optim
from dltrain.errors import ShapeError
from dltrain.gradcheck import check_gradients, check_layer
from dltrain.layers import build_layer, build_model

R = np.random.default_rng(8)

LAYER_CASES = {  # spec, input shape (batch first)
    "conv2d": ({"conv2d": {"filters": 3, "kernel_size": 3, "stride": 2, "padding": 1}}, (2, 2, 5, 6)),
    "conv2d_same_batch1": ({"conv2d": {"filters": 2, "kernel_size": 3, "padding": "same"}}, (1, 1, 5, 5)),
    "conv2d_dilated_no_bias": ({"conv2d": {"filters": 2, "kernel_size": 2, "dilation": 2, "bias": False}},
                               (2, 2, 5, 5)),
    "max_pool2d": ({"max_pool2d": {"kernel_size": 2}}, (2, 2, 5, 4)),
    "avg_pool2d_overlapping": ({"avg_pool2d": {"kernel_size": 3, "stride": 1, "padding": 1}}, (1, 2, 4, 5)),
    "global_avg_pool": ("global_avg_pool", (2, 3, 3, 4)),
    "batchnorm_4d": ("batchnorm", (3, 2, 3, 3)),
    "dropout_4d": ({"dropout": {"rate": 0.4}}, (2, 2, 3, 3)),
    "rnn": ({"rnn": {"units": 3}}, (2, 4, 3)),
    "rnn_sequences": ({"rnn": {"units": 3, "return_sequences": True}}, (2, 3, 2)),
    "lstm": ({"lstm": {"units": 3}}, (2, 4, 2)),
    "lstm_sequences_batch1": ({"lstm": {"units": 2, "return_sequences": True}}, (1, 3, 3)),
    "gru": ({"gru": {"units": 3}}, (2, 4, 2)),
    "gru_sequences": ({"gru": {"units": 2, "return_sequences": True}}, (2, 3, 3)),
    "reshape": ({"reshape": {"shape": [3, -1]}}, (2, 1, 3, 4)),
    "residual_identity": ({"residual": {"layers": [{"linear": {"units": 4}}, "tanh"]}}, (3, 4)),
    "residual_projection_vector": ({"residual": {"layers": [{"linear": {"units": 5}}, "tanh"]}}, (3, 4)),
    "residual_projection_image": ({"residual": {"layers": [
        {"conv2d": {"filters": 3, "kernel_size": 3, "stride": 2, "padding": 1}}, "tanh",
        {"conv2d": {"filters": 3, "kernel_size": 3, "padding": "same"}}]}}, (2, 2, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_gradients(name, device):
    spec, shape = LAYER_CASES[name]
    x = R.standard_normal(shape)
    if name.startswith("max_pool"):
        x = R.permutation(x.size).reshape(shape) * 0.01  # distinct values, no ties
    check_layer(build_layer(spec), x, device=device)


def test_embedding_gradient_accumulates_repeated_tokens():
    layer = build_layer({"embedding": {"vocab_size": 5, "units": 3}})
    tokens = np.array([[0, 2, 2], [4, 2, 0]])
    with backend.default_dtype_as(np.float64):
        layer.build((3,))
    check_gradients(lambda w: F.embedding(tokens, w), [layer.weight.data.copy()])
    out = layer(dltrain.tensor(tokens.astype(np.float32)))
    assert out.shape == (2, 3, 3)


def test_output_shapes_of_a_small_cnn():
    model = build_model([{"conv2d": {"filters": 8, "kernel_size": 3, "padding": 1}}, "relu", "max_pool2d",
                         {"conv2d": {"filters": 16, "kernel_size": 3}}, "max_pool2d", "flatten",
                         {"linear": {"units": 10}}], (1, 28, 28))
    shapes = [layer.output_shape for layer in model.layers]
    assert shapes == [(8, 28, 28), (8, 28, 28), (8, 14, 14), (16, 12, 12), (16, 6, 6), (576,), (10,)]
    assert model.num_parameters() == (8 * 9 + 8) + (16 * 8 * 9 + 16) + (576 * 10 + 10)


def test_kernel_larger_than_input_names_the_layer_and_shapes():
    with pytest.raises(ShapeError, match=r"model\[1\].conv2d: expected input at least 5x5 pixels .* got 4x4"):
        build_model(["relu", {"conv2d": {"filters": 2, "kernel_size": 5}}], (1, 4, 4))


def test_recurrent_layer_refuses_images_and_says_how_to_fix():
    with pytest.raises(ShapeError, match="model.0..gru: expected input .batch, time, features.; a reshape layer"):
        build_model([{"gru": {"units": 4}}], (1, 28, 28))


def test_nested_layer_paths_follow_the_config():
    with pytest.raises(ShapeError, match=r"model\[1\].residual.layers\[0\].linear: expected input"):
        build_model(["relu", {"residual": {"layers": [{"linear": {"units": 2}}]}}], (2, 3))


def test_reshape_refuses_a_shape_that_does_not_fit():
    with pytest.raises(ShapeError, match=r"model\[0\].reshape: expected input 784 values per sample to fit shape "
                                         r"\[27, -1\]"):
        build_model([{"reshape": {"shape": [27, -1]}}], (1, 28, 28))


@pytest.mark.parametrize("name", ["gru", "lstm", "rnn"])
def test_recurrent_layers_match_torch(name, device):
    """Outputs and the gradients of the input and of every weight against torch.nn.GRU / LSTM / RNN, on every
    device (the GPU's sequence kernels included)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[name]
    x = R.standard_normal((3, 5, 4)).astype(np.float32)
    layer = build_layer({name: {"units": 6, "return_sequences": True}})
    layer.build((5, 4))
    ref = module(4, 6, batch_first=True)
    names = {"weight_ih": "weight_ih_l0", "weight_hh": "weight_hh_l0", "bias_ih": "bias_ih_l0", "bias_hh": "bias_hh_l0"}
    with torch.no_grad():
        for ours, theirs in names.items():
            getattr(ref, theirs).copy_(torch.tensor(layer._parameters[ours].data))
    layer.to(device)
    xt = dltrain.tensor(x, requires_grad=True, device=device)
    out = layer(xt)
    xr = torch.tensor(x, requires_grad=True)
    expected, _ = ref(xr)
    np.testing.assert_allclose(backend.to_numpy(out.data), expected.detach().numpy(), atol=1e-5)
    upstream = R.standard_normal(out.shape).astype(np.float32)
    out.backward(dltrain.tensor(upstream, device=device).data)
    expected.backward(torch.tensor(upstream))
    np.testing.assert_allclose(backend.to_numpy(xt.grad), xr.grad.numpy(), atol=1e-5)
    for ours, theirs in names.items():
        np.testing.assert_allclose(backend.to_numpy(layer._parameters[ours].grad), getattr(ref, theirs).grad.numpy(),
                                   atol=1e-4, err_msg=ours)


def test_gru_remembers_the_first_token_over_20_steps():
    """Only a model with memory solves it: the label is the sign of step 0, followed by 19 noise steps."""
    rng = np.random.default_rng(0)
    n, steps = 512, 20
    labels = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, steps, 1)).astype(np.float32)
    x[:, 0, 0] = np.where(labels == 1, 1.0, -1.0)
    backend.manual_seed(0)
    model = build_model([{"gru": {"units": 16}}, {"linear": {"units": 2}}], (steps, 1))
    opt = optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(30):
        for start in range(0, n, 64):
            opt.zero_grad()
            F.cross_entropy(model(dltrain.tensor(x[start:start + 64])), labels[start:start + 64]).backward()
            opt.step()
    test_labels = rng.integers(0, 2, 256)
    test_x = rng.normal(0, 1, (256, steps, 1)).astype(np.float32)
    test_x[:, 0, 0] = np.where(test_labels == 1, 1.0, -1.0)
    with no_grad():
        accuracy = (model(dltrain.tensor(test_x)).numpy().argmax(axis=1) == test_labels).mean()
    assert accuracy > 0.95


def composed_gru(x, h, w_ih, w_hh, b_ih, b_hh):
    """The GRU written with separate ops, unrolled step by step: the reference for the one-op sequence."""
    hidden = h.shape[1]
    outputs = []
    for t in range(x.shape[1]):
        gi = F.linear(x[:, t], w_ih, b_ih)
        gh = F.linear(h, w_hh, b_hh)
        r = F.sigmoid(gi[:, :hidden] + gh[:, :hidden])
        z = F.sigmoid(gi[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        n = F.tanh(gi[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
        h = (1 - z) * n + z * h
        outputs.append(h)
    return F.stack(outputs, axis=1)


def composed_lstm(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """The LSTM written with separate ops, unrolled step by step: the reference for the one-op sequence."""
    hidden = h.shape[1]
    outputs, cells = [], []
    for t in range(x.shape[1]):
        a = F.linear(x[:, t], w_ih, b_ih) + F.linear(h, w_hh, b_hh)
        i, f, o = (F.sigmoid(a[:, k * hidden:(k + 1) * hidden]) for k in (0, 1, 3))
        g = F.tanh(a[:, 2 * hidden:3 * hidden])
        c = f * c + i * g
        h = o * F.tanh(c)
        outputs.append(h)
        cells.append(c)
    return F.stack(outputs, axis=1), F.stack(cells, axis=1)


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_sequence_matches_the_composed_ops_and_finite_differences(device, bias):
    """The LSTM's hand-written backpropagation through time against autodiff over the unrolled composed ops:
    every h_t and c_t, and every gradient (h0's and c0's included, through both the outputs and the last c)."""
    arrays = [R.standard_normal((3, 5, 2)), R.standard_normal((3, 4)), R.standard_normal((3, 4)),
              R.standard_normal((16, 2)), R.standard_normal((16, 4)), R.standard_normal(16), R.standard_normal(16)]
    if not bias:
        arrays[5:] = [None, None]

    def run(x, h0, c0, *weights):
        outputs, (h, c) = F.lstm(x, (h0, c0), *weights)
        return outputs.sum(axis=2) + c.sum(axis=1, keepdims=True) * 0.5 + h.sum(axis=1, keepdims=True)

    check_gradients(run, [a for a in arrays if a is not None], device=device)
    with backend.default_dtype_as(np.float64):
        sequence = [None if a is None else dltrain.tensor(a, requires_grad=True, device=device) for a in arrays]
        composed = [None if a is None else dltrain.tensor(a, requires_grad=True) for a in arrays]
        outputs, (last_h, last_c) = F.lstm(sequence[0], tuple(sequence[1:3]), *sequence[3:])
        expected, cells = composed_lstm(*composed)
        np.testing.assert_allclose(backend.to_numpy(outputs.data), expected.numpy(), atol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(last_c.data), cells.numpy()[:, -1], atol=1e-12)
        upstream = R.standard_normal(outputs.shape)
        ((outputs * dltrain.tensor(upstream, device=device)).sum() + last_c.sum()).backward()
        ((expected * dltrain.tensor(upstream)).sum() + cells[:, -1].sum()).backward()
    for a, b in zip(sequence, composed):
        if a is not None:
            np.testing.assert_allclose(backend.to_numpy(a.grad), b.grad, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_gru_sequence_matches_the_composed_ops_and_finite_differences(device, bias):
    """The GRU's hand-written backpropagation through time against autodiff over the unrolled composed ops
    (values and every gradient, h0's included), and against finite differences."""
    arrays = [R.standard_normal((3, 5, 2)), R.standard_normal((3, 4)), R.standard_normal((12, 2)),
              R.standard_normal((12, 4)), R.standard_normal(12), R.standard_normal(12)]
    if not bias:
        arrays[4:] = [None, None]
    check_gradients(lambda *a: F.gru(*a)[0], [a for a in arrays if a is not None], device=device)
    with backend.default_dtype_as(np.float64):
        sequence = [None if a is None else dltrain.tensor(a, requires_grad=True, device=device) for a in arrays]
        composed = [None if a is None else dltrain.tensor(a, requires_grad=True) for a in arrays]
        outputs, last = F.gru(*sequence)
        expected = composed_gru(*composed)
        np.testing.assert_allclose(backend.to_numpy(outputs.data), expected.numpy(), atol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(last.data), expected.numpy()[:, -1], atol=1e-12)
        upstream = R.standard_normal(outputs.shape)
        (outputs * dltrain.tensor(upstream, device=device)).sum().backward()
        (expected * dltrain.tensor(upstream)).sum().backward()
    for a, b in zip(sequence, composed):
        if a is not None:
            np.testing.assert_allclose(backend.to_numpy(a.grad), b.grad, atol=1e-12)
