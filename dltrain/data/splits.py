"""From a config's `data:` section to train / val / test splits on the device, normalized.

Checks run before any training: shapes, NaN/Inf, labels (integers within range for
classification), empty splits. The validation split is held out from train, stratified by
class and decided by the seed, unless `val_path` gives one. Normalization statistics come from
the training split alone and travel in the checkpoint, so `eval` applies the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import backend
from ..errors import DataError, ShapeError
from ..registry import datasets
from .datasets import RawData, cache_dir, read_extra_split
from .rows import RowView, fold_numbers, stratified_split
from .tables import Cells, TableEncoding
from .text import PADDING_ID, Texts, Tokenizer, cached_ids, fitted

np = backend.np


class NormalizedRows:
    """Inputs kept as they were read and normalized batch by batch, so the float copy of a whole split never exists:
    an image folder's RowView (memory-mapped on the host: a batch goes to the device as uint8), or an 8-bit split in
    memory, kept as its bytes on its device (Fashion-MNIST's 54,000 training images: 42 MB, not 169 MB in float32).
    With 8-bit inputs and one mean and std for every value (normalize: global or none), a table of normalize()'s 256
    results makes a batch one gather (lookup_rows), equal to normalize() to the bit; otherwise normalize() runs on
    each batch."""

    def __init__(self, rows, stats: dict, device: str):
        self.on_host = isinstance(rows, RowView)
        self.rows, self.device = rows if self.on_host else backend.to_device(rows, device), device
        self.shape, self.ndim, self.dtype = rows.shape, rows.ndim, np.dtype(backend.default_dtype())
        self.table = None
        if rows.dtype == np.uint8 and all(np.ptp(np.asarray(a)) == 0 for a in stats.values()):
            values = np.arange(256, dtype=np.uint8).reshape((256,) + (1,) * (rows.ndim - 1))  # stats broadcast so
            self.table = backend.to_device(normalize(values, stats).reshape(256), device)
        self.stats = {key: backend.to_device(np.asarray(a, np.float64), device) for key, a in stats.items()}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        rows = self.rows
        if self.on_host:  # read the batch off the host, then index it as a whole
            rows = backend.to_device(rows[index if isinstance(index, slice) else backend.to_numpy(index)], self.device)
            index = slice(None)
        if self.table is not None:
            return backend.kernels_for(self.table).lookup_rows(self.table, rows, index)
        return normalize(rows[index], self.stats)


def normalize(batch, stats: dict):
    """(inputs - mean) / std computed in float64 and rounded once to the default dtype, on the inputs' device (stats
    there too): one formula for whole splits, image batches and predictions, so they agree to the bit."""
    xp = backend.array_module(batch)
    return ((batch.astype(xp.float64) - stats["mean"]) / stats["std"]).astype(backend.default_dtype())


@dataclass
class Split:
    x: object  # device array, samples first, default float dtype (or NormalizedRows: read and normalized by batch)
    y: object  # device array: int64 class labels, or float targets (N, k)

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Splits:
    train: Split
    val: Split | None
    test: Split | None
    input_shape: tuple[int, ...]
    classes: int | None
    class_names: list[str] | None
    normalization: dict  # {'mean': array, 'std': array}, broadcastable to one sample
    feature_names: list[str] | None = None  # a table's columns, as its header names them
    encoding: dict | None = None  # a table's TableEncoding state
    target_normalization: dict | None = None  # regression: {'mean': [...], 'std': [...]} per target column
    # Tokenized text: inputs are token ids (batch, time), right-padded with padding_id; the ids run 0..vocab_size-1;
    # `text` is the fitted tokenizer's state (JSON-ready), kept in the checkpoint so eval and predict tokenize alike.
    padding_id: int | None = None
    vocab_size: int | None = None
    text: dict | None = None


def load_raw(data: dict, seed: int) -> RawData:
    """Call the dataset's registered loader with its own options."""
    loader = datasets.get(data["name"])
    own = {p.name for p in datasets.params(data["name"])}
    rng = np.random.default_rng([seed, 1])  # data has its own stream: splits do not shift training randomness
    raw = loader(path=data.get("path"), rng=rng, **{k: v for k, v in data.items() if k in own})
    if data.get("val_path"):
        raw.x_val, raw.y_val = read_extra_split(data["val_path"], data["name"], data, raw.class_names)
    if data.get("test_path"):
        raw.x_test, raw.y_test = read_extra_split(data["test_path"], data["name"], data, raw.class_names)
    return raw


