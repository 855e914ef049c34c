"""A trained model loaded for use: a run directory (its best checkpoint), a checkpoint or an exported .onnx file,
as one Predictor that takes raw inputs, as the training data was given, and returns the network's outputs."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .. import backend
from ..autograd import no_grad
from ..config import config_from_dict
from ..data.inputs import readable_path
from ..data.splits import blank_value, normalize
from ..data.tables import TableEncoding
from ..data.text import Tokenizer
from ..errors import CheckpointError, ConfigError, DltrainError
from ..training.checkpoint import data_problem, load_checkpoint, metadata_json, resolve_checkpoint
from ..training.model import Model, checked_views

np = backend.np


@dataclass
class Predictor:
    """What predicting needs of a trained model: how to run it and what its outputs mean."""

    run: object  # raw inputs (n, *input_shape) -> outputs (n, width) as float64, logits or values
    task: str
    input_shape: tuple
    class_names: list[str] | None
    feature_names: list[str] | None
    label_column: str | None
    data: dict  # the checkpoint's record of its data: a table's encoding, the targets' normalization
    outputs_are_probabilities: bool = False
    source: str = "checkpoint"  # the checkpoint or .onnx file, named in messages about what it holds

    def __post_init__(self):
        features, text = self.data.get("features"), self.data.get("text")
        self.encoding = TableEncoding.from_state(features) if features else None
        # text: the training split's tokenizer
        self.tokenizer = Tokenizer.from_state(text, self.source) if text else None


def load_predictor(path: str | Path, device: str = "cpu", views: list[str] | None = None) -> Predictor:
    """`views` replaces the config's data.test_time_augment ([]: the network's own predictions)."""
    path = Path(path)
    if path.suffix == ".onnx":
        if views:
            raise ConfigError(f"{path}: test-time augmentation is not part of an exported ONNX graph; predict with "
                              f"the checkpoint instead")
        return _onnx_predictor(path)
    ckpt = load_checkpoint(resolve_checkpoint(path))
    config = config_from_dict(ckpt.config, f"{ckpt.path} (config)")
    data = ckpt.data
    if views is not None:
        config.data["test_time_augment"] = checked_views(views, data["input_shape"], "--tta")
    model = Model(config, tuple(data["input_shape"]), data.get("classes"), data.get("target_width"),
                  blank_value(ckpt.normalization),
                  data={key: data.get(key) for key in ("padding_id", "vocab_size")})  # token ids: masks, vocabulary
    try:
        model.network.load_state_dict(ckpt.model)
    except DltrainError as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the model in its config ({exc})") from None
    model.network.to(device)
    model.network.eval()
    stats = {key: backend.to_device(np.asarray(a, np.float64), device) for key, a in ckpt.normalization.items()}

    def run(x):
        with no_grad(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = model.predict_outputs(normalize(backend.to_device(x, device), stats))
        return backend.to_numpy(out.data).astype(np.float64)

    return Predictor(run, model.task, tuple(data["input_shape"]), _class_names(data), data.get("feature_names"),
                     config.data.get("label_column"), data, source=str(ckpt.path))


def _onnx_predictor(path: Path) -> Predictor:
    session, props, config, data = load_onnx(path, "predicting with")
    note_views_not_exported(config["data"])
    task = {"cross_entropy": "classification", "binary_cross_entropy": "binary"}.get(config["loss"].get("name"),
                                                                                   "regression")

    def run(x):  # normalization is folded into the exported graph: it takes raw inputs
        return session.run(None, {"input": np.asarray(x, np.float32)})[0].astype(np.float64)

    return Predictor(run, task, tuple(data["input_shape"]), _class_names(data), data.get("feature_names"),
                     config["data"].get("label_column"), data, props.get("dltrain_outputs") == "probabilities",
                     source=str(path))


def _class_names(data: dict) -> list[str] | None:
    if data.get("class_names"):
        return [_utf8(str(name)) for name in data["class_names"]]
    return [str(i) for i in range(data["classes"])] if data.get("classes") else None


def _utf8(text: str) -> str:
    """Text as it is, or, where it holds what UTF-8 cannot (a folder name's bytes that are not UTF-8), as
    readable_path() writes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return readable_path(text)
    return text


def load_onnx(path: Path, doing: str) -> tuple:
    """(onnxruntime session, dltrain's metadata, the run's config (a dict, not validated: predicting needs no
    --code for the graph's layers), its data record) of an exported model, the metadata checked as a checkpoint's
    is; CheckpointError for anything else."""
    try:
        import onnx  # noqa: PLC0415
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        raise DltrainError(f"{doing} an ONNX model needs onnx and onnxruntime: pip install 'dltrain[onnx]'") from None
    try:
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnx and onnxruntime raise many kinds for unreadable files
        raise CheckpointError(f"{path}: not a loadable ONNX model ({exc})") from None
    if "dltrain_config" not in props or "dltrain_data" not in props:
        raise CheckpointError(f"{path}: an ONNX model without dltrain's metadata (export it with dltrain export)")
    config, data = (metadata_json(props, key, path) for key in ("dltrain_config", "dltrain_data"))
    if not (isinstance(config, dict) and all(isinstance(config.get(key), dict) for key in ("data", "loss"))):
        raise CheckpointError(f"{path}: metadata dltrain_config: expected a config with data and loss mappings")
    problem = data_problem(data) if isinstance(data, dict) else "expected a JSON object"
    if problem:
        raise CheckpointError(f"{path}: metadata dltrain_data is damaged ({problem})")
    if config["loss"].get("name") == "cross_entropy":  # one output per class: predict and eval name each
        problem = _classes_problem(data, session.get_outputs()[0].shape)
        if problem:
            raise CheckpointError(f"{path}: metadata dltrain_data does not fit the graph ({problem})")
    return session, props, config, data


def _classes_problem(data: dict, output_shape) -> str | None:
    """How the metadata's classes disagree with the width of the graph's output (its last dimension, where the graph
    fixes it), or None: edited metadata would otherwise name classes the graph does not output, or leave some out."""
    width = output_shape[-1] if output_shape else None
    if not isinstance(width, int) or isinstance(width, bool):
        return None  # a dimension the graph leaves open (a name such as 'classes'): nothing to compare
    names, classes = data.get("class_names"), data.get("classes")
    if names and len(names) != width:
        return (f"data.class_names: expected a name for each of the graph's {width} outputs, found {len(names)} "
                f"name{'' if len(names) == 1 else 's'}")
    if classes != width:
        return f"data.classes: expected the graph's output width {width}, found {classes}"
    return None


def note_views_not_exported(data_config: dict) -> None:
    """An ONNX graph is the network alone: say so where its predictions leave out the config's test-time views."""
    views = data_config.get("test_time_augment")
    if views:
        print(f"note: the exported graph predicts without data.test_time_augment ({', '.join(views)}); dltrain eval "
              f"and predict on the checkpoint average over them", file=sys.stderr)
