"""ONNX export checked by onnx's checker and onnxruntime, and weights loaded into PyTorch modules."""

import json
from pathlib import Path

import numpy as np
import pytest

import dltrain
from dltrain import backend, no_grad
from dltrain.config import load_config
from dltrain.export.onnx import ExportError, export_onnx
from dltrain.layers import Module, build_model

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'dltrain[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dltrain[onnx]')")

CONFIGS = Path(__file__).parents[2] / "configs"
R = np.random.default_rng(3)

MODELS = {  # name -> (layer specs or a shipped config, per-sample input shape)
    "fashion_mlp": ("fashion_mlp.yaml", (1, 28, 28)),
    "fashion_cnn": ("fashion_cnn.yaml", (1, 28, 28)),
    "fashion_gru": ("fashion_gru.yaml", (1, 28, 28)),
    "fashion_resnet": ("fashion_resnet.yaml", (1, 28, 28)),
    "quickstart": ("quickstart.yaml", (2,)),
    "lstm_rnn_sequences": ([{"lstm": {"units": 6, "return_sequences": True}}, {"rnn": {"units": 5}},
                            {"linear": {"units": 3}}], (7, 4)),
    "gru_sequences": ([{"gru": {"units": 4, "return_sequences": True}}, "flatten", {"linear": {"units": 2}}], (5, 3)),
    "activations_and_norms": ([{"linear": {"units": 8}}, "batchnorm", "gelu", {"linear": {"units": 8}},
                               {"gelu": {"approximate": "tanh"}}, {"leaky_relu": {"negative_slope": 0.2}},
                               "sigmoid", {"dropout": {"rate": 0.5}}, {"residual": [{"linear": {"units": 5}}, "tanh"]},
                               {"linear": {"units": 3}}, "softmax"], (6,)),
    "pools": ([{"conv2d": {"filters": 3, "kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1}},
               {"avg_pool2d": {"kernel_size": 3, "stride": 1, "padding": 1}},
               {"max_pool2d": {"kernel_size": 3, "stride": 2, "padding": 1}}, "global_avg_pool"], (2, 9, 9)),
    "embedding": ([{"embedding": {"vocab_size": 11, "units": 4}}, {"gru": {"units": 3}}], (6,)),
}


def build(name):
    spec, shape = MODELS[name]
    specs = load_config(CONFIGS / spec).model if isinstance(spec, str) else spec
    backend.manual_seed(1)
    model = build_model(specs, shape)
    for _, array in model.named_buffers():  # non-trivial batchnorm statistics
        array[...] = R.uniform(0.5, 1.5, array.shape)
    return model.eval(), shape


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_model_matches_dltrain_inference(tmp_path, name):
    model, shape = build(name)
    stats = {"mean": R.normal(size=shape), "std": R.uniform(0.5, 2, size=shape)}
    path = export_onnx(model, stats, shape, tmp_path / "m.onnx")  # runs onnx.checker (full_check) itself
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # the batch dimension is dynamic
        if name == "embedding":
            raw = R.integers(0, 11, (batch,) + shape).astype(np.float32)
            stats_used = {"mean": np.zeros(shape), "std": np.ones(shape)}
            path = export_onnx(model, stats_used, shape, tmp_path / "m.onnx")
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            normalized = raw
        else:
            raw = R.normal(size=(batch,) + shape).astype(np.float32)
            normalized = ((raw - stats["mean"]) / stats["std"]).astype(np.float32)
        with no_grad():
            expected = model(dltrain.tensor(normalized)).numpy()
        actual = session.run(None, {"input": raw})[0]
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= 1e-4


def test_a_layer_without_an_exporter_is_named(tmp_path):
    class Mystery(Module):
        registry_name = "mystery"

    model = build_model([{"linear": {"units": 2}}], (3,))
    odd = Mystery()
    odd.path = "model[1].mystery"
    model.layers.append(odd)
    with pytest.raises(ExportError, match=r"model\[1\].mystery: layer 'mystery' has no ONNX export"):
        export_onnx(model, {"mean": np.zeros(1), "std": np.ones(1)}, (3,), tmp_path / "m.onnx")


def run_cli(*args):
    import subprocess
    import sys

    dltrain_exe = Path(sys.executable).parent / "dltrain"
    return subprocess.run([str(dltrain_exe), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_export_then_eval_the_onnx_file_gives_the_checkpoints_report(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("data: {name: blobs, n_samples: 200, classes: 3}\n"
                      "model: [{linear: {units: 8}}, relu, {linear: {units: 3}}, softmax]\n"
                      "training: {epochs: 2, batch_size: 16}\n")
    run = tmp_path / "run"
    assert run_cli("train", config, "--run-dir", run).returncode == 0
    result = run_cli("export", run, "--out", tmp_path / "model.onnx")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "model.onnx")
    from_onnx = json.loads(run_cli("eval", tmp_path / "model.onnx", "--json").stdout)
    from_checkpoint = json.loads(run_cli("eval", run, "--json").stdout)
    assert from_onnx["accuracy"] == from_checkpoint["accuracy"]
    assert from_onnx["confusion_matrix"] == from_checkpoint["confusion_matrix"]
    assert abs(from_onnx["loss"] - from_checkpoint["loss"]) < 1e-5


def test_safetensors_weights_load_into_equivalent_torch_modules(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    model, _ = build("fashion_cnn")
    save_file({f"model/{k}": np.ascontiguousarray(v) for k, v in model.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    tensors = load_file(str(tmp_path / "w.safetensors"))
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(3136, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10))
    # The README's mapping: model/<index>.<name> is torch's '<index>.<name>' for the same layer order.
    missing, unexpected = net.load_state_dict({k[len("model/"):]: v for k, v in tensors.items()}, strict=False)
    assert unexpected == [] and all(name.endswith("num_batches_tracked") for name in missing)
    net.eval()
    x = R.normal(size=(4, 1, 28, 28)).astype(np.float32)
    with no_grad():
        ours = model(dltrain.tensor(x)).numpy()
    with torch.no_grad():
        theirs = net(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)



# ---------------------------------------------------------------- sequences with padding masks

TIME = 6
SEQUENCE_MODELS = {  # layer specs over token ids (batch, TIME) of a vocabulary of 11
    "transformer": [{"embedding": {"vocab_size": 11, "units": 8}}, {"positional_embedding": {"kind": "sinusoidal"}},
                    {"transformer_encoder": {"heads": 2, "ff_units": 16, "activation": "gelu"}},
                    {"transformer_encoder": {"heads": 4, "ff_units": 16, "norm_first": True, "causal": True}},
                    "layernorm", {"multihead_attention": {"heads": 2, "units": 6, "causal": True}},
                    {"sequence_pool": {"mode": "max"}}, {"linear": {"units": 3}}],
    "attention_mean_no_bias": [{"embedding": {"vocab_size": 11, "units": 6}}, {"positional_embedding": {}},
                               {"multihead_attention": {"heads": 3, "bias": False}},
                               {"layernorm": {"affine": False}}, "mean_pool"],
    "recurrent": [{"embedding": {"vocab_size": 11, "units": 5}}, {"lstm": {"units": 4, "return_sequences": True}},
                  {"residual": [{"gru": {"units": 4, "return_sequences": True}}]}, {"rnn": {"units": 3}}],
    "last": [{"embedding": {"vocab_size": 11, "units": 5}}, {"sequence_pool": {"mode": "last"}}],
    "first": [{"embedding": {"vocab_size": 11, "units": 5}}, {"gru": {"units": 3, "return_sequences": True}},
              {"sequence_pool": {"mode": "first"}}],
    # right after the embedding: step 0 of a sequence that is all padding is a padding token's row, zeroed
    "first_after_embedding": [{"embedding": {"vocab_size": 11, "units": 5}}, {"sequence_pool": {"mode": "first"}}],
    "padding_idx_sets_the_mask": [{"embedding": {"vocab_size": 11, "units": 5, "padding_idx": 0}}, "mean_pool"],
}


def padded_batch(batch):
    """Token ids 1..10 right-padded with 0 after lengths that vary in the batch (a full one, an empty one)."""
    tokens = R.integers(1, 11, (batch, TIME)).astype(np.float32)
    lengths = [TIME, 3, 1, 0, 5, 2][:batch]
    tokens[np.arange(TIME)[None, :] >= np.array(lengths)[:, None]] = 0
    return tokens


def dltrain_outputs(model, tokens, padding_id):
    x = dltrain.tensor(tokens)
    if padding_id is not None:  # as Model.input_tensor
        x.padding_mask = tokens == padding_id
    with no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("opset", [13, 17, 18])
@pytest.mark.parametrize("padding_id", [None, 0])
@pytest.mark.parametrize("name", sorted(SEQUENCE_MODELS))
def test_sequence_layers_export_with_the_padding_mask_computed_in_the_graph(tmp_path, name, padding_id, opset):
    """The mask comes from the token ids inside the graph (Equal to the padding id), masks attention keys before the
    softmax, pools and picks the last real steps as dltrain does; opset 13 composes the layer norm and takes
    reduction axes as attributes, 18 as inputs. Batches of several lengths, and of a variable size."""
    backend.manual_seed(1)
    model = build_model(SEQUENCE_MODELS[name], (TIME,)).eval()
    stats = {"mean": np.zeros(TIME), "std": np.ones(TIME)}
    path = export_onnx(model, stats, (TIME,), tmp_path / "m.onnx", opset=opset, padding_id=padding_id)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if padding_id is not None:
        assert {"Equal", "Not"} <= ops
    for batch in (1, 6):
        tokens = padded_batch(batch)
        expected = dltrain_outputs(model, tokens, padding_id)
        actual = session.run(None, {"input": tokens})[0]
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
    full = R.integers(1, 11, (4, TIME)).astype(np.float32)  # nothing padded
    np.testing.assert_allclose(session.run(None, {"input": full})[0], dltrain_outputs(model, full, padding_id),
                               atol=1e-5, rtol=0)
    nothing = np.zeros((3, TIME), np.float32)  # every sequence all padding
    expected = dltrain_outputs(model, nothing, padding_id)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(session.run(None, {"input": nothing})[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_id", [None, 0])
def test_sequence_mask_dropped_by_a_layer_that_reorders_time_is_dropped_in_the_graph_too(tmp_path, padding_id):
    """A user's transpose (keeps_padding_mask = False) with time == features: the mean_pool after it averages every
    step of the transposed axis, in dltrain and in the graph; inside a sequential the same."""
    from dltrain.registry import layers as layer_registry

    @layer_registry.register("transpose_for_onnx_tests")
    class Transpose(Module):
        keeps_padding_mask = False

        def build_shape(self, input_shape):
            return tuple(input_shape)[::-1]

        def forward(self, x):
            return x.transpose(0, 2, 1)

        def to_onnx(self, graph, x, opset):
            return graph.op("Transpose", [x], perm=[0, 2, 1])

    try:
        for specs in (["transpose_for_onnx_tests", "mean_pool"],
                      [{"sequential": ["layernorm", "transpose_for_onnx_tests"]}, {"sequence_pool": {"mode": "last"}}]):
            backend.manual_seed(1)
            model = build_model([{"embedding": {"vocab_size": 11, "units": TIME, "padding_idx": padding_id}}, *specs],
                                (TIME,)).eval()
            path = export_onnx(model, {"mean": np.zeros(TIME), "std": np.ones(TIME)}, (TIME,), tmp_path / "m.onnx",
                               padding_id=padding_id)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            tokens = padded_batch(6)
            with no_grad():
                steps = model.layers[1](dltrain.tensor(model.layers[0].weight.numpy()[tokens.astype(int)])).numpy()
            unmasked = steps.mean(axis=1) if specs[1] == "mean_pool" else steps[:, -1]
            np.testing.assert_allclose(dltrain_outputs(model, tokens, padding_id), unmasked, atol=1e-6)
            np.testing.assert_allclose(session.run(None, {"input": tokens})[0], unmasked, atol=1e-5, rtol=0)
    finally:
        layer_registry._entries.pop("transpose_for_onnx_tests")


def test_an_exported_text_checkpoint_takes_its_padding_id_and_vocabulary_from_the_data(tmp_path):
    from dltrain import optim
    from dltrain.config import config_from_dict
    from dltrain.export.onnx import export_checkpoint
    from dltrain.training.checkpoint import save_checkpoint
    from dltrain.training.model import Model

    config = config_from_dict({"data": {"name": "blobs"}, "loss": {"name": "cross_entropy"}, "model": [
        {"embedding": {"units": 6}}, {"transformer_encoder": {"heads": 2, "ff_units": 8}}, "mean_pool",
        {"linear": {"units": 3}}, "softmax"]})
    data = {"input_shape": [TIME], "classes": 3, "padding_id": 0, "vocab_size": 11}
    model = Model(config, (TIME,), 3, None, data=data)
    model.network.eval()
    save_checkpoint(tmp_path / "m.safetensors", model.network, optim.SGD(model.network.parameters(), lr=0.1),
                    {"mean": np.zeros(TIME), "std": np.ones(TIME)}, config.to_dict(),
                    {"epoch": 0, "global_step": 0, "rng": {}, "early_stopping": {}}, data)
    path = export_checkpoint(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens = padded_batch(6)
    with no_grad():
        logits = model.predict_outputs(tokens).numpy()  # the final softmax is skipped before cross_entropy
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(session.run(None, {"input": tokens})[0], expected, atol=1e-5, rtol=0)