def _check_arrays(name: str, x, y, task: str) -> tuple:
    kept = RowView | Cells | Texts  # decoded images stay where they are; tables and texts are text, encoded later
    x = x if isinstance(x, kept) else np.asarray(x)
    y = np.asarray(y)
    if isinstance(x, Cells | Texts):
        pass  # checked when encoded
    elif x.dtype.kind not in "biuf":
        raise DataError(f"{name} inputs: expected numbers, got dtype {x.dtype}")
    if len(x) == 0:
        raise DataError(f"{name} split is empty (0 samples)")
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} inputs but {len(y)} labels (expected one label per sample)")
    if not isinstance(x, Cells | Texts) and x.ndim < 2:
        x = x.reshape(len(x), 1)
    if not isinstance(x, Cells | Texts) and x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{name} inputs contain NaN or Inf (first at index {tuple(int(i) for i in bad)})")
    if task == "classification":
        if y.ndim != 1:
            raise DataError(f"{name} labels: expected one integer class per sample, shape (N,); got shape {y.shape}")
        if y.dtype.kind == "f":
            if not np.isfinite(y).all() or (y != np.round(y)).any():
                bad = int(np.argwhere(~np.isfinite(y) | (y != np.round(y)))[0][0])
                raise DataError(f"{name} labels: expected integer classes, got {y[bad].item()!r} at index {bad}")
        elif y.dtype.kind not in "iub":
            raise DataError(f"{name} labels: expected integer classes, got dtype {y.dtype}")
        y = y.astype(np.int64)
        if (y < 0).any():
            raise DataError(f"{name} labels: expected classes >= 0, got {int(y.min())}")
    else:
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise DataError(f"{name} targets contain NaN or Inf")
        if y.ndim == 1:
            y = y[:, None]  # one target per sample, shaped like a (N, 1) model output
        if task == "binary" and ((y != 0) & (y != 1)).any():
            raise DataError(f"{name} targets: binary_cross_entropy expects 0/1 targets, got values like "
                            f"{float(y[(y != 0) & (y != 1)][0])!r}")
    return x, y


# Samples per pass when computing statistics and normalizing: the float64 temporaries stay a few MB instead of
# twice the data set (Fashion-MNIST's training split made them 680 MB).
CHUNK = 4096


def _float_chunks(x):
    for start in range(0, len(x), CHUNK):
        yield start, x[start:start + CHUNK].astype(np.float64)


def blank_value(stats: dict) -> float:
    """A raw 0 after normalization, one number (the mean over channels or features): what augmentation and
    test-time views put where a moved image uncovers pixels."""
    return float(np.mean(-np.asarray(stats["mean"]) / np.asarray(stats["std"])))


def normalization_stats(x_train, mode: str) -> dict:
    """mean/std over the training split: one pair ('global'), per feature ('feature'), or identity ('none')."""
    shape = (1,) * (x_train.ndim - 1)
    n = len(x_train)
    if mode == "none" or n == 0:  # an empty split is refused later, with its own message
        return {"mean": np.zeros(shape, np.float64), "std": np.ones(shape, np.float64)}
    mean = sum(chunk.sum(axis=0) for _, chunk in _float_chunks(x_train)) / n  # per feature
    if mode == "global":
        mean = np.full(shape, mean.mean())
        squares = sum(((chunk - mean) ** 2).sum() for _, chunk in _float_chunks(x_train))
        return {"mean": mean, "std": np.full(shape, max(float(np.sqrt(squares / x_train.size)), 1e-12))}
    std = np.sqrt(sum(((chunk - mean) ** 2).sum(axis=0) for _, chunk in _float_chunks(x_train)) / n)
    return {"mean": mean, "std": np.where(std < 1e-6, 1.0, std)}  # constant features stay 0, not inf


