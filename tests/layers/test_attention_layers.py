"""Attention, layer normalization, positional embeddings, sequence pooling and the padding mask that travels with a
batch: against PyTorch (float64, copied weights), finite differences, every device, and padded sequences that must
answer as they would alone."""

import numpy as np
import pytest

import dltrain
import dltrain.functional as F
from dltrain import backend, no_grad
from dltrain.config import config_from_dict
from dltrain.errors import ConfigError, ShapeError
from dltrain.gradcheck import check_layer
from dltrain.layers import Module, build_layer, build_model
from dltrain.registry import layers as layer_registry
from dltrain.training.model import Model

R = np.random.default_rng(32)

# Gradient cases for tests/layers/test_layer_coverage.py: spec, input shape (batch first), padding lengths or None
ATTENTION_CASES = {
    "layernorm": ("layernorm", (2, 3, 5), None),
    "layernorm_2d_no_affine": ({"layernorm": {"affine": False, "eps": 1e-3}}, (4, 6), None),
    "multihead_attention": ({"multihead_attention": {"heads": 2}}, (2, 4, 4), None),
    "multihead_attention_masked_causal": ({"multihead_attention": {"heads": 3, "units": 6, "causal": True}},
                                          (3, 4, 5), [4, 2, 0]),
    "multihead_attention_dropout_no_bias": ({"multihead_attention": {"heads": 1, "dropout": 0.3, "bias": False}},
                                            (2, 3, 4), [3, 1]),
    "transformer_encoder": ({"transformer_encoder": {"heads": 2, "ff_units": 6, "dropout": 0.0}}, (2, 3, 4), [3, 2]),
    "transformer_encoder_norm_first_gelu": ({"transformer_encoder": {
        "heads": 2, "ff_units": 5, "dropout": 0.2, "activation": "gelu", "norm_first": True, "causal": True}},
        (2, 3, 4), None),
    "positional_embedding_learned": ({"positional_embedding": {"max_length": 6}}, (2, 4, 3), None),
    "positional_embedding_sinusoidal": ({"positional_embedding": {"kind": "sinusoidal"}}, (2, 4, 3), None),
    "sequence_pool_mean_masked": ("sequence_pool", (3, 4, 2), [4, 1, 0]),
    "sequence_pool_max": ({"sequence_pool": {"mode": "max"}}, (2, 4, 3), None),
    "sequence_pool_max_masked": ({"sequence_pool": {"mode": "max"}}, (3, 4, 3), [2, 4, 0]),
    "sequence_pool_first": ({"sequence_pool": {"mode": "first"}}, (2, 3, 2), [1, 3]),
    "sequence_pool_last_masked": ({"sequence_pool": {"mode": "last"}}, (3, 4, 2), [2, 4, 0]),
    "mean_pool": ("mean_pool", (2, 4, 3), None),
    "rnn_masked": ({"rnn": {"units": 3}}, (3, 4, 2), [4, 2, 0]),
    "lstm_masked_sequences": ({"lstm": {"units": 2, "return_sequences": True}}, (2, 4, 2), [1, 3]),
    "gru_masked": ({"gru": {"units": 2}}, (3, 3, 2), [3, 1, 0]),
}


def padding_mask(lengths, time):
    """True at padded positions: each sequence is right-padded after its length."""
    return np.arange(time)[None, :] >= np.asarray(lengths)[:, None]


@pytest.mark.parametrize("name", sorted(ATTENTION_CASES))
def test_layer_gradients(name, device):
    spec, shape, lengths = ATTENTION_CASES[name]
    x = R.standard_normal(shape)
    if "max" in name:
        x = R.permutation(x.size).reshape(shape) * 0.1  # distinct values, no ties
    mask = None if lengths is None else padding_mask(lengths, shape[1])
    check_layer(build_layer(spec), x, device=device, padding_mask=mask)


# ---------------------------------------------------------------- against PyTorch


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")


def copy_into_torch(layer, module):
    """Our state dict into the torch module: the same names and layouts, checked by load_state_dict(strict)."""
    torch = torch_or_skip()
    ours = {name: torch.tensor(backend.to_numpy(array)) for name, array in layer.state_dict().items()}
    assert list(ours) == list(module.state_dict())
    module.load_state_dict(ours)


def compare_with_torch(layer, module, x, mask, run_torch, device, atol=1e-10):
    """Outputs, and the gradients of the input and of every parameter, of our layer and the torch module."""
    torch = torch_or_skip()
    copy_into_torch(layer, module)
    layer.to(device)
    xt = dltrain.tensor(x, requires_grad=True, device=device)
    if mask is not None:
        xt.padding_mask = backend.to_device(mask, device)
    out = layer(xt)
    xr = torch.tensor(x, requires_grad=True)
    expected = run_torch(module, xr)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), atol=atol, rtol=0)
    upstream = R.standard_normal(out.shape)
    out.backward(backend.to_device(upstream, device))
    expected.backward(torch.tensor(upstream))
    np.testing.assert_allclose(backend.to_numpy(xt.grad), xr.grad.numpy(), atol=atol, rtol=0)
    theirs = dict(module.named_parameters())
    for name, param in layer.named_parameters():
        np.testing.assert_allclose(backend.to_numpy(param.grad), theirs[name].grad.numpy(), atol=atol, rtol=0,
                                   err_msg=name)


