"""Export a trained model to ONNX: standard operators only, input normalization folded in, a dynamic
batch dimension, dropout removed. The model runs anywhere onnxruntime does.

Each built-in layer has a function in _EXPORTERS below that appends its nodes; a layer of a user's own
(--code, plugins) exports itself with a method `to_onnx(self, graph, x, opset) -> output name`, using
graph.op / graph.const as these functions do. A layer with neither is named in a clear error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

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
                metadata: dict | None = None) -> Path:
    """Write `network` (a built dltrain Sequential) as an ONNX model taking raw inputs (batch, *input_shape)."""
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
        if layer.registry_name in _EXPORTERS:
            x = _EXPORTERS[layer.registry_name](g, layer, x, opset)
        elif callable(getattr(layer, "to_onnx", None)):
            x = layer.to_onnx(g, x, opset)
        elif getattr(layer, "not_exportable", None):
            raise ExportError(f"{layer.path}: layer '{layer.registry_name}' cannot be exported to ONNX: "
                              f"{layer.not_exportable}")
        else:
            raise ExportError(f"{layer.path}: layer '{layer.registry_name}' has no ONNX export (a layer of your "
                              f"own exports itself with a method to_onnx(self, graph, x, opset); see "
                              f"dltrain/export/onnx.py)")
    return x


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
    return g.op("Gather", [g.const("table", _f32(layer.weight.data)), indices], axis=0)


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
    if layer.return_sequences:  # Y: (seq, 1, batch, hidden) -> (batch, seq, hidden)
        squeezed = g.op("Squeeze", [y, g.const("axes", np.array([1], np.int64))])
        return g.op("Transpose", [squeezed], perm=[1, 0, 2])
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
}


def export_checkpoint(checkpoint, out: Path | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """An ONNX file from a checkpoint (or a run directory's best one), with the run's config in its metadata."""
    from ..config import config_from_dict  # noqa: PLC0415
    from ..layers import Softmax, build_model  # noqa: PLC0415
    from ..training.checkpoint import load_checkpoint, resolve_checkpoint  # noqa: PLC0415
    from ..training.evaluate import note_views_not_exported  # noqa: PLC0415

    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    config = config_from_dict(ckpt.config, f"{ckpt.path} (config)")
    input_shape = tuple(ckpt.data["input_shape"])
    network = build_model(config.model, input_shape)
    network.load_state_dict(ckpt.model)
    network.eval()
    outputs = "probabilities" if isinstance(network.layers[-1], Softmax) else "raw"
    out = Path(out) if out else ckpt.path.with_suffix(".onnx")
    metadata = {"dltrain_config": config.to_dict(), "dltrain_data": ckpt.data, "dltrain_outputs": outputs}
    path = export_onnx(network, ckpt.normalization, input_shape, out, opset, metadata)
    note_views_not_exported(config.data)
    return path