def to_split(x, y, stats: dict, device: str) -> Split:
    if isinstance(x, RowView) or x.dtype == np.uint8:
        y = y if y.dtype.kind == "i" else y.astype(backend.default_dtype())
        return Split(NormalizedRows(x, stats, device), backend.to_device(y, device))
    normalized = np.empty(x.shape, dtype=backend.default_dtype())
    for start in range(0, len(x), CHUNK):
        normalized[start:start + CHUNK] = normalize(x[start:start + CHUNK], stats)
    y = y if y.dtype.kind == "i" else y.astype(normalized.dtype)
    return Split(backend.to_device(normalized, device), backend.to_device(y, device))


def prepare(data: dict, task: str, seed: int, device: str, stats: dict | None = None,
            expected_shape: tuple | None = None, encoding: dict | None = None,
            target_normalization: dict | None = None, token_ids: bool = False, text: dict | None = None,
            text_source: str | None = None) -> Splits:
    """Load, check, split and normalize; `stats` (and the per-sample `expected_shape`, a table's `encoding`, the
    regression targets' `target_normalization`, text's fitted tokenizer `text`, and `text_source`, the checkpoint
    file it came from, for messages) come from a checkpoint when one is evaluated or resumed. `token_ids`: the
    model's first layer is an embedding, so `normalize: auto` leaves the inputs as they are. Text is tokenized into
    token ids (never normalized) by a tokenizer fitted on the training split after the validation split is held out
    (or the stored one): cached as int32, they reach the model as values of the default float dtype like any input,
    exact for every id (below 2^24)."""
    raw = load_raw(data, seed)
    x_train, y_train = _check_arrays("train", raw.x_train, raw.y_train, task)
    val = test = None
    fold = data.get("fold")
    if raw.x_val is not None and fold is not None:
        raise DataError(f"data.fold: {data['name']} came with its own validation split ({len(raw.y_val)} samples), "
                        "but k-fold cross-validation validates on folds of the training split; move those samples "
                        "into the training data, or train without folds")
    if raw.x_val is not None:
        val = _check_arrays("val", raw.x_val, raw.y_val, task)
    elif fold is not None or data.get("val_fraction", 0) > 0:
        rng = np.random.default_rng([seed, 2])
        classification = task == "classification"
        if fold is not None:
            if len(y_train) < fold["of"]:
                raise DataError(f"data.fold: {fold['of']} folds of {len(y_train)} training samples leave a fold "
                                f"empty; use at most {len(y_train)} folds")
            in_fold = fold_numbers(y_train, fold["of"], rng, classification) == fold["index"]
            train_idx, val_idx = np.flatnonzero(~in_fold), np.flatnonzero(in_fold)
        else:
            train_idx, val_idx = stratified_split(y_train, data["val_fraction"], rng, classification)
        if len(val_idx) == 0 or len(train_idx) == 0:
            raise DataError(f"data.val_fraction {data['val_fraction']} of {len(y_train)} samples leaves an empty "
                            "split; use a fraction that keeps samples on both sides")
        pick = (lambda x, rows: x.take(rows)) if isinstance(x_train, RowView | Cells | Texts) else (
            lambda x, rows: x[rows])
        val = (pick(x_train, val_idx), y_train[val_idx])
        x_train, y_train = pick(x_train, train_idx), y_train[train_idx]
    if raw.x_test is not None:
        test = _check_arrays("test", raw.x_test, raw.y_test, task)
    table = None
    if isinstance(x_train, Cells):  # encoded as the training split alone says (after validation is held out)
        table = TableEncoding.from_state(encoding) if encoding else TableEncoding.fit(x_train, **raw.table_options)
        x_train = table.transform(x_train)
        val, test = ((table.transform(p[0]), p[1]) if p is not None else None for p in (val, test))
    tokenizer = None
    if isinstance(x_train, Texts):  # fitted on the training split alone (after validation is held out), or stored
        tokenizer, x_train, val, test = _tokenized(raw, x_train, val, test, text, text_source)
    if expected_shape is not None and tuple(x_train.shape[1:]) != tuple(expected_shape):
        raise ShapeError(f"the model was trained on inputs of per-sample shape {tuple(expected_shape)}, but the "
                         f"data has shape {tuple(x_train.shape[1:])}")

    for name, pair in (("val", val), ("test", test)):
        if pair is not None and pair[0].shape[1:] != x_train.shape[1:]:
            raise DataError(f"{name} inputs have per-sample shape {pair[0].shape[1:]}, train has {x_train.shape[1:]}")

    classes = None
    if task == "classification":
        seen = max(int(p[1].max()) for p in ((x_train, y_train), val, test) if p is not None) + 1
        classes = raw.classes or seen
        if seen > classes:
            raise DataError(f"labels go up to {seen - 1} but {data['name']} has {classes} classes (0..{classes - 1})")

    if task == "regression" and data.get("normalize_targets", True):
        if target_normalization is None:
            std = y_train.std(axis=0)
            target_normalization = {"mean": y_train.mean(axis=0).tolist(),
                                    "std": np.where(std < 1e-12, 1.0, std).tolist()}
        mean, std = (np.asarray(target_normalization[k]) for k in ("mean", "std"))
        y_train = (y_train - mean) / std
        val, test = ((p[0], (p[1] - mean) / std) if p is not None else None for p in (val, test))
    else:
        target_normalization = None

    if stats is None:
        mode = data.get("normalize", "auto")
        if tokenizer is not None and mode in ("global", "feature"):
            raise DataError(f"data.normalize: {mode!r} standardizes the inputs, but text becomes token ids, which are "
                            "never standardized; set data.normalize: none (or auto)")
        if mode == "auto":
            mode = "none" if token_ids or tokenizer is not None else raw.normalize
        stats = normalization_stats(x_train, mode)
    return Splits(
        train=to_split(x_train, y_train, stats, device),
        val=None if val is None else to_split(*val, stats, device),
        test=None if test is None else to_split(*test, stats, device),
        input_shape=tuple(x_train.shape[1:]),
        classes=classes,
        class_names=raw.class_names,
        normalization=stats,
        feature_names=raw.feature_names,
        encoding=table.state() if table else None,
        target_normalization=target_normalization,
        padding_id=PADDING_ID if tokenizer else None,
        vocab_size=tokenizer.vocab_size if tokenizer else None,
        text=tokenizer.state() if tokenizer else None,
    )