def causal_mask_for_torch(time):
    """torch's boolean attn_mask: True where a query may NOT attend."""
    torch = torch_or_skip()
    return torch.triu(torch.ones(time, time, dtype=torch.bool), diagonal=1)


@pytest.mark.parametrize("masks", ["none", "padding", "causal", "padding_and_causal"])
@pytest.mark.parametrize("bias", [True, False])
def test_multihead_attention_matches_torch(device, masks, bias):
    torch = torch_or_skip()
    torch.backends.mha.set_fastpath_enabled(False)
    time = 5
    causal = "causal" in masks
    mask = padding_mask([5, 3, 1], time) if "padding" in masks else None
    x = R.standard_normal((3, time, 8))
    layer = build_layer({"multihead_attention": {"heads": 4, "causal": causal, "bias": bias}})
    with backend.default_dtype_as(np.float64):
        layer.build((time, 8))
    module = torch.nn.MultiheadAttention(8, 4, bias=bias, batch_first=True, dtype=torch.float64)

    def run(m, xr):
        out, _ = m(xr, xr, xr, key_padding_mask=None if mask is None else torch.tensor(mask),
                   attn_mask=causal_mask_for_torch(time) if causal else None, need_weights=False)
        return out

    compare_with_torch(layer, module, x, mask, run, device)


@pytest.mark.parametrize("masks", ["none", "padding", "causal", "padding_and_causal"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_matches_torch_in_eval_mode(device, masks, activation, norm_first):
    torch = torch_or_skip()
    torch.backends.mha.set_fastpath_enabled(False)  # the fast path changes the numerics (and zeroes padded rows)
    time, features = 4, 6
    causal = "causal" in masks
    mask = padding_mask([4, 2, 3], time) if "padding" in masks else None
    x = R.standard_normal((3, time, features))
    layer = build_layer({"transformer_encoder": {"heads": 3, "ff_units": 10, "activation": activation,
                                                 "norm_first": norm_first, "causal": causal}})
    with backend.default_dtype_as(np.float64):
        layer.build((time, features))
    layer.eval()
    module = torch.nn.TransformerEncoderLayer(features, 3, 10, dropout=0.1, activation=activation, batch_first=True,
                                              norm_first=norm_first, dtype=torch.float64).eval()

    def run(m, xr):
        return m(xr, src_mask=causal_mask_for_torch(time) if causal else None, is_causal=causal,
                 src_key_padding_mask=None if mask is None else torch.tensor(mask))

    compare_with_torch(layer, module, x, mask, run, device)


def test_transformer_encoder_defaults_are_torchs():
    torch = torch_or_skip()
    layer = build_layer({"transformer_encoder": {"heads": 2}})
    layer.build((3, 4))
    module = torch.nn.TransformerEncoderLayer(4, 2, batch_first=True)
    assert (layer.ff_units, layer.dropout, layer.activation, layer.norm_first, layer.eps) == \
        (module.linear1.out_features, module.dropout.p, "relu", module.norm_first, module.norm1.eps)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_matches_torch(device, affine):
    torch = torch_or_skip()
    layer = build_layer({"layernorm": {"affine": affine, "eps": 1e-4}})
    with backend.default_dtype_as(np.float64):
        layer.build((3, 7))
    if affine:
        for param in layer.parameters():  # not the initial ones and zeros
            param.data[...] = R.standard_normal(param.shape)
    module = torch.nn.LayerNorm(7, eps=1e-4, elementwise_affine=affine, dtype=torch.float64)
    compare_with_torch(layer, module, R.standard_normal((2, 3, 7)) * 3 + 1, None, lambda m, xr: m(xr), device)


def test_dropout_in_attention_is_training_only_and_seeded():
    layer = build_layer({"transformer_encoder": {"heads": 2, "ff_units": 8, "dropout": 0.5}})
    layer.build((5, 4))
    x = dltrain.tensor(R.standard_normal((2, 5, 4)).astype(np.float32))
    backend.manual_seed(3)
    first = layer(x).numpy()
    backend.manual_seed(3)
    np.testing.assert_array_equal(layer(x).numpy(), first)
    assert np.abs(layer(x).numpy() - first).max() > 1e-3  # another draw
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), layer(x).numpy())


# ---------------------------------------------------------------- positional embeddings


def test_sinusoidal_positions_are_attention_is_all_you_need():
    layer = build_layer({"positional_embedding": {"kind": "sinusoidal", "max_length": 50}})
    with backend.default_dtype_as(np.float64):
        layer.build((10, 5))
    assert layer.parameters() == []
    table = layer.table()
    position, i = np.arange(50)[:, None], np.arange(5)[None, :]
    angle = position / 10000 ** ((i - i % 2) / 5)
    np.testing.assert_allclose(table, np.where(i % 2 == 0, np.sin(angle), np.cos(angle)), atol=1e-12)
    x = R.standard_normal((2, 10, 5))
    np.testing.assert_allclose(layer(dltrain.tensor(x)).numpy(), x + table[:10], atol=1e-12)


