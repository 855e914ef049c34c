"""CSV files as users have them: word labels, categorical columns, missing values.

A table is read as text (Cells). Its labels become classes when any is not a number (class names sorted, stored in
the checkpoint). Its feature columns are encoded by a TableEncoding learned from the training split alone, after
the validation split is held out, and stored in the checkpoint, so eval and predict encode new rows the same way:

    a column whose every present training value is a number   -> one input (a missing value: an error, or with
                                                                 data.missing: mean the training mean)
    any other column                                           -> one-hot over the categories seen in training,
                                                                 sorted (an unseen one: an error, or with
                                                                 data.unknown_category: zeros all zeros)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from .. import backend
from ..errors import DataError

np = backend.np

MISSING = {"", "na", "n/a", "nan", "null", "none"}  # compared stripped and lower-cased, as pandas reads them


@dataclass
class Cells:
    """A table's feature cells as text, with where each row came from ('FILE:LINE')."""

    values: list  # rows of strings
    names: list[str]
    where: list[str]

    def __len__(self) -> int:
        return len(self.values)

    def take(self, indices) -> Cells:
        return Cells([self.values[i] for i in indices], self.names, [self.where[i] for i in indices])


@dataclass
class CsvRows:
    """A CSV file's header, and its rows as the file has them (checked when read: `data_rows`)."""

    path: Path
    header: list[str]  # the column names, stripped
    rows: list[list[str]]  # after the header

    def data_rows(self) -> tuple[list[list[str]], list[int]]:
        """(rows, their line numbers): blank rows left out, each as wide as the header."""
        kept, lines = [], []
        for line, row in enumerate(self.rows, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(self.header):
                raise DataError(f"{self.path}:{line}: expected {len(self.header)} columns as in the header, got "
                                f"{len(row)}")
            kept.append(row)
            lines.append(line)
        return kept, lines


def read_csv(path: Path) -> CsvRows:
    """The one CSV reader of training and predicting, so that a file reads the same in both: UTF-8 with or without
    a byte-order mark, a header row of distinct names, then rows as wide as the header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"{path}: data file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty CSV file (expected a header row and data rows)")
    header = [h.strip() for h in rows[0]]
    _refuse_duplicate_names(path, header)
    return CsvRows(path, header, rows[1:])


def _refuse_duplicate_names(path: Path, header: list[str]) -> None:
    """Columns are found by name: a repeated name would hide one of its columns (or read a second label column as
    a feature)."""
    numbers: dict[str, list[int]] = {}
    for number, name in enumerate(header, start=1):
        numbers.setdefault(name, []).append(number)
    repeated = [f"{name!r} (columns {', '.join(map(str, found[:-1]))} and {found[-1]})"
                for name, found in numbers.items() if len(found) > 1]
    if repeated:
        raise DataError(f"{path}:1: duplicate column names in the header: {', '.join(repeated)}; give each column "
                        "its own name")


def read_table(path: Path, label_column: str | None, ignore: list[str] = ()) -> tuple[Cells, list[str] | None]:
    """(feature cells, label texts or None) of a CSV with a header row; the label column and the `ignore`d ones
    (identifiers, notes) are left out of the cells."""
    table = read_csv(path)
    header = table.header
    if label_column is not None and label_column not in header:
        raise DataError(f"{path}:1: no label column {label_column!r} in the header; columns: {', '.join(header)} "
                        "(set data.label_column)")
    names, ignored = set(header), set(ignore)
    absent = [name for name in ignore if name not in names]
    if absent:
        raise DataError(f"{path}:1: data.ignore_columns names {', '.join(map(repr, absent))}, not in the header; "
                        f"columns: {', '.join(header)}")
    label_index = header.index(label_column) if label_column is not None else None
    keep = [i for i, name in enumerate(header) if i != label_index and name not in ignored]
    rows, lines = table.data_rows()
    values = [list(map(str.strip, map(row.__getitem__, keep))) for row in rows]  # C loops: 20M cells
    labels = [row[label_index].strip() for row in rows] if label_index is not None else None
    return Cells(values, [header[i] for i in keep], [f"{path}:{line}" for line in lines]), labels


def parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING


def _finite_numbers(texts: list[str]):
    """The texts as a float64 array when every one is a finite number, else None. NumPy parses each as float()
    does, in one call instead of one Python call per cell (a 2,000 x 10,000 table has 20 million); a missing value
    ('', 'NA', 'nan', ...) is never one, so the cell-by-cell path handles those."""
    try:
        numbers = np.array(texts, dtype=np.float64)
    except (ValueError, TypeError):
        return None
    return numbers if np.isfinite(numbers).all() else None


def labels_to_array(labels: list[str], where: list[str], class_names: list[str] | None):
    """Numeric labels as numbers (classes or targets); word labels as class indices into `class_names` (the sorted
    training labels when None). Returns (labels, class names or None)."""
    numbers = [parse_number(text) for text in labels]
    if class_names is None and all(n is not None for n in numbers):
        return np.asarray(numbers, np.float64), None
    if class_names is None:
        missing = next((i for i, text in enumerate(labels) if is_missing(text)), None)
        if missing is not None:
            raise DataError(f"{where[missing]}: the label is missing")
        class_names = sorted(set(labels))
    index = {name: i for i, name in enumerate(class_names)}
    unknown = next((i for i, text in enumerate(labels) if text not in index), None)
    if unknown is not None:
        raise DataError(f"{where[unknown]}: label {labels[unknown]!r} is not one of the training classes "
                        f"({', '.join(class_names)})")
    return np.asarray([index[text] for text in labels], np.int64), class_names


class TableEncoding:
    """How a table's feature columns become numbers; learned from the training split, stored in checkpoints."""

    def __init__(self, columns: list[dict], missing: str = "error", unknown_category: str = "error"):
        self.columns, self.missing, self.unknown_category = columns, missing, unknown_category

    @classmethod
    def fit(cls, cells: Cells, missing: str = "error", unknown_category: str = "error") -> TableEncoding:
        columns = []
        for j, name in enumerate(cells.names):
            texts = list(map(itemgetter(j), cells.values))
            numbers = _finite_numbers(texts)
            if numbers is not None:  # the common case, parsed in one call: all numbers, none missing
                mean = float(np.mean(numbers)) if len(numbers) else 0.0
                columns.append({"name": name, "kind": "number", "mean": mean})
                continue
            present = [text for text in texts if not is_missing(text)]
            numbers = [parse_number(text) for text in present]
            if all(n is not None for n in numbers):
                columns.append({"name": name, "kind": "number",
                                "mean": float(np.mean(numbers)) if numbers else 0.0})
            else:
                columns.append({"name": name, "kind": "category", "categories": sorted(set(present))})
        return cls(columns, missing, unknown_category)

    @property
    def feature_names(self) -> list[str]:
        return [c["name"] for c in self.columns]

    @property
    def width(self) -> int:
        return sum(1 if c["kind"] == "number" else len(c["categories"]) for c in self.columns)

    def transform(self, cells: Cells):
        """float64 array (rows, width); errors name the row (FILE:LINE) and the column."""
        position = {name: j for j, name in enumerate(cells.names)}  # found by name: one pass, not one per column
        out = np.zeros((len(cells), self.width), np.float64)
        start = 0
        for column in self.columns:
            j = position[column["name"]]
            texts = list(map(itemgetter(j), cells.values))
            numbers = _finite_numbers(texts) if column["kind"] == "number" else None
            if numbers is not None:
                out[:, start] = numbers
            elif column["kind"] == "number":
                for i, text in enumerate(texts):
                    out[i, start] = self._number(text, column, cells.where[i])
            else:
                lookup = {name: k for k, name in enumerate(column["categories"])}
                for i, text in enumerate(texts):
                    k = lookup.get(text)
                    if k is not None:
                        out[i, start + k] = 1.0
                    elif is_missing(text):
                        self._missing(column, cells.where[i])
                    elif self.unknown_category == "error":
                        seen = ", ".join(column["categories"][:10]) + (", ..." if len(column["categories"]) > 10
                                                                       else "")
                        raise DataError(f"{cells.where[i]}: column {column['name']!r} has {text!r}, a category "
                                        f"not seen in training (seen: {seen}); data.unknown_category: zeros encodes "
                                        f"it as all zeros (an identifier column? list it in data.ignore_columns)")
            start += 1 if column["kind"] == "number" else len(column["categories"])
        return out

    def _number(self, text: str, column: dict, where: str) -> float:
        if is_missing(text):
            self._missing(column, where)
            return column["mean"]
        value = parse_number(text)
        if value is None:
            raise DataError(f"{where}: column {column['name']!r}: expected a number, got {text!r}")
        return value

    def _missing(self, column: dict, where: str) -> None:
        if self.missing == "error":
            fill = "the training mean" if column["kind"] == "number" else "all zeros"
            raise DataError(f"{where}: column {column['name']!r} has a missing value; data.missing: mean fills it "
                            f"with {fill}")

    def state(self) -> dict:
        return {"columns": self.columns, "missing": self.missing, "unknown_category": self.unknown_category}

    @classmethod
    def from_state(cls, state: dict) -> TableEncoding:
        return cls(state["columns"], state["missing"], state["unknown_category"])
