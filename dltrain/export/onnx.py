"""Export a trained model to ONNX: standard operators only, input normalization folded in, a dynamic
batch dimension, dropout removed. The model runs anywhere onnxruntime does.

Each built-in layer has a function in _EXPORTERS below that appends its nodes; a layer of a user's own
(--code, plugins) exports itself with a method `to_onnx(self, graph, x, opset) -> output name`, using
graph.op / graph.const as these functions do. A layer with neither is named in a clear error.

Padding masks travel through the graph as they travel through dltrain (layers/module.py): `graph.mask` is the name
of a boolean (batch, time) tensor, True at padded positions, or None. It is computed inside the graph from the token
ids (Equal to the data's padding id, or an embedding's padding_idx), kept after a layer whose output keeps the
(batch, time) axes unless the layer's keeps_padding_mask is False (then its output has only a mask its exporter
sets in graph.mask: sequential and residual keep what their inner layers left, a user's transpose none), and read
by the exporters of the layers that read time steps (attention, pooling, recurrent).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

from .. import __version__, backend
from ..errors import ExportError

np = backend.np
DEFAULT_OPSET = 17


class _Graph:
    """Collects nodes and initializers with unique names."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []
        self.count = 0
        self._mask: str | None = None
        self.mask_set = False  # a mask was set since _export_layers cleared this (as out.padding_mask in dltrain)
        self.mask_time: int | None = None  # the mask's time length

    @property
    def mask(self) -> str | None:
        """The name of a boolean (batch, time) tensor, True at padded positions, or None. An exporter that sets it
        (not None) gives its layer's output that mask; sequential's and residual's inner layers set it in turn."""
        return self._mask

    @mask.setter
    def mask(self, name: str | None) -> None:
        self._mask = name
        self.mask_set = name is not None

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, array) -> str:
        name = self.name(stem)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list, stem: str | None = None, **attributes) -> str:
        out = self.name(stem or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attributes))
        return out


def _f32(array):
    return np.ascontiguousarray(backend.to_numpy(array), dtype=np.float32)


def export_onnx(network, normalization: dict, input_shape: tuple, path: Path, opset: int = DEFAULT_OPSET,
                metadata: dict | None = None, padding_id: int | None = None) -> Path:
    """Write `network` (a built dltrain Sequential) as an ONNX model taking raw inputs (batch, *input_shape). With a
    padding_id, token ids (batch, time) equal to it are padding, masked inside the graph as in dltrain."""
    try:
        import onnx  # noqa: PLC0415 (optional dependency: pip install 'dltrain[onnx]')
        from onnx import helper, numpy_helper  # noqa: PLC0415
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'dltrain[onnx]'") from None
    if opset < 13:
        raise ExportError(f"--opset {opset}: dltrain exports opset 13 or newer")
    g = _Graph(helper, numpy_helper)
    x = "input"
    x = g.op("Sub", [x, g.const("mean", _f32(normalization["mean"]))], "normalized")
    x = g.op("Div", [x, g.const("std", _f32(normalization["std"]))], "normalized")
    if padding_id is not None and len(input_shape) == 1:  # as Model.input_tensor: the inputs equal to the id
        ids = g.op("Cast", [g.op("Round", [x])], to=7)  # 7 = INT64
        g.mask = g.op("Equal", [ids, g.const("padding_id", np.array(padding_id, np.int64))], "padding_mask")
        g.mask_time = input_shape[0]
    x = _export_layers(g, network.layers, x, opset)
    g.nodes.append(helper.make_node("Identity", [x], ["output"]))
    graph = helper.make_graph(
        g.nodes, "dltrain",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", *network.output_shape])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="dltrain", producer_version=__version__)
    model.ir_version = min(model.ir_version, 10)  # readable by current onnxruntime releases
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model, full_check=True)
    from ..training.rundir import atomic_write  # noqa: PLC0415

    atomic_write(Path(path), model.SerializeToString())
    return Path(path)


def exportable(layer_class) -> bool:
    """Whether export knows the layer: a built-in exporter or the layer's own to_onnx method. A layer that cannot be
    exported says why in a class attribute `not_exportable`, which the export error repeats."""
    return layer_class.registry_name in _EXPORTERS or callable(getattr(layer_class, "to_onnx", None))