def test_learned_positions_are_a_table_of_max_length_and_refuse_longer_inputs():
    layer = build_layer({"positional_embedding": {"max_length": 8}})
    layer.build((6, 3))
    assert layer.weight.shape == (8, 3) and layer.weight.decay is False
    x = R.standard_normal((2, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(layer(dltrain.tensor(x)).numpy(), x + layer.weight.numpy()[:6], atol=1e-6)
    with pytest.raises(ShapeError, match=r"^model\[0\].positional_embedding: expected input at most max_length = 4 "
                                         r"time steps, got 6$"):
        build_model([{"positional_embedding": {"max_length": 4}}], (6, 3))


# ---------------------------------------------------------------- embedding: padding_idx and the data's vocabulary


def test_embedding_padding_idx_row_starts_at_zero_gets_no_gradient_and_sets_the_mask(device):
    torch = torch_or_skip()
    layer = build_layer({"embedding": {"vocab_size": 6, "units": 3, "padding_idx": 2}})
    with backend.default_dtype_as(np.float64):
        layer.build((4,))
    assert not layer.weight.numpy()[2].any()
    layer.weight.data[...] = R.standard_normal(layer.weight.shape)
    tokens = np.array([[1, 2, 2, 5], [2, 0, 3, 2]])
    ref = torch.nn.Embedding(6, 3, padding_idx=2, dtype=torch.float64)
    copy_into_torch(layer, ref)
    layer.to(device)
    out = layer(dltrain.tensor(tokens.astype(np.float64), device=device))
    np.testing.assert_array_equal(backend.to_numpy(out.padding_mask), tokens == 2)
    upstream = R.standard_normal(out.shape)
    out.backward(backend.to_device(upstream, device))
    expected = ref(torch.tensor(tokens))
    expected.backward(torch.tensor(upstream))
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy())
    np.testing.assert_allclose(backend.to_numpy(layer.weight.grad), ref.weight.grad.numpy(), atol=1e-12)


def test_embedding_keeps_a_mask_the_input_already_has():
    layer = build_layer({"embedding": {"vocab_size": 6, "units": 3, "padding_idx": 2}})
    layer.build((3,))
    x = dltrain.tensor(np.array([[1.0, 2.0, 0.0]], np.float32))
    x.padding_mask = np.array([[False, False, True]])
    np.testing.assert_array_equal(layer(x).padding_mask, [[False, False, True]])


def test_embedding_takes_the_datas_vocabulary_when_vocab_size_is_omitted():
    model = build_model([{"embedding": {"units": 4}}], (5,), {"vocab_size": 9, "padding_id": 0})
    assert model.layers[0].weight.shape == (9, 4)
    with pytest.raises(ConfigError, match=r"^model\[1\].embedding: vocab_size is not set and the data has no "
                                          r"vocabulary to take it from \(tokenized text has one\); set "
                                          r"embedding.vocab_size$"):
        build_model(["relu", {"embedding": {"units": 4}}], (5,))
    with pytest.raises(ConfigError, match=r"^model\[0\].embedding: padding_idx 9 is not a token id of the vocabulary "
                                          r"\(0..8\)$"):
        build_model([{"embedding": {"units": 4, "padding_idx": 9}}], (5,), {"vocab_size": 9})


# ---------------------------------------------------------------- the mask travels: padded = alone

SEQUENCE_MODELS = {  # after an embedding of 13 tokens (8 units); whether the output keeps the time axis
    "rnn": ([{"rnn": {"units": 4}}], False),
    "rnn_sequences": ([{"rnn": {"units": 4, "return_sequences": True}}], True),
    "lstm": ([{"lstm": {"units": 4}}], False),
    "lstm_sequences": ([{"lstm": {"units": 4, "return_sequences": True}}], True),
    "gru": ([{"gru": {"units": 4}}], False),
    "gru_sequences": ([{"gru": {"units": 4, "return_sequences": True}}], True),
    "multihead_attention": ([{"multihead_attention": {"heads": 2}}], True),
    "multihead_attention_causal": ([{"multihead_attention": {"heads": 4, "units": 12, "causal": True}}], True),
    "transformer_encoder": ([{"transformer_encoder": {"heads": 2, "ff_units": 16}}], True),
    "transformer_encoder_norm_first": ([{"positional_embedding": {"kind": "sinusoidal"}}, {"transformer_encoder": {
        "heads": 4, "ff_units": 16, "norm_first": True, "activation": "gelu"}}], True),
    "sequence_pool_mean": (["sequence_pool"], False),
    "sequence_pool_max": ([{"sequence_pool": {"mode": "max"}}], False),
    "sequence_pool_first": ([{"sequence_pool": {"mode": "first"}}], False),
    "sequence_pool_last": ([{"sequence_pool": {"mode": "last"}}], False),
    "mean_pool": (["mean_pool"], False),
    "layernorm_residual_stack": ([{"positional_embedding": {}}, {"residual": ["layernorm", {
        "multihead_attention": {"heads": 2}}]}, {"transformer_encoder": {"heads": 2, "ff_units": 8}},
        {"lstm": {"units": 5, "return_sequences": True}}, {"sequential": ["layernorm", "mean_pool"]}], False),
}
TIME = 7
LENGTHS = [7, 4, 1, 5]


def padded_tokens(lengths=LENGTHS, time=TIME):
    tokens = R.integers(1, 13, (len(lengths), time)).astype(np.float32)
    tokens[padding_mask(lengths, time)] = 0
    return tokens


@pytest.mark.parametrize("name", sorted(SEQUENCE_MODELS))
def test_a_padded_sequence_answers_as_it_would_alone(name, device):
    specs, keeps_time = SEQUENCE_MODELS[name]
    with backend.default_dtype_as(np.float64):
        model = build_model([{"embedding": {"vocab_size": 13, "units": 8}}, *specs], (TIME,)).eval().to(device)
    tokens = padded_tokens()
    x = dltrain.tensor(tokens.astype(np.float64), device=device)
    x.padding_mask = backend.to_device(tokens == 0, device)
    with no_grad():
        batch = model(x).numpy()
        for i, length in enumerate(LENGTHS):
            alone = model(dltrain.tensor(tokens[i:i + 1, :length].astype(np.float64), device=device)).numpy()[0]
            np.testing.assert_allclose(batch[i, :length] if keeps_time else batch[i], alone, atol=1e-12,
                                       err_msg=f"sequence {i} (length {length})")
            if keeps_time and name.startswith(("rnn", "lstm", "gru")):
                assert not batch[i, length:].any(), "a recurrent layer's outputs at padded steps are zeros"


def test_without_a_mask_padding_is_read_as_tokens():
    """The check above has teeth: the same batch without its mask answers differently."""
    model = build_model([{"embedding": {"vocab_size": 13, "units": 8}}, {"gru": {"units": 3}}], (TIME,)).eval()
    tokens = padded_tokens()
    masked = dltrain.tensor(tokens)
    masked.padding_mask = tokens == 0
    assert np.abs(model(masked).numpy()[1:] - model(dltrain.tensor(tokens)).numpy()[1:]).min() > 1e-6


def test_a_sequence_of_only_padding_gives_zeros_not_nan():
    tokens = padded_tokens([3, 0], 4)
    for spec in ("mean_pool", {"sequence_pool": {"mode": "max"}}, {"sequence_pool": {"mode": "last"}},
                 {"lstm": {"units": 3}}):
        model = build_model([{"embedding": {"vocab_size": 13, "units": 4}},
                             {"multihead_attention": {"heads": 2}}, spec], (4,))
        x = dltrain.tensor(tokens)
        x.padding_mask = tokens == 0
        out = model(x).numpy()
        assert np.isfinite(out).all()
        assert not out[1].any(), spec


def sequence_config(model):
    return config_from_dict({"data": {"name": "blobs"}, "model": model, "loss": {"name": "cross_entropy"}})


def test_the_model_marks_its_inputs_padding_from_the_datas_padding_id():
    config = sequence_config([{"embedding": {"units": 6}}, {"transformer_encoder": {"heads": 2, "ff_units": 8}},
                              "mean_pool", {"linear": {"units": 3}}])
    assert config.input_embedding() == ("model[0].embedding", None)
    model = Model(config, (TIME,), 3, None, data={"padding_id": 0, "vocab_size": 13})
    model.network.eval()
    tokens = padded_tokens()
    tensor = model.input_tensor(tokens)
    np.testing.assert_array_equal(tensor.padding_mask, tokens == 0)
    with no_grad():
        batch = model.predict_outputs(tokens).numpy()
        for i, length in enumerate(LENGTHS):
            np.testing.assert_allclose(batch[i], model.predict_outputs(tokens[i:i + 1, :length]).numpy()[0],
                                       atol=1e-5)
    assert Model(config, (TIME,), 3, None, data={"vocab_size": 13}).input_tensor(tokens).padding_mask is None


def test_training_evaluation_and_profiling_wrap_batches_with_model_input_tensor(tmp_path, monkeypatch):
    """The one road from a batch to the network's input (so token ids always carry their mask)."""
    from dltrain.config import validate
    from dltrain.training.profile import profile_steps
    from dltrain.training.reporting import SilentReporter
    from dltrain.training.rundir import RunDir
    from dltrain.training.trainer import Trainer

    values = {"seed": 1, "data": {"name": "blobs", "n_samples": 100, "classes": 3},
              "model": [{"linear": {"units": 8}}, "relu", {"linear": {"units": 3}}], "training": {"batch_size": 25}}
    trainer = Trainer(validate(values, {}, "test"), RunDir(tmp_path / "run", writable=False), "cpu", SilentReporter())
    trainer.setup()
    calls = []
    real = Model.input_tensor
    monkeypatch.setattr(Model, "input_tensor", lambda self, x: calls.append("batch") or real(self, x))
    profile_steps(trainer, steps=1, warmup=1)  # two Trainer.train_step calls and one profiled forward
    assert len(calls) == 3
    trainer.first_nonfinite_output(trainer.splits.train.x[:5])
    assert len(calls) == 4
    trainer.model.evaluate(trainer.splits.train, 50)
    assert len(calls) == 6


# ---------------------------------------------------------------- a user's own layer reads the mask

@pytest.fixture
def masked_sum():
    """The Module docstring's example, registered as a user's --code would."""

    @layer_registry.register("masked_sum_for_tests")
    class MaskedSum(Module):
        seen = []

        def build_shape(self, input_shape):
            return input_shape[1:]

        def forward(self, x):
            MaskedSum.seen.append(x.padding_mask)
            keep = 1.0 if x.padding_mask is None else ~x.padding_mask[..., None]
            return (x * keep).sum(axis=1)

    @layer_registry.register("steps_linear_for_tests")
    class StepsLinear(Module):
        """A per-step linear map that offers forward_relu, so a ReLU after it runs fused (run_layers' other road)."""

        def build_shape(self, input_shape):
            self.weight = self.add_parameter("weight", R.standard_normal((3, input_shape[-1])).astype(np.float32))
            return input_shape[:-1] + (3,)

        def forward(self, x):
            return F.linear(x, self.weight)

        def forward_relu(self, x):
            return F.linear(x, self.weight, activation="relu")

    yield MaskedSum
    for name in ("masked_sum_for_tests", "steps_linear_for_tests"):
        layer_registry._entries.pop(name)


def test_the_mask_reaches_a_users_own_layer_through_containers_and_fused_steps(masked_sum):
    model = build_model([{"embedding": {"vocab_size": 13, "units": 4, "padding_idx": 0}},
                         {"residual": ["layernorm", {"positional_embedding": {"kind": "sinusoidal"}}]},
                         "steps_linear_for_tests", "relu", {"sequential": ["gelu", "masked_sum_for_tests"]}], (TIME,))
    tokens = padded_tokens()
    out = model(dltrain.tensor(tokens))
    np.testing.assert_array_equal(masked_sum.seen[-1], tokens == 0)
    for i, length in enumerate(LENGTHS):
        alone = model(dltrain.tensor(tokens[i:i + 1, :length])).numpy()[0]
        np.testing.assert_allclose(out.numpy()[i], alone, atol=1e-5)
        assert not masked_sum.seen[-1].any()  # alone, no token is the padding_idx
    with no_grad():  # inference folds and fuses differently
        np.testing.assert_allclose(model(dltrain.tensor(tokens)).numpy(), out.numpy(), atol=1e-6)
    np.testing.assert_array_equal(masked_sum.seen[-1], tokens == 0)


def test_layers_that_end_the_time_axis_drop_the_mask():
    model = build_model([{"embedding": {"vocab_size": 13, "units": 4, "padding_idx": 0}}, "flatten"], (TIME,))
    assert model(dltrain.tensor(padded_tokens())).padding_mask is None
    model = build_model([{"embedding": {"vocab_size": 13, "units": 4, "padding_idx": 0}}, "mean_pool"], (TIME,))
    assert model(dltrain.tensor(padded_tokens())).padding_mask is None


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("spec, message", [
    ({"multihead_attention": {"heads": 3, "units": 8}},
     "model[0].multihead_attention: heads (3) must divide units (8); each head attends with units / heads features"),
    ({"multihead_attention": {"heads": 3}},
     "model[0].multihead_attention: heads (3) must divide units (10, the input's features); each head attends with "
     "units / heads features"),
    ({"transformer_encoder": {"heads": 4}},
     "model[0].transformer_encoder: heads (4) must divide the input's features (10); each head attends with "
     "features / heads of them"),
])
def test_heads_that_do_not_divide_the_units_are_refused(spec, message):
    with pytest.raises(ShapeError) as caught:
        build_model([spec], (6, 10))
    assert str(caught.value) == message


@pytest.mark.parametrize("name", ["multihead_attention", "transformer_encoder", "positional_embedding",
                                  "sequence_pool", "mean_pool"])
def test_sequence_layers_refuse_inputs_that_are_not_batch_time_features(name):
    spec = {name: {"heads": 2}} if name in ("multihead_attention", "transformer_encoder") else name
    with pytest.raises(ShapeError) as caught:
        build_model(["flatten", spec], (4, 6))
    assert str(caught.value) == f"model[1].{name}: expected input (batch, time, features), got (batch, 24)"
    with pytest.raises(ShapeError) as caught:
        build_model([spec], (1, 4, 6))
    assert str(caught.value) == f"model[0].{name}: expected input (batch, time, features), got (batch, 1, 4, 6)"


def test_summary_describes_the_new_layers():
    model = build_model([{"embedding": {"vocab_size": 13, "units": 8, "padding_idx": 0}},
                         {"positional_embedding": {"kind": "sinusoidal"}},
                         {"transformer_encoder": {"heads": 2, "ff_units": 16, "norm_first": True}},
                         {"multihead_attention": {"heads": 4, "causal": True}}, "layernorm",
                         {"sequence_pool": {"mode": "max"}}], (TIME,))
    rows = [(name, options) for name, options, _, _ in model.summary_rows()]
    assert rows == [("embedding", "vocab_size=13, units=8, padding_idx=0"), ("positional_embedding", "kind=sinusoidal"),
                    ("transformer_encoder", "heads=2, ff_units=16, dropout=0.1, norm_first"),
                    ("multihead_attention", "heads=4, causal"), ("layernorm", "eps=1e-05"),
                    ("sequence_pool", "mode=max")]
    assert model.layers[2].num_parameters() == 4 * 8 * 8 + 4 * 8 + 2 * 8 * 16 + 16 + 8 + 4 * 8


def test_standardizing_the_token_ids_of_an_embedding_without_vocab_size_is_refused():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"data": {"name": "blobs", "normalize": "global"},
                          "model": [{"embedding": {"units": 4}}, "mean_pool", {"linear": {"units": 3}}]}, "test")
    assert "data.normalize: 'global' standardizes the inputs, but model[0].embedding takes them as token ids " \
           "(integers from 0); set data.normalize: none" in str(caught.value)


