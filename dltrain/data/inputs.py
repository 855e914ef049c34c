"""New inputs for a trained model, read in batches: image files and folders, CSV, .npz and IDX files; for a model
trained on text, text files and folders of them, a CSV's text columns, and lines on standard input ('-').

Each source yields Batches of raw inputs shaped as the model's training inputs (before normalization), with what
identifies each row in the output: the file path or row number, a CSV's other columns, and its label column's cells
where it has one. Paths are written as readable_path() writes them: every name a file system holds, as valid UTF-8
text that maps back to it.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import backend
from ..errors import DataError, ShapeError
from .files import read_idx, read_npz
from .images import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_SUFFIXES, decode_image, image_files
from .tables import read_csv
from .text import Tokenizer, decode_text, missing_texts, read_text_file, text_files

np = backend.np


@dataclass
class Batch:
    x: object  # host array (n, *input_shape): uint8 pixels or float64 values
    ids: list[str]  # the file path, or "FILE:ROW" for rows of a table or array, as readable_path() writes them
    carried: dict = field(default_factory=dict)  # column name -> values (a CSV's columns the model does not read)
    labels: list[str] | None = None  # a CSV's label cells (stripped), where it has the model's label column


@dataclass
class Skipped:
    path: str
    reason: str


_SURROGATE = re.compile("[\ud800-\udfff]")


def readable_path(path) -> str:
    """A path as text that any UTF-8 output holds and that maps back to the exact name: each byte of the name that
    is not UTF-8 (Python holds byte N as the lone surrogate U+DC00 + N) becomes \\xNN and a backslash becomes
    \\\\, so codecs.escape_decode(text.encode())[0] gives the name's bytes back. Names that are UTF-8 without
    backslashes, nearly all of them, are written as they are."""
    text = os.fspath(path).replace("\\", "\\\\")
    return _SURROGATE.sub(lambda m: f"\\x{ord(m[0]) - 0xDC00:02x}" if ord(m[0]) >= 0xDC80 else f"\\u{ord(m[0]):04x}",
                          text)


class InputSet:
    """The inputs named on the command line, in order; `len()` counts the rows to predict. Images of more than
    `max_image_pixels` pixels are refused (predict's --max-image-pixels) before they are decoded. With a `tokenizer`
    (the model was trained on text) the inputs are texts, tokenized by it: text files, folders of them, CSV files
    with the text column(s) the model was trained on (a text_folder's model: a column named 'text'), and '-' for
    lines on standard input, each line one text."""

    def __init__(self, paths: list[Path], input_shape: tuple, feature_names: list[str] | None, label: str | None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, tokenizer: Tokenizer | None = None):
        self.input_shape, self.feature_names, self.label = tuple(input_shape), feature_names, label
        self.max_image_pixels, self.tokenizer = max_image_pixels, tokenizer
        self.sources = []  # (kind, path, items)
        for path in paths:
            if tokenizer is not None:
                self.sources.append(self._text_source(path))
            elif str(path) == "-":
                raise DataError("-: standard input gives lines of text, but this model was not trained on text")
            elif path.is_dir():
                found = image_files(path)
                if not found:
                    raise DataError(f"{path}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
                self.sources.append(("images", path, found))
            elif not path.exists():
                raise DataError(f"{path}: no such file or folder")
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                self.sources.append(("images", path, [path]))
            elif path.suffix.lower() == ".csv":
                self.sources.append(("csv", path, None))
            elif path.suffix.lower() == ".npz":
                self.sources.append(("npz", path, None))
            elif "idx" in path.name or path.name.endswith("-ubyte") or path.name.endswith("-ubyte.gz"):
                self.sources.append(("idx", path, None))
            else:
                raise DataError(f"{path}: not an input dltrain reads (expected images ({', '.join(IMAGE_SUFFIXES)}) "
                                f"or folders of them, .csv, .npz or IDX files)")
        images = next((path for kind, path, _ in self.sources if kind == "images"), None)
        self.image_format = image_format(self.input_shape, images) if images else None
        self.skipped: list[Skipped] = []

    def _text_source(self, path: Path) -> tuple:
        columns = self.tokenizer.columns or ["text"]
        if str(path) == "-" or (path.is_file() and path.suffix.lower() != ".csv") or path.is_dir():
            if len(columns) > 1:
                raise DataError(f"{path}: this model reads {len(columns)} text columns ({', '.join(columns)}); give "
                                "a CSV file with those columns")
        if str(path) == "-":
            return ("stdin", path, None)
        if path.is_dir():
            found = text_files(path)
            if not found:
                raise DataError(f"{path}: no text files in this folder")
            return ("texts", path, found)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.suffix.lower() == ".csv":
            return ("text_csv", path, None)
        if path.suffix.lower() == ".npz":
            return ("npz", path, None)
        return ("texts", path, [path])

    def labelled(self) -> bool:
        """Whether a CSV among the inputs has the model's label column (read from its header line alone), so that
        predict's output has a `label` column from its first row, whichever file comes first."""
        if self.label is None:
            return False
        for kind, path, _ in self.sources:
            if kind in ("csv", "text_csv"):
                try:
                    with open(path, newline="", encoding="utf-8-sig") as f:
                        header = next(csv.reader(f), [])
                except (OSError, UnicodeDecodeError, csv.Error):
                    continue  # reading it for its rows says what is wrong
                if self.label in (name.strip() for name in header):
                    return True
        return False

    def count(self) -> int | None:
        """Rows to predict where known without reading (images, text files); None when a table or standard input
        must be read to know."""
        if all(kind in ("images", "texts") for kind, *_ in self.sources):
            return sum(len(items) for *_, items in self.sources)
        return None

    def batches(self, size: int, skip_bad: bool = False) -> Iterator[Batch]:
        """Batches of up to `size` inputs, in order; the files of consecutive image (or text) arguments share
        batches, so that `predict RUN *.png` runs as few forward passes as `predict RUN folder/`."""
        for kind, path, items in self._merged_files():
            if kind == "images":
                yield from self._images(items, size, skip_bad)
            elif kind == "texts":
                yield from self._texts(items, size, skip_bad)
            elif kind == "stdin":
                yield from self._stdin(size, skip_bad)
            elif kind == "text_csv":
                yield from self._text_csv(path, size, skip_bad)
            else:
                x, ids, carried, labels = {"csv": self._csv, "npz": self._npz, "idx": self._idx}[kind](path)
                ids = [readable_path(row_id) for row_id in ids]
                for start in range(0, len(x), size):
                    yield Batch(x[start:start + size], ids[start:start + size],
                                {k: v[start:start + size] for k, v in carried.items()},
                                labels[start:start + size] if labels is not None else None)

    def _merged_files(self) -> list[tuple]:
        merged = []
        for kind, path, items in self.sources:
            if kind in ("images", "texts") and merged and merged[-1][0] == kind:
                merged[-1] = (kind, merged[-1][1], merged[-1][2] + items)
            else:
                merged.append((kind, path, list(items) if items is not None else None))
        return merged

    def _read_files(self, files: list[Path], size: int, skip_bad: bool, read) -> Iterator[tuple[list, list[str]]]:
        """(what `read(path)` gave, readable names) of up to `size` files at a time; with skip_bad a file `read`
        refuses is listed in self.skipped and left out."""
        for start in range(0, len(files), size):
            values, ids = [], []
            for path in files[start:start + size]:
                try:
                    values.append(read(path))
                except DataError as exc:
                    if not skip_bad:
                        raise
                    self.skipped.append(Skipped(readable_path(path), str(exc)))
                    continue
                ids.append(readable_path(path))
            if ids:
                yield values, ids

    def _images(self, files: list[Path], size: int, skip_bad: bool) -> Iterator[Batch]:
        channels, hw = self.image_format
        def decode(path):
            return decode_image(path, channels, hw, self.max_image_pixels, "--max-image-pixels")
        for pixels, ids in self._read_files(files, size, skip_bad, decode):
            yield Batch(np.stack(pixels).reshape(len(ids), *self.input_shape), ids)

    def _tokenized(self, rows: list, ids: list[str], carried: dict | None = None) -> Batch:
        return Batch(self.tokenizer.encode(rows).reshape(len(rows), *self.input_shape), ids, carried or {})

    def _texts(self, files: list[Path], size: int, skip_bad: bool) -> Iterator[Batch]:
        def read(path):
            return (read_text_file(path, self.tokenizer.head),)  # as far as max_length needs
        for rows, ids in self._read_files(files, size, skip_bad, read):
            yield self._tokenized(rows, ids)

    def _stdin(self, size: int, skip_bad: bool) -> Iterator[Batch]:
        """Each line of standard input one text (UTF-8, its line break dropped), named -:LINE; the text is carried
        into the output's `text` column. An empty line is passed over (no output row, not an error: a blank line
        between texts or at the end); a line of only white space is an error (or with skip_bad skipped)."""
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text stream without bytes beneath (a test's StringIO)
            stream = (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        rows, ids = [], []
        for number, data in enumerate(stream, start=1):
            data = data.rstrip(b"\r\n")
            if not data:
                continue
            try:
                text = decode_text(data, f"-:{number}", "line")
            except DataError as exc:
                if not skip_bad:
                    raise
                self.skipped.append(Skipped(f"-:{number}", str(exc)))
                continue
            rows.append((text,))
            ids.append(f"-:{number}")
            if len(rows) == size:
                yield self._tokenized(rows, ids, {"text": [row[0] for row in rows]})
                rows, ids = [], []
        if rows:
            yield self._tokenized(rows, ids, {"text": [row[0] for row in rows]})

    def _text_csv(self, path: Path, size: int, skip_bad: bool) -> Iterator[Batch]:
        """A CSV's text columns (found by name) tokenized as in training, missing texts as the stored data.missing
        says; its other columns carried into the output."""
        table = read_csv(path)
        header = table.header
        columns = self.tokenizer.columns or ["text"]
        absent = [name for name in columns if name not in header]
        if absent:
            raise DataError(f"{path}:1: missing the text column(s) the model was trained on: {', '.join(absent)} "
                            f"(found: {', '.join(header)})")
        position = [header.index(name) for name in columns]
        other = [i for i, name in enumerate(header) if i not in position and name != self.label]
        label = header.index(self.label) if self.label in header else None
        rows, lines = table.data_rows()
        for start in range(0, len(rows), size):
            texts, ids, kept = [], [], []
            for row, line in zip(rows[start:start + size], lines[start:start + size]):
                where = f"{path}:{line}"
                try:
                    texts.append(missing_texts(tuple(row[j].strip() for j in position), columns,
                                               self.tokenizer.missing, where))
                except DataError as exc:
                    if not skip_bad:
                        raise
                    self.skipped.append(Skipped(readable_path(where), str(exc)))
                    continue
                ids.append(readable_path(where))
                kept.append(row)
            if ids:
                batch = self._tokenized(texts, ids, {header[i]: [row[i] for row in kept] for i in other})
                batch.labels = [row[label].strip() for row in kept] if label is not None else None
                yield batch

    def _csv(self, path: Path):
        if not self.feature_names:
            raise DataError(f"{path}: this model was not trained on a CSV (it has no feature columns to find by name)")
        table = read_csv(path)  # training's reader: the same byte-order mark, header and row checks
        header = table.header
        position = {name: i for i, name in enumerate(header)}
        missing = [name for name in self.feature_names if name not in position]
        if missing:
            raise DataError(f"{path}:1: missing the column(s) the model was trained on: {', '.join(missing)} "
                            f"(found: {', '.join(header)})")
        columns = [position[name] for name in self.feature_names]
        features = set(columns)
        other = [i for i, name in enumerate(header) if i not in features and name != self.label]
        rows, lines = table.data_rows()
        values = [list(map(str.strip, map(row.__getitem__, columns))) for row in rows]  # stripped as in training
        carried = {header[i]: [row[i] for row in rows] for i in other}
        label = position.get(self.label)
        labels = [row[label].strip() for row in rows] if label is not None else None
        return values, [f"{path}:{line}" for line in lines], carried, labels

    def _npz(self, path: Path):
        arrays = read_npz(path)
        if "x" not in arrays:
            raise DataError(f"{path}: expected an array 'x' in the .npz, found {', '.join(arrays) or 'none'}")
        x = self._shaped(arrays["x"], path)
        return x, [f"{path}:{i}" for i in range(len(x))], {}, None

    def _idx(self, path: Path):
        x = self._shaped(read_idx(path), path)
        return x, [f"{path}:{i}" for i in range(len(x))], {}, None

    def _shaped(self, x, path: Path):
        """x as (n, *input_shape): the same shape, or one that differs only by axes of size 1 ((n, 28, 28) for
        (1, 28, 28))."""
        if x.dtype.kind not in "biuf":
            raise DataError(f"{path}: expected numbers, got dtype {x.dtype}")
        sample = tuple(x.shape[1:])
        if sample != self.input_shape and squeezed(sample) != squeezed(self.input_shape):
            raise ShapeError(f"{path}: the model expects inputs of per-sample shape {self.input_shape}, found "
                             f"{sample}")
        return x.reshape(len(x), *self.input_shape)


def squeezed(shape: tuple) -> tuple:
    """The shape without its axes of size 1: (1, 28, 28) and (28, 28) take the same inputs."""
    return tuple(d for d in shape if d != 1)


def image_format(input_shape: tuple, path: Path) -> tuple[int, tuple[int, int]]:
    """(channels, (height, width)) that images must be converted to for a model with this input shape."""
    if len(input_shape) == 3 and input_shape[0] in (1, 3):
        return input_shape[0], tuple(input_shape[1:])
    if len(input_shape) == 2:
        return 1, tuple(input_shape)
    raise ShapeError(f"{path}: the model expects inputs of per-sample shape {input_shape}, not images (images "
                     f"convert to (1 or 3 channels, height, width) or (height, width))")