def _export_layers(g: _Graph, layers, x: str, opset: int) -> str:
    for layer in layers:
        before = (g.mask, g.mask_time)
        g.mask_set = False
        x = _export_layer(g, layer, x, opset)
        if not g.mask_set:  # the layer set no mask of its own: as carry_padding_mask, the input's is kept while
            # the output has the (batch, time) axes, unless the layer says it reorders them (keeps_padding_mask)
            keeps = before[0] is not None and getattr(layer, "keeps_padding_mask", True) and \
                len(layer.output_shape) >= 2 and layer.output_shape[0] == before[1]
            g.mask, g.mask_time = before if keeps else (None, None)
    return x


def _export_layer(g: _Graph, layer, x: str, opset: int) -> str:
    if layer.registry_name in _EXPORTERS:
        return _EXPORTERS[layer.registry_name](g, layer, x, opset)
    if callable(getattr(layer, "to_onnx", None)):
        return layer.to_onnx(g, x, opset)
    if getattr(layer, "not_exportable", None):
        raise ExportError(f"{layer.path}: layer '{layer.registry_name}' cannot be exported to ONNX: "
                          f"{layer.not_exportable}")
    raise ExportError(f"{layer.path}: layer '{layer.registry_name}' has no ONNX export (a layer of your own exports "
                      f"itself with a method to_onnx(self, graph, x, opset); see dltrain/export/onnx.py)")


def _linear(g, layer, x, opset):
    inputs = [x, g.const("weight", _f32(layer.weight.data))]
    if layer.bias is not None:
        inputs.append(g.const("bias", _f32(layer.bias.data)))
    return g.op("Gemm", inputs, transB=1)


def _gelu(g, layer, x, opset):
    if layer.approximate == "none" and opset >= 20:
        return g.op("Gelu", [x])
    half = g.const("half", np.float32(0.5))
    one = g.const("one", np.float32(1.0))
    if layer.approximate == "none":  # 0.5 x (1 + erf(x / sqrt 2))
        inner = g.op("Erf", [g.op("Div", [x, g.const("sqrt2", np.float32(math.sqrt(2.0)))])])
    else:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Add", [x, g.op("Mul", [cube, g.const("c", np.float32(0.044715))])])
        inner = g.op("Tanh", [g.op("Mul", [inner, g.const("k", np.float32(math.sqrt(2.0 / math.pi)))])])
    return g.op("Mul", [g.op("Mul", [x, half]), g.op("Add", [inner, one])])


def _batchnorm(g, layer, x, opset):
    channels = layer.input_shape[0]
    scale = _f32(layer.weight.data) if layer.weight is not None else np.ones(channels, np.float32)
    shift = _f32(layer.bias.data) if layer.bias is not None else np.zeros(channels, np.float32)
    return g.op("BatchNormalization", [x, g.const("scale", scale), g.const("shift", shift),
                                       g.const("mean", _f32(layer._buffers["running_mean"])),
                                       g.const("var", _f32(layer._buffers["running_var"]))], epsilon=layer.eps)


def _reshape(g, layer, x, opset):
    shape = np.array([-1, *layer.output_shape], dtype=np.int64)
    return g.op("Reshape", [x, g.const("shape", shape)])


def _conv2d(g, layer, x, opset):
    inputs = [x, g.const("weight", _f32(layer.weight.data))]
    if layer.bias is not None:
        inputs.append(g.const("bias", _f32(layer.bias.data)))
    k, p = layer.kernel_size, layer.padding
    return g.op("Conv", inputs, kernel_shape=[k, k], strides=[layer.stride] * 2, pads=[p] * 4,
                dilations=[layer.dilation] * 2)


def _pool(op_type, **extra):
    def export(g, layer, x, opset):
        k, p = layer.kernel_size, layer.padding
        return g.op(op_type, [x], kernel_shape=[k, k], strides=[layer.stride] * 2, pads=[p] * 4, **extra)
    return export


def _global_avg_pool(g, layer, x, opset):
    return g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)


def _sequential(g, layer, x, opset):
    return _export_layers(g, layer.layers, x, opset)


def _residual(g, layer, x, opset):
    out = _export_layers(g, layer.layers, x, opset)
    if layer.projection is None:
        shortcut = x
    elif layer.projection_stride is None:
        shortcut = g.op("Gemm", [x, g.const("projection", _f32(layer.projection.data))], transB=1)
    else:
        s = layer.projection_stride
        shortcut = g.op("Conv", [x, g.const("projection", _f32(layer.projection.data))], kernel_shape=[1, 1],
                        strides=[s, s])
    return g.op("Add", [out, shortcut])