# ---------------------------------------------------------------- review findings: all padding, dropping the mask


@pytest.mark.parametrize("mode", ["first", "last", "mean", "max"])
def test_sequence_pool_right_after_an_embedding_gives_zeros_for_a_sequence_of_only_padding(mode, device):
    """The mask from the data (not an embedding's padding_idx, whose zero row would hide it), no layer between
    (a recurrent layer's zeros at padded steps hid it): every mode, mode first included, pools an all-padding
    sequence to zeros, and no gradient reaches its steps."""
    model = build_model([{"embedding": {"vocab_size": 13, "units": 4}}, {"sequence_pool": {"mode": mode}}],
                        (4,)).to(device)
    tokens = padded_tokens([3, 0, 4], 4)
    x = dltrain.tensor(tokens, device=device)
    x.padding_mask = backend.to_device(tokens == 0, device)
    out = model(x)
    values = out.numpy()
    assert not values[1].any()
    assert values[0].any() and values[2].any()
    out.sum().backward()
    grad = backend.to_numpy(model.layers[0].weight.grad)
    assert np.isfinite(grad).all() and grad.any()
    assert not grad[0].any(), "token 0 appears only as padding: it gets no gradient"


@pytest.fixture
def transpose_layer():
    """A user's layer that swaps time and features: (batch, time, features) -> (batch, features, time)."""

    @layer_registry.register("transpose_for_tests")
    class Transpose(Module):
        keeps_padding_mask = False

        def build_shape(self, input_shape):
            return tuple(input_shape)[::-1]

        def forward(self, x):
            return x.transpose(0, 2, 1)

        def forward_relu(self, x):  # so that a ReLU after it runs fused (run_layers' other road)
            return F.relu(x.transpose(0, 2, 1))

        def to_onnx(self, graph, x, opset):
            return graph.op("Transpose", [x], perm=[0, 2, 1])

    yield Transpose
    layer_registry._entries.pop("transpose_for_tests")


