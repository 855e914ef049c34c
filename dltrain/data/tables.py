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


def read_table(path: Path, label_column: str | None, ignore: list[str] = ()) -> tuple[Cells, list[str] | None]:
    """(feature cells, label texts or None) of a CSV with a header row; the label column and the `ignore`d ones
    (identifiers, notes) are left out of the cells."""
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
    if label_column is not None and label_column not in header:
        raise DataError(f"{path}:1: no label column {label_column!r} in the header; columns: {', '.join(header)} "
                        "(set data.label_column)")
    absent = [name for name in ignore if name not in header]
    if absent:
        raise DataError(f"{path}:1: data.ignore_columns names {', '.join(map(repr, absent))}, not in the header; "
                        f"columns: {', '.join(header)}")
    label_index = header.index(label_column) if label_column is not None else None
    keep = [i for i in range(len(header)) if i != label_index and header[i] not in ignore]
    values, labels, where = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} columns as in the header, got {len(row)}")
        values.append([row[i].strip() for i in keep])
        where.append(f"{path}:{line}")
        if label_index is not None:
            labels.append(row[label_index].strip())
    return Cells(values, [header[i] for i in keep], where), (labels if label_index is not None else None)


def parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING


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
            present = [row[j] for row in cells.values if not is_missing(row[j])]
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
        positions = [cells.names.index(c["name"]) for c in self.columns]
        out = np.zeros((len(cells), self.width), np.float64)
        for column, j in zip(self.columns, positions):
            start = self._offset(column)
            if column["kind"] == "number":
                for i, row in enumerate(cells.values):
                    out[i, start] = self._number(row[j], column, cells.where[i])
            else:
                lookup = {name: k for k, name in enumerate(column["categories"])}
                for i, row in enumerate(cells.values):
                    k = lookup.get(row[j])
                    if k is not None:
                        out[i, start + k] = 1.0
                    elif is_missing(row[j]):
                        self._missing(column, cells.where[i])
                    elif self.unknown_category == "error":
                        seen = ", ".join(column["categories"][:10]) + (", ..." if len(column["categories"]) > 10
                                                                       else "")
                        raise DataError(f"{cells.where[i]}: column {column['name']!r} has {row[j]!r}, a category "
                                        f"not seen in training (seen: {seen}); data.unknown_category: zeros encodes "
                                        f"it as all zeros (an identifier column? list it in data.ignore_columns)")
        return out

    def _offset(self, column: dict) -> int:
        offset = 0
        for c in self.columns:
            if c is column:
                return offset
            offset += 1 if c["kind"] == "number" else len(c["categories"])
        raise ValueError(column["name"])

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
