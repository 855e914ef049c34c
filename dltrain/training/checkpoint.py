"""Checkpoints: safetensors for the arrays, JSON in its metadata for everything else. No pickle.

Tensor names:
    model/<layer index>.<parameter>     e.g. model/0.weight (out, in), model/0.bias, model/3.running_mean
    optimizer/<slot>/<parameter index>  e.g. optimizer/velocity/0, optimizer/m/2
    normalization/mean, normalization/std   (broadcast against one sample)
Metadata (all strings): format, format_version, dltrain_version, config (JSON: the resolved config),
state (JSON: epoch, global_step, optimizer_steps, rng, early_stopping), data (JSON: input_shape, classes).
A checkpoint is self-contained: `dltrain eval` needs nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import __version__, backend
from ..config.loader import MAX_DEPTH
from ..errors import CheckpointError
from .fold_results import final_checkpoint
from .rundir import BEST, CHECKPOINTS, CONFIG, FOLDS, LAST, atomic_write

np = backend.np

FORMAT = "dltrain-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    config: dict
    state: dict
    data: dict
    model: dict  # name -> host array
    optimizer: dict  # {'steps': n, 'slots': {...}}
    normalization: dict
    path: Path | None = None
    training: dict | None = None  # with weight averaging: the weights being trained (model/ holds the average)


def save_checkpoint(path: Path, model, optimizer, normalization: dict, config: dict, state: dict,
                    data_info: dict, training: dict | None = None) -> None:
    tensors = {f"model/{name}": backend.to_numpy(a) for name, a in model.state_dict().items()}
    tensors.update({f"training/{name}": backend.to_numpy(a) for name, a in (training or {}).items()})
    opt_state = optimizer.state_dict()
    tensors.update({f"optimizer/{key}": backend.to_numpy(a) for key, a in opt_state["slots"].items()})
    tensors.update({f"normalization/{key}": np.asarray(a) for key, a in normalization.items()})
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    state = dict(state, optimizer_steps=opt_state["steps"])
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "dltrain_version": __version__,
        "config": json.dumps(config),
        "state": json.dumps(state),
        "data": json.dumps(data_info),
    }
    from safetensors.numpy import save  # noqa: PLC0415 (imported when first needed)

    atomic_write(Path(path), save(tensors, metadata=metadata))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint; every way it can be wrong ends in CheckpointError."""
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.numpy import load  # noqa: PLC0415

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: expected a .safetensors checkpoint file or a run directory") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    try:
        tensors = load(raw)
        metadata = _metadata(raw)
    except (SafetensorError, ValueError, OverflowError, MemoryError) as exc:
        if looks_like_config(path, raw):
            raise config_given(path) from None
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint (truncated, corrupt or another "
                              f"format: {exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not a dltrain checkpoint (no format={FORMAT!r} in "
                              "its metadata)")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this dltrain reads version "
                              f"{FORMAT_VERSION}")
    try:
        config, state, data = (metadata_json(metadata, key, path) for key in ("config", "state", "data"))
    except KeyError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete or not JSON ({exc})") from None
    if not all(isinstance(v, dict) for v in (config, state, data)):
        raise CheckpointError(f"{path}: checkpoint metadata has the wrong structure")
    problem = _state_problem(state) or data_problem(data)
    if problem:
        raise CheckpointError(f"{path}: checkpoint metadata is damaged ({problem})")

    def group(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    normalization = group("normalization/")
    problem = _normalization_problem(normalization, tuple(data["input_shape"]))
    if problem:
        raise CheckpointError(f"{path}: checkpoint tensor {problem}")
    return Checkpoint(config=config, state=state, data=data, model=group("model/"),
                      optimizer={"steps": state.get("optimizer_steps", 0), "slots": group("optimizer/")},
                      normalization=normalization, path=path, training=group("training/") or None)


def checkpoint_config(path: str | Path) -> dict:
    """The config a checkpoint was trained with, read from its header alone (not its tensors)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            raw = f.read(size) if size <= 100_000_000 else b""
        config = metadata_json(_metadata(len(raw).to_bytes(8, "little") + raw), "config", path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a valid dltrain checkpoint ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: checkpoint metadata has the wrong structure")
    return config


def metadata_json(metadata: dict, key: str, path: Path):
    """The JSON value of a metadata entry (KeyError if missing); CheckpointError naming the file and the key for
    text that is not JSON or is nested deeper than a config ever is (config.loader's MAX_DEPTH)."""
    too_deep = CheckpointError(f"{path}: checkpoint metadata {key}: expected JSON nested at most {MAX_DEPTH} levels "
                               "deep, found deeper nesting")
    try:
        value = json.loads(metadata[key])
    except RecursionError:  # deeper than the JSON decoder itself follows
        raise too_deep from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata {key}: expected JSON, found text that is not ({exc})"
                              ) from None
    if _deeper_than(value, MAX_DEPTH):  # the decoder followed it; the code reading it recursively might not
        raise too_deep
    return value


def _deeper_than(value, limit: int) -> bool:
    """Whether lists and mappings nest more than `limit` levels (walked without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _normalization_problem(normalization: dict, input_shape: tuple) -> str | None:
    """normalization/mean and normalization/std: numbers that broadcast to one input without changing its shape, the
    std finite and above 0 (what training stores; anything else would fail, or divide by 0, at the first batch)."""
    for key in ("mean", "std"):
        if key not in normalization:
            return f"normalization/{key}: expected one, found none"
        array = normalization[key]
        if array.dtype.kind not in "iuf":
            return f"normalization/{key}: expected numbers, found dtype {array.dtype}"
        if array.ndim > len(input_shape) or any(n not in (1, m) for n, m in zip(array.shape[::-1],
                                                                                input_shape[::-1])):
            return (f"normalization/{key}: expected a shape that broadcasts to one input {input_shape}, found "
                    f"{tuple(array.shape)}")
        bad = ~np.isfinite(array) | ((array <= 0) if key == "std" else False)
        if bad.any():
            return (f"normalization/{key}: expected finite values{' above 0' if key == 'std' else ''}, found "
                    f"{array[bad].flat[0].item()!r}")
    return None


def _state_problem(state: dict) -> str | None:
    for key in ("epoch", "global_step", "optimizer_steps"):
        if not isinstance(state.get(key), int) or state[key] < 0:
            return f"state.{key} should be a non-negative integer, got {state.get(key)!r}"
    if not isinstance(state.get("rng"), dict) or not isinstance(state.get("early_stopping"), dict):
        return "state.rng and state.early_stopping should be mappings"
    return None


def data_problem(data: dict) -> str | None:
    """What is wrong with a checkpoint's (or an exported model's) record of its data, or None: metadata is data and
    is checked like data, before anything uses it."""
    shape = data.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        return f"data.input_shape should be a list of positive integers, got {shape!r}"
    for key in ("classes", "target_width"):
        count = data.get(key)
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            return f"data.{key} should be a positive integer or null, got {count!r}"
    for key in ("class_names", "feature_names"):
        names = data.get(key)
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            return f"data.{key} should be a list of strings or null, got {names!r}"
    classes, names = data.get("classes"), data.get("class_names")
    if classes is not None and names and len(names) < classes:  # predict and eval name each class
        return (f"data.class_names: expected a name for each of the {classes} classes (data.classes), found "
                f"{len(names)}: {names!r}")
    return (_features_problem(data.get("features")) or _targets_problem(data.get("target_normalization"))
            or _text_problem(data))


def _text_problem(data: dict) -> str | None:
    """A text model's record: its tokenizer state, padding id 0 and vocab_size as the tokenizer says."""
    from ..data.text import PADDING_ID, state_problem  # noqa: PLC0415

    text = data.get("text")
    if text is None:
        return None
    problem = state_problem(text)
    if problem:
        return f"data.text: {problem}"
    if data.get("padding_id") != PADDING_ID or data.get("vocab_size") != text["vocab_size"]:
        return (f"data.padding_id and data.vocab_size should be {PADDING_ID} and the tokenizer's "
                f"{text['vocab_size']}, got {data.get('padding_id')!r} and {data.get('vocab_size')!r}")
    return None