def test_a_layer_that_reorders_time_drops_the_mask_even_when_its_output_looks_like_batch_time(transpose_layer):
    """time == features: the transposed (batch, features, time) has the mask's shape (batch, time) on its leading
    axes, yet its axis 1 is features; keeps_padding_mask = False drops the mask, directly, behind fused steps, in a
    sequential and in a residual (whose sum then mixes steps), with and without gradients."""
    tokens = padded_tokens([7, 2, 0, 5])
    embedding = {"embedding": {"vocab_size": 13, "units": TIME}}
    for after in (["transpose_for_tests"], ["transpose_for_tests", "relu"], ["gelu", "transpose_for_tests", "tanh"],
                  [{"sequential": ["layernorm", "transpose_for_tests"]}],
                  [{"residual": ["transpose_for_tests"]}]):
        model = build_model([embedding, *after], (TIME,))
        for grad in (True, False):
            x = dltrain.tensor(tokens)
            x.padding_mask = tokens == 0
            if grad:
                out = model(x)
            else:
                with no_grad():
                    out = model(x)
            assert out.shape == (4, TIME, TIME)
            assert out.padding_mask is None, (after, grad)
    # a mean_pool after it averages every step of the transposed axis, as it does without any mask
    model = build_model([embedding, "transpose_for_tests", "mean_pool"], (TIME,))
    x = dltrain.tensor(tokens)
    x.padding_mask = tokens == 0
    table = model.layers[0].weight.numpy()
    np.testing.assert_allclose(model(x).numpy(), table[tokens.astype(int)].transpose(0, 2, 1).mean(axis=1), atol=1e-6)
    # layers that reorder nothing still pass it on (the shape rule is unchanged), through containers too
    model = build_model([embedding, "layernorm", {"sequential": ["gelu", {"residual": ["layernorm"]}]}], (TIME,))
    np.testing.assert_array_equal(model(x).padding_mask, tokens == 0)