def _embedding(g, layer, x, opset):
    indices = g.op("Cast", [g.op("Round", [x])], to=7)  # 7 = INT64
    if layer.padding_idx is not None and g.mask is None and len(layer.input_shape) == 1:
        g.mask = g.op("Equal", [indices, g.const("padding_idx", np.array(layer.padding_idx, np.int64))],
                      "padding_mask")
        g.mask_time = layer.input_shape[0]
    return g.op("Gather", [g.const("table", _f32(layer.weight.data)), indices], axis=0)


# ---------------------------------------------------------------- sequences: masks, attention, pooling


def _axes(g, *axes):
    return g.const("axes", np.array(axes, np.int64))


def _real_steps(g):
    """The mask as float (batch, time): 1 at real steps, 0 at padded ones."""
    return g.op("Cast", [g.op("Not", [g.mask])], to=1)  # 1 = FLOAT


def _last_real_one_hot(g, time: int):
    """(batch, time) float: 1 at each sequence's last real step (nothing for a sequence that is all padding)."""
    real = _real_steps(g)
    positions = g.op("Mul", [real, g.const("positions", np.arange(1, time + 1, dtype=np.float32))])
    last = g.op("ArgMax", [positions], axis=1, keepdims=1)  # (batch, 1)
    hot = g.op("Cast", [g.op("Equal", [g.const("steps", np.arange(time, dtype=np.int64)), last])], to=1)
    return g.op("Mul", [hot, real])  # zero where the sequence is all padding (ArgMax then points at a padded step)


def _pick_steps(g, weights: str, x: str, features: int) -> str:
    """sum_t weights[b, t] x[b, t, :]: (batch, time) weights and (batch, time, features) values -> (batch, features)."""
    picked = g.op("MatMul", [g.op("Unsqueeze", [weights, _axes(g, 1)]), x])  # (batch, 1, features)
    return g.op("Reshape", [picked, g.const("shape", np.array([-1, features], np.int64))])


def _reduce(g, op_type: str, x: str, axes: list, opset: int, keepdims: int = 0) -> str:
    """ReduceMax / ReduceMean over `axes`: an attribute before opset 18, an input from it on."""
    if opset >= 18:
        return g.op(op_type, [x, _axes(g, *axes)], keepdims=keepdims)
    return g.op(op_type, [x], axes=list(axes), keepdims=keepdims)


def _matmul_add(g, x, weight, bias):
    """x (..., in) @ weight.T + bias for x of any rank (Gemm takes only matrices)."""
    out = g.op("MatMul", [x, g.const("weight", np.ascontiguousarray(_f32(weight).T))])
    return out if bias is None else g.op("Add", [out, g.const("bias", _f32(bias))])


def _layernorm(g, layer, x, opset):
    features = layer.input_shape[-1]
    scale = _f32(layer.weight.data) if layer.weight is not None else np.ones(features, np.float32)
    shift = _f32(layer.bias.data) if layer.bias is not None else np.zeros(features, np.float32)
    if opset >= 17:
        return g.op("LayerNormalization", [x, g.const("scale", scale), g.const("shift", shift)], axis=-1,
                    epsilon=layer.eps)
    centered = g.op("Sub", [x, _reduce(g, "ReduceMean", x, [-1], opset, keepdims=1)])
    variance = _reduce(g, "ReduceMean", g.op("Mul", [centered, centered]), [-1], opset, keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [variance, g.const("eps", np.float32(layer.eps))])])
    normalized = g.op("Div", [centered, std])
    return g.op("Add", [g.op("Mul", [normalized, g.const("scale", scale)]), g.const("shift", shift)])