def _tokenized(raw: RawData, x_train: Texts, val, test, state: dict | None, source: str | None) -> tuple:
    """(tokenizer, train ids, val, test): each split's texts as token ids, memory-mapped rows of the text cache.
    `source`: the checkpoint file the stored tokenizer `state` comes from, named in its errors."""
    cache = cache_dir() / "text"
    options = raw.text_options or {}
    if state is not None:
        tokenizer = Tokenizer.from_state(state, source or "the checkpoint")
    else:
        tokenizer = fitted(x_train, {k: v for k, v in options.items() if k != "missing"},
                           options.get("missing", "error"), cache)
    for name, pair in (("val", val), ("test", test)):
        if pair is not None and not isinstance(pair[0], Texts):
            raise DataError(f"{name} inputs: expected texts as the training split has, got arrays")

    def ids(texts: Texts) -> RowView:
        return RowView(cached_ids(tokenizer, texts, cache))

    return (tokenizer, ids(x_train), *((ids(p[0]), p[1]) if p is not None else None for p in (val, test)))


def check_token_ids(splits: Splits, data: dict, layer: str, vocab_size: int) -> None:
    """What training would refuse at its first step, said before it: the inputs of the embedding `layer` (its key
    path) must be whole numbers in [0, vocab_size), after normalization."""
    for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if split is None:
            continue
        path = {"val": data.get("val_path"), "test": data.get("test_path")}.get(name) or data.get("path")
        where = f"{path}: {name} inputs" if path else f"{name} inputs"
        expected = f"{layer} takes token ids, integers in [0, {vocab_size - 1}]"
        low, high = math.inf, -math.inf
        for start in range(0, len(split.x), CHUNK):
            chunk = backend.to_numpy(split.x[start:start + CHUNK])
            fractions = np.argwhere(chunk != np.rint(chunk))
            if len(fractions):
                index = (start + int(fractions[0][0]), *(int(i) for i in fractions[0][1:]))
                value = float(chunk[tuple(fractions[0])])
                raise DataError(f"{where}: {expected}; got {value:g} at index {index}: an embedding's inputs are "
                                f"whole numbers")
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        if low < 0:
            raise DataError(f"{where}: {expected}; got values from {low:g} to {high:g}: token ids start at 0")
        if high >= vocab_size:
            raise DataError(f"{where}: {expected}; got values from {low:g} to {high:g}: set {layer}.vocab_size to "
                            f"at least {int(high) + 1}")