def test_conv2d_mixes_its_channels_and_drops_a_mask_that_reached_them():
    """Steps reshaped into channels (batch, time, 2, 2): a convolution with as many filters as steps gives
    (batch, time, ...) again, but every output channel mixes every step; pooling keeps each channel."""
    tokens = padded_tokens()
    x = dltrain.tensor(tokens)
    x.padding_mask = tokens == 0
    pooled = build_model([{"embedding": {"vocab_size": 13, "units": 8}}, {"reshape": {"shape": [TIME, 2, 4]}},
                          {"max_pool2d": {"kernel_size": 2}}], (TIME,))
    np.testing.assert_array_equal(pooled(x).padding_mask, tokens == 0)
    for relu in ([], ["relu"]):
        mixed = build_model([{"embedding": {"vocab_size": 13, "units": 8}}, {"reshape": {"shape": [TIME, 2, 4]}},
                             {"conv2d": {"filters": TIME, "kernel_size": 1}}, *relu], (TIME,))
        assert mixed(x).shape == (len(LENGTHS), TIME, 2, 4)
        assert mixed(x).padding_mask is None


def test_a_reshape_keeps_the_mask_only_when_it_keeps_the_time_axis():
    tokens = padded_tokens()
    x = dltrain.tensor(tokens)
    x.padding_mask = tokens == 0
    embedding = {"embedding": {"vocab_size": 13, "units": TIME}}
    kept = build_model([embedding, {"reshape": {"shape": [TIME, 1, TIME]}}], (TIME,))
    np.testing.assert_array_equal(kept(x).padding_mask, tokens == 0)
    assert kept.layers[1].keeps_padding_mask
    square = build_model([embedding, {"reshape": {"shape": [TIME, -1]}}], (TIME,))  # the same shape: nothing moves
    np.testing.assert_array_equal(square(x).padding_mask, tokens == 0)
    moved = build_model([{"embedding": {"vocab_size": 13, "units": 2 * TIME}}, {"reshape": {"shape": [2 * TIME, -1]}}],
                        (TIME,))
    assert moved(x).padding_mask is None
    assert not moved.layers[1].keeps_padding_mask