def _features_problem(features) -> str | None:
    if features is None:
        return None
    what = "data.features should be a table encoding (columns, missing, unknown_category)"
    if not isinstance(features, dict) or not isinstance(features.get("columns"), list):
        return what
    if features.get("missing") not in ("error", "mean") or features.get("unknown_category") not in ("error", "zeros"):
        return what
    for column in features["columns"]:
        if not isinstance(column, dict) or not isinstance(column.get("name"), str):
            return what
        number = column.get("kind") == "number" and isinstance(column.get("mean"), int | float)
        category = column.get("kind") == "category" and isinstance(column.get("categories"), list) and all(
            isinstance(c, str) for c in column["categories"])
        if not (number or category):
            return what
    return None


def _targets_problem(targets) -> str | None:
    if targets is None:
        return None
    ok = isinstance(targets, dict) and all(
        isinstance(targets.get(k), list) and targets[k] and all(isinstance(v, int | float) for v in targets[k])
        for k in ("mean", "std"))
    if not ok or len(targets["mean"]) != len(targets["std"]) or not all(v > 0 for v in targets["std"]):
        return "data.target_normalization should be {mean: [...], std: [...]} of one length, std positive"
    return None


def _metadata(raw: bytes) -> dict:
    """The __metadata__ of a safetensors byte string (its header is 8 bytes of length, then JSON)."""
    if len(raw) < 8:
        raise ValueError("file shorter than the safetensors header")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise ValueError("header length beyond the end of the file")
    try:
        header = json.loads(raw[8:8 + size])
    except RecursionError:
        raise ValueError("header nested deeper than the JSON parser follows") from None
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a mapping")
    return metadata


