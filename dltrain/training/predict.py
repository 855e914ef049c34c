"""A trained model on new inputs: `dltrain predict MODEL INPUT...`.

The model is a run directory (its best checkpoint), a checkpoint, or an exported .onnx file (run by onnxruntime).
Inputs are prepared as the training data was (images converted to the trained channels and size, texts tokenized by
the stored tokenizer, the stored normalization applied) and streamed in batches; each row's output names the
predicted class and its probability (classification), the probability and label (binary), or the values
(regression).

Every cell is valid UTF-8: paths (and class names from folder names) that are not are written as readable_path()
writes them. Text is written as it is unless `escape_formulas`: then a text cell that a spreadsheet would run as a
formula (it begins with =, +, -, @, a tab or a carriage return, and is not a number) gets a ' before it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import backend
from ..autograd import no_grad
from ..config import config_from_dict
from ..data.images import DEFAULT_MAX_IMAGE_PIXELS
from ..data.inputs import InputSet, readable_path
from ..data.splits import blank_value, normalize
from ..data.tables import Cells, TableEncoding
from ..data.text import Tokenizer
from ..errors import CheckpointError, ConfigError, DataError, DltrainError
from .checkpoint import load_checkpoint, resolve_checkpoint
from .evaluate import load_onnx, note_views_not_exported, to_target_units
from .model import Model, checked_views

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


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def escape_formula(cell: str) -> str:
    """A text cell that a spreadsheet would run as a formula with a ' before it, as OWASP advises for CSV files (the
    spreadsheet shows the text and hides the quote); a number such as -1.5 or +2 stays a number."""
    if cell.startswith(_FORMULA_START) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def _softmax(outputs):
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(outputs):
    return 1.0 / (1.0 + np.exp(-outputs))


def output_columns(predictor: Predictor, top_k: int, probabilities: bool, width: int, carried: list[str]) -> list:
    columns = ["input", *carried]
    if predictor.task == "classification":
        columns += ["prediction", "probability"]
        for k in range(2, top_k + 1):
            columns += [f"top{k}", f"top{k}_probability"]
        if probabilities:
            columns += [f"probability_{name}" for name in predictor.class_names]
    elif predictor.task == "binary":
        columns += (["prediction", "probability"] if width == 1 else
                    [f"{kind}_{i}" for i in range(width) for kind in ("prediction", "probability")])
    else:
        columns += ["prediction"] if width == 1 else [f"prediction_{i}" for i in range(width)]
    return columns


def rows_of(predictor: Predictor, outputs, ids: list[str], carried: dict, top_k: int, probabilities: bool):
    """One dict per input, values as the output formats write them (floats exact: repr)."""
    rows = []
    if predictor.task == "classification":
        probs = outputs if predictor.outputs_are_probabilities else _softmax(outputs)
        order = np.argsort(-outputs, axis=1, kind="stable")  # argmax of the outputs, as eval predicts
        for i, input_id in enumerate(ids):
            row = {"input": input_id, **{k: v[i] for k, v in carried.items()}}
            best = order[i, :max(top_k, 1)]
            row["prediction"], row["probability"] = predictor.class_names[best[0]], float(probs[i, best[0]])
            for k, c in enumerate(best[1:], start=2):
                row[f"top{k}"], row[f"top{k}_probability"] = predictor.class_names[c], float(probs[i, c])
            if probabilities:
                row.update({f"probability_{name}": float(p) for name, p in zip(predictor.class_names, probs[i])})
            rows.append(row)
    elif predictor.task == "binary":
        probs = _sigmoid(outputs)
        names = predictor.class_names if predictor.class_names and len(predictor.class_names) == 2 else ["0", "1"]
        for i, input_id in enumerate(ids):
            row = {"input": input_id, **{k: v[i] for k, v in carried.items()}}
            suffixes = [""] if outputs.shape[1] == 1 else [f"_{j}" for j in range(outputs.shape[1])]
            for j, suffix in enumerate(suffixes):
                row[f"prediction{suffix}"] = names[int(outputs[i, j] > 0)]  # as eval: the logit's sign
                row[f"probability{suffix}"] = float(probs[i, j])
            rows.append(row)
    else:
        outputs = to_target_units(outputs, predictor.data)
        for i, input_id in enumerate(ids):
            row = {"input": input_id, **{k: v[i] for k, v in carried.items()}}
            if outputs.shape[1] == 1:
                row["prediction"] = float(outputs[i, 0])
            else:
                row.update({f"prediction_{j}": float(v) for j, v in enumerate(outputs[i])})
            rows.append(row)
    return rows


def predict(model: str | Path, inputs: list[Path], out: Path | None = None, fmt: str = "csv", top_k: int = 1,
            probabilities: bool = False, batch_size: int = 256, device: str = "cpu", skip_bad: bool = False,
            progress=None, views: list[str] | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
            escape_formulas: bool = False) -> InputSet:
    """Write one row per input to `out` (atomically: a temporary file beside it, removed on any error, Ctrl-C or
    SIGTERM) or stdout; returns the InputSet (its `skipped` files). `views` replaces the config's
    data.test_time_augment ([]: none)."""
    predictor = load_predictor(model, device, views)
    if predictor.task == "classification" and top_k > len(predictor.class_names):
        raise DataError(f"--top-k {top_k}: the model has {len(predictor.class_names)} classes")
    source = InputSet(list(inputs), predictor.input_shape, predictor.feature_names, predictor.label_column,
                      max_image_pixels, predictor.tokenizer)
    options = (fmt, top_k, probabilities, batch_size, skip_bad, progress, escape_formulas)
    if out is None:
        _write_all(predictor, source, sys.stdout, *options)
        return source
    out = Path(out)
    temporary = None
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp",
                                         dir=out.parent if str(out.parent) else ".")
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as stream:
            _write_all(predictor, source, stream, *options)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, out)
    except BaseException:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise
    return source


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_all(predictor, source: InputSet, stream, fmt, top_k, probabilities, batch_size, skip_bad, progress,
               escape_formulas):
    writer = None
    done = 0

    def cell(value):
        if isinstance(value, float):
            return repr(value)
        return escape_formula(value) if escape_formulas and isinstance(value, str) else value

    for batch in source.batches(batch_size, skip_bad):
        x = _encoded(predictor, batch) if isinstance(batch.x, list) else batch.x
        outputs = predictor.run(x)
        rows = rows_of(predictor, outputs, batch.ids, batch.carried, top_k, probabilities)
        if fmt == "jsonl":
            for row in rows:
                stream.write(json.dumps(row) + "\n")
        else:
            if writer is None:
                columns = output_columns(predictor, top_k, probabilities, outputs.shape[1], list(batch.carried))
                writer = csv.writer(stream, lineterminator="\n")
                writer.writerow([cell(column) for column in columns])
            writer.writerows([cell(row.get(column, "")) for column in columns] for row in rows)
        done += len(rows)
        if progress is not None:
            progress(done)
    stream.flush()


def _encoded(predictor: Predictor, batch):
    """A CSV's feature cells as the model's inputs, encoded as its training table was."""
    if predictor.encoding is None:
        raise DataError(f"{batch.ids[0].rsplit(':', 1)[0]}: this model was not trained on a CSV table")
    return predictor.encoding.transform(Cells(batch.x, predictor.feature_names, batch.ids))