def test_every_built_in_layer_says_whether_it_keeps_the_mask():
    """The review of each registered layer: those whose output's axis 1 is not the input's steps one for one, or
    whose inner layers decide (containers), set keeps_padding_mask = False; reshape decides per shape. A new layer
    lands here and must be placed."""
    from dltrain.layers.module import Module as Base

    dropping = {"flatten", "conv2d", "sequential", "residual"}
    keeping = {"avg_pool2d", "batchnorm", "dropout", "embedding", "gelu", "global_avg_pool", "gru", "layernorm",
               "leaky_relu", "linear", "lstm", "max_pool2d", "mean_pool", "multihead_attention",
               "positional_embedding", "relu", "rnn", "sequence_pool", "sigmoid", "softmax", "tanh",
               "transformer_encoder"}
    built_in = {name for name in layer_registry.names() if layer_registry.get(name).__module__.startswith("dltrain.")}
    assert built_in == dropping | keeping | {"reshape"}
    assert Base.keeps_padding_mask is True
    assert {name for name in built_in if not layer_registry.get(name).keeps_padding_mask} == dropping


@pytest.mark.parametrize("spec, zeros", [
    ({"sequence_pool": {"mode": "first"}}, True), ({"sequence_pool": {"mode": "last"}}, True),
    ({"sequence_pool": {"mode": "max"}}, True), ("mean_pool", True),
    ({"multihead_attention": {"heads": 2}}, False), ({"multihead_attention": {"heads": 2, "causal": True}}, False),
    ({"transformer_encoder": {"heads": 2, "ff_units": 8, "dropout": 0.0}}, False),
    ({"transformer_encoder": {"heads": 2, "ff_units": 8, "norm_first": True}}, False),
    ({"rnn": {"units": 3}}, True), ({"lstm": {"units": 3}}, True), ({"gru": {"units": 3}}, True),
    ({"rnn": {"units": 3, "return_sequences": True}}, True), ({"lstm": {"units": 3, "return_sequences": True}}, True),
    ({"gru": {"units": 3, "return_sequences": True}}, True),
    ({"positional_embedding": {}}, False), ({"positional_embedding": {"kind": "sinusoidal"}}, False),
])
def test_a_batch_where_every_sequence_is_padding(spec, zeros, device):
    """Nothing but padding in the whole batch, in training (dropout on) and in evaluation: finite outputs and
    gradients, and the documented values: pooling and recurrent layers zeros; multihead_attention the output
    projection's bias at every step (it attends to nothing); transformer_encoder and positional_embedding finite
    values at the padded steps (which a masked reader leaves out); the mask itself travels on."""
    model = build_model([{"embedding": {"vocab_size": 13, "units": 4}}, spec], (5,)).to(device)
    attention = model.layers[1] if "multihead_attention" in spec else None
    if attention is not None:
        attention.out_proj.bias.data[...] = backend.to_device(np.arange(1, 5, dtype=np.float32), device)
    tokens = np.zeros((3, 5), np.float32)
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        x = dltrain.tensor(tokens, device=device)
        x.padding_mask = backend.to_device(tokens == 0, device)
        out = model(x)
        values = out.numpy()
        assert np.isfinite(values).all(), (spec, training)
        if zeros:
            assert not values.any(), (spec, training)
        if attention is not None:
            np.testing.assert_array_equal(values, np.broadcast_to(np.arange(1, 5, dtype=np.float32), values.shape))
        if values.ndim == 3:
            np.testing.assert_array_equal(backend.to_numpy(out.padding_mask), tokens == 0)
        (out * out).sum().backward()
        for name, param in model.named_parameters():
            assert param.grad is None or np.isfinite(backend.to_numpy(param.grad)).all(), (spec, name)