def looks_like_config(path: Path, raw: bytes | None = None) -> bool:
    """Whether a file given for a checkpoint is a YAML config instead: by its suffix, or by its text (`raw`, the
    file's bytes), a YAML mapping with a config's model, data or training section."""
    if path.suffix.lower() in (".yaml", ".yml"):
        return True
    if raw is None or len(raw) > 1_000_000:  # a config is a few kilobytes
        return False
    import yaml  # noqa: PLC0415

    try:
        values = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False
    return isinstance(values, dict) and any(key in values for key in ("model", "data", "training"))


def config_given(path: Path) -> CheckpointError:
    """The error for a YAML config given where a trained model is expected (dltrain eval, predict, export, serve,
    train --init-from)."""
    import shlex  # noqa: PLC0415

    if path.name == CONFIG and (path.parent / CHECKPOINTS).is_dir():  # a run's own config: the run is trained
        return CheckpointError(f"{path}: expected a checkpoint (.safetensors) or a run directory, found the config "
                               f"of a run; give the run directory, {path.parent}")
    return CheckpointError(f"{path}: expected a checkpoint (.safetensors) or a run directory, found what looks like "
                           f"a YAML config; train it first (dltrain train {shlex.quote(str(path))}) and give the run "
                           f"directory it writes")


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best checkpoint (its last one if no best was written); a k-fold run's directory,
    that of its final run (training.final). A YAML config (by its suffix) is refused, saying so."""
    path = Path(path)
    if path.is_file() and looks_like_config(path):
        raise config_given(path)
    if path.is_dir() and (path / FOLDS).is_file() and not (path / CHECKPOINTS).is_dir():
        return final_checkpoint(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no checkpoint in this directory (expected {BEST} or {LAST})")
    return path