def _attention(g, layer, x, mask):
    """multihead_attention's self-attention of x (batch, time, features); `mask` None or boolean (batch, time), True
    at padded positions (those keys are left out: a score of the lowest float before the softmax, a weight of 0
    after it, so a sequence that is all padding attends to nothing, as in dltrain)."""
    time = layer.input_shape[0]
    e, h = layer.embed_dim, layer.heads
    weights = np.split(backend.to_numpy(layer.in_proj_weight.data), 3)
    biases = [None] * 3 if layer.in_proj_bias is None else np.split(backend.to_numpy(layer.in_proj_bias.data), 3)
    heads_shape = g.const("shape", np.array([-1, time, h, e // h], np.int64))

    def project(i, perm):
        return g.op("Transpose", [g.op("Reshape", [_matmul_add(g, x, weights[i], biases[i]), heads_shape])],
                    perm=perm)

    q, k_t, v = project(0, [0, 2, 1, 3]), project(1, [0, 2, 3, 1]), project(2, [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, k_t]), g.const("scale", np.float32(1 / math.sqrt(e // h)))])
    allowed = None
    if mask is not None:  # (batch, 1, 1, time): keys that take part
        allowed = g.op("Unsqueeze", [g.op("Not", [mask]), _axes(g, 1, 2)])
    if layer.causal:
        causal = g.const("causal", np.tril(np.ones((time, time), dtype=bool)))
        allowed = causal if allowed is None else g.op("And", [allowed, causal])
    if allowed is not None:
        scores = g.op("Where", [allowed, scores, g.const("lowest", np.float32(np.finfo(np.float32).min))])
    attention = g.op("Softmax", [scores], axis=-1)
    if mask is not None:  # a row without any key: zero weights, not a uniform average
        attention = g.op("Mul", [attention, g.op("Cast", [allowed], to=1)])
    out = g.op("Transpose", [g.op("MatMul", [attention, v])], perm=[0, 2, 1, 3])  # (batch, time, heads, e / h)
    out = g.op("Reshape", [out, g.const("shape", np.array([-1, time, e], np.int64))])
    bias = None if layer.out_proj.bias is None else layer.out_proj.bias.data
    return _matmul_add(g, out, layer.out_proj.weight.data, bias)


def _multihead_attention(g, layer, x, opset):
    return _attention(g, layer, x, g.mask)


def _transformer_encoder(g, layer, x, opset):
    mask = g.mask

    def attention_block(h):
        return _attention(g, layer.self_attn, h, mask)

    def feed_forward_block(h):
        hidden = _matmul_add(g, h, layer.linear1.weight.data, layer.linear1.bias.data)
        if layer.activation == "relu":
            hidden = g.op("Relu", [hidden])
        else:
            hidden = _gelu(g, SimpleNamespace(approximate="none"), hidden, opset)
        return _matmul_add(g, hidden, layer.linear2.weight.data, layer.linear2.bias.data)

    if layer.norm_first:
        x = g.op("Add", [x, attention_block(_layernorm(g, layer.norm1, x, opset))])
        return g.op("Add", [x, feed_forward_block(_layernorm(g, layer.norm2, x, opset))])
    x = _layernorm(g, layer.norm1, g.op("Add", [x, attention_block(x)]), opset)
    return _layernorm(g, layer.norm2, g.op("Add", [x, feed_forward_block(x)]), opset)


def _positional_embedding(g, layer, x, opset):
    return g.op("Add", [x, g.const("positions", _f32(layer.table()[:layer.input_shape[0]])[None])])


def _sequence_pool(g, layer, x, opset):
    time, features = layer.input_shape
    mode = layer.mode
    if g.mask is None:
        if mode == "first":
            return g.op("Gather", [x, g.const("step", np.array(0, np.int64))], axis=1)
        if mode == "last":
            return g.op("Gather", [x, g.const("step", np.array(time - 1, np.int64))], axis=1)
        if mode == "max":
            return _reduce(g, "ReduceMax", x, [1], opset)
        return _pick_steps(g, g.const("mean", np.full((1, time), 1 / time, np.float32)), x, features)
    if mode == "last":
        return _pick_steps(g, _last_real_one_hot(g, time), x, features)
    real = _real_steps(g)
    counts = g.op("MatMul", [real, g.const("ones", np.ones((time, 1), np.float32))])  # (batch, 1)
    has_steps = g.op("Greater", [counts, g.const("zero", np.float32(0))])  # (batch, 1): not all padding
    if mode == "first":  # step 0, zeros for a sequence that is all padding
        first = g.op("Gather", [x, g.const("step", np.array(0, np.int64))], axis=1)
        return g.op("Where", [has_steps, first, g.const("zero", np.float32(0))])
    if mode == "mean":
        per_step = g.op("Div", [real, g.op("Max", [counts, g.const("one", np.float32(1))])])
        return _pick_steps(g, per_step, x, features)
    padded = g.op("Unsqueeze", [g.mask, _axes(g, 2)])
    largest = _reduce(g, "ReduceMax", g.op("Where", [padded, g.const("neg_inf", np.float32(-np.inf)), x]), [1], opset)
    return g.op("Where", [has_steps, largest, g.const("zero", np.float32(0))])


# torch's gate order -> ONNX's: GRU (r, z, n) -> (z, r, h); LSTM (i, f, g, o) -> (i, o, f, c)
_GATE_ORDER = {"rnn": [0], "gru": [1, 0, 2], "lstm": [0, 3, 1, 2]}


def _recurrent(g, layer, x, opset):
    name = layer.registry_name
    hidden = layer.units

    def reorder(array):
        blocks = np.split(_f32(array), len(_GATE_ORDER[name]), axis=0)
        return np.concatenate([blocks[i] for i in _GATE_ORDER[name]], axis=0)

    w = g.const("W", reorder(layer.w_ih.data)[None])
    r = g.const("R", reorder(layer.w_hh.data)[None])
    b = g.const("B", np.concatenate([reorder(layer.b_ih.data), reorder(layer.b_hh.data)])[None])
    sequence_first = g.op("Transpose", [x], perm=[1, 0, 2])
    attributes = {"hidden_size": hidden}
    if name == "gru":
        attributes["linear_before_reset"] = 1  # torch applies the reset gate after the hidden product
    op_type = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[name]
    y, y_h = g.name("y"), g.name("y_h")
    outputs = [y, y_h] + ([g.name("y_c")] if name == "lstm" else [])
    g.nodes.append(g.helper.make_node(op_type, [sequence_first, w, r, b], outputs, **attributes))
    if layer.return_sequences or g.mask is not None:  # Y: (seq, 1, batch, hidden) -> (batch, seq, hidden)
        squeezed = g.op("Squeeze", [y, g.const("axes", np.array([1], np.int64))])
        sequences = g.op("Transpose", [squeezed], perm=[1, 0, 2])
        if g.mask is None:
            return sequences
        if layer.return_sequences:  # as dltrain: zeros at padded steps
            return g.op("Mul", [sequences, g.op("Unsqueeze", [_real_steps(g), _axes(g, 2)])])
        return _pick_steps(g, _last_real_one_hot(g, layer.input_shape[0]), sequences, hidden)  # the last real step
    return g.op("Squeeze", [y_h, g.const("axes", np.array([0], np.int64))])  # (1, batch, hidden) -> (batch, hidden)


def _simple(op_type, **attributes):
    return lambda g, layer, x, opset: g.op(op_type, [x], **attributes)


_EXPORTERS = {
    "linear": _linear,
    "relu": _simple("Relu"),
    "tanh": _simple("Tanh"),
    "sigmoid": _simple("Sigmoid"),
    "leaky_relu": lambda g, layer, x, opset: g.op("LeakyRelu", [x], alpha=layer.negative_slope),
    "gelu": _gelu,
    "softmax": _simple("Softmax", axis=-1),
    "dropout": lambda g, layer, x, opset: x,  # identity at inference
    "flatten": _simple("Flatten", axis=1),
    "reshape": _reshape,
    "batchnorm": _batchnorm,
    "conv2d": _conv2d,
    "max_pool2d": _pool("MaxPool"),
    "avg_pool2d": _pool("AveragePool", count_include_pad=1),
    "global_avg_pool": _global_avg_pool,
    "sequential": _sequential,
    "residual": _residual,
    "embedding": _embedding,
    "rnn": _recurrent,
    "gru": _recurrent,
    "lstm": _recurrent,
    "layernorm": _layernorm,
    "multihead_attention": _multihead_attention,
    "transformer_encoder": _transformer_encoder,
    "positional_embedding": _positional_embedding,
    "sequence_pool": _sequence_pool,
    "mean_pool": _sequence_pool,
}


def export_checkpoint(checkpoint, out: Path | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """An ONNX file from a checkpoint (or a run directory's best one), with the run's config in its metadata."""
    from ..config import config_from_dict  # noqa: PLC0415
    from ..inference.loading import note_views_not_exported  # noqa: PLC0415
    from ..layers import Softmax, build_model  # noqa: PLC0415
    from ..training.checkpoint import load_checkpoint, resolve_checkpoint  # noqa: PLC0415

    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    config = config_from_dict(ckpt.config, f"{ckpt.path} (config)")
    input_shape = tuple(ckpt.data["input_shape"])
    network = build_model(config.model, input_shape, ckpt.data)
    network.load_state_dict(ckpt.model)
    network.eval()
    outputs = "probabilities" if isinstance(network.layers[-1], Softmax) else "raw"
    out = Path(out) if out else ckpt.path.with_suffix(".onnx")
    metadata = {"dltrain_config": config.to_dict(), "dltrain_data": ckpt.data, "dltrain_outputs": outputs}
    path = export_onnx(network, ckpt.normalization, input_shape, out, opset, metadata, ckpt.data.get("padding_id"))
    note_views_not_exported(config.data)
    return path