# ---------------------------------------------------------------- augmentations of token ids are refused

def augmented_config(data, model, augment):
    return config_from_dict({"data": {**data, "augment": augment}, "model": model, "loss": {"name": "cross_entropy"}},
                            "test")


def augment_message(i, name, why):
    return (f"test: data.augment[{i}]: {name} changes the input values, but the inputs are token ids ({why}): an id "
            f"it changes (noised, blended with another sample's, erased) is another token or none, and padding that "
            f"no longer equals the padding id is read as tokens in training but masked in evaluation; remove it "
            f"from data.augment")


TOKEN_MODEL = [{"embedding": {"vocab_size": 13, "units": 4}}, "mean_pool", {"linear": {"units": 3}}]


@pytest.mark.parametrize("augment", [["gaussian_noise"], [{"mixup": {"alpha": 0.4}}], ["cutmix"], ["cutout"],
                                     ["horizontal_flip"], ["random_crop"]])
def test_an_augmentation_of_token_ids_is_refused_naming_its_key_path(augment):
    with pytest.raises(ConfigError) as caught:
        augmented_config({"name": "blobs"}, TOKEN_MODEL, augment)
    name = augment[0] if isinstance(augment[0], str) else next(iter(augment[0]))
    assert str(caught.value) == augment_message(0, name, "model[0].embedding takes them as token ids")


def test_augmentations_of_text_data_are_refused_each_with_its_own_path():
    """Text data is token ids whatever the first layer is (here a reshape before the embedding)."""
    model = [{"reshape": {"shape": [-1]}}, {"embedding": {"units": 4}}, "mean_pool", {"linear": {"units": 2}}]
    for data, why in (({"name": "wordlists"}, "data 'wordlists' is tokenized text, read as token ids"),
                      ({"name": "text_folder", "path": "x"}, "data 'text_folder' is tokenized text, read as token ids"),
                      ({"name": "csv", "path": "x.csv", "text_columns": ["review"]},
                       "data.text_columns are tokenized text, read as token ids")):
        with pytest.raises(ConfigError) as caught:
            augmented_config(data, model, ["gaussian_noise", {"mixup": {}}])
        assert str(caught.value) == "\n".join([augment_message(0, "gaussian_noise", why),
                                               augment_message(1, "mixup", why)])


def test_augmentations_that_keep_token_ids_and_augmentations_of_other_inputs_are_accepted():
    from dltrain.registry import augmentations

    @augmentations.register("label_noise_for_tests")
    class LabelNoise:
        keeps_token_ids = True  # the inputs are left as they are

        def __call__(self, x, y, context):
            return x, y

    try:
        config = augmented_config({"name": "blobs"}, TOKEN_MODEL, ["label_noise_for_tests"])
        assert config.data["augment"] == [{"name": "label_noise_for_tests"}]
    finally:
        augmentations._entries.pop("label_noise_for_tests")
    config = augmented_config({"name": "blobs"}, [{"linear": {"units": 3}}], ["gaussian_noise", "mixup"])
    assert [a["name"] for a in config.data["augment"]] == ["gaussian_noise", "mixup"]
    assert augmented_config({"name": "csv", "path": "x.csv"}, [{"linear": {"units": 3}}], ["gaussian_noise"])


def test_dltrain_check_refuses_an_augmentation_of_token_ids(tmp_path):
    import json

    from typer.testing import CliRunner

    from dltrain.cli import app

    path = tmp_path / "tokens.yaml"
    path.write_text(json.dumps({"data": {"name": "blobs", "augment": ["gaussian_noise"]}, "model": TOKEN_MODEL}))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert augment_message(0, "gaussian_noise", "model[0].embedding takes them as token ids").replace(
        "test:", f"{path}:1:") in result.output
