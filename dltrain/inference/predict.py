"""A trained model on new inputs: `dltrain predict MODEL INPUT...`.

The model is a run directory (its best checkpoint), a checkpoint, or an exported .onnx file (run by onnxruntime).
Inputs are prepared as the training data was (images converted to the trained channels and size, texts tokenized by
the stored tokenizer, the stored normalization applied) and streamed in batches; each row's output names the
predicted class and its probability (classification), the probability and label (binary), or the values
(regression). A CSV that has the model's label column keeps it, as `label` beside `prediction` (the cell as the file
has it), and the accuracy (or, regression, the MAE) of its rows with a label goes to stderr, one line per file.

Every cell is valid UTF-8: paths (and class names from folder names) that are not are written as readable_path()
writes them. Text is written as it is unless `escape_formulas`: then a text cell that a spreadsheet would run as a
formula (it begins with =, +, -, @, a tab or a carriage return, and is not a number) gets a ' before it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from pathlib import Path

from ..data.images import DEFAULT_MAX_IMAGE_PIXELS
from ..data.inputs import InputSet
from ..data.tables import Cells, is_missing, parse_number
from ..errors import DataError
from ..training.reporting import in_units
from .answers import binary_names, escape_formula, output_columns, rows_of
from .loading import Predictor, load_predictor


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
    scores = LabelScores(predictor)
    options = (fmt, top_k, probabilities, batch_size, skip_bad, progress, escape_formulas, scores)
    if out is None:
        _write_all(predictor, source, sys.stdout, *options)
        scores.report()
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
    scores.report()
    return source


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class LabelScores:
    """How the predictions of a CSV's rows compare with their labels, per file: the accuracy (classes) or the MAE in
    the data's units (regression) of the rows whose label is there (not empty, not NA)."""

    def __init__(self, predictor: Predictor):
        self.regression = predictor.task == "regression"
        self.names = set(binary_names(predictor) if predictor.task == "binary" else predictor.class_names or [])
        self.files: dict[str, list] = {}  # file -> [rows with a label, right answers or the sum of |error|]

    def add(self, rows: list[dict], labels: list[str], file: str) -> None:
        tally = self.files.setdefault(file, [0, 0.0])
        for row, label in zip(rows, labels):
            if is_missing(label) or "prediction" not in row:
                continue
            if self.regression:
                value = parse_number(label)
                if value is None:
                    continue
                tally[1] += abs(row["prediction"] - value)
            else:
                tally[1] += row["prediction"] == self._class_name(label)
            tally[0] += 1

    def _class_name(self, label: str) -> str:
        """A numeric label as the model names its class: '2.0' is class '2'."""
        number = parse_number(label)
        return str(int(number)) if label not in self.names and number is not None and number.is_integer() else label

    def report(self) -> None:
        for file, (n, total) in self.files.items():
            if n:
                figure = f"MAE {in_units(total / n)}" if self.regression else f"accuracy {total / n:.4f}"
                print(f"{figure} on {n} rows with labels ({file})", file=sys.stderr, flush=True)


def _write_all(predictor, source: InputSet, stream, fmt, top_k, probabilities, batch_size, skip_bad, progress,
               escape_formulas, scores: LabelScores):
    writer = None
    done = 0
    labelled = source.labelled()  # a label column from the first row, whichever CSV has the labels
    label_column = None  # 'label', or the label column's own name where the CSV has another column called label

    def cell(value):
        if isinstance(value, float):
            return repr(value)
        return escape_formula(value) if escape_formulas and isinstance(value, str) else value

    for batch in source.batches(batch_size, skip_bad):
        x = _encoded(predictor, batch) if isinstance(batch.x, list) else batch.x
        outputs = predictor.run(x)
        rows = rows_of(predictor, outputs, batch.ids, batch.carried, top_k, probabilities)
        if labelled and label_column is None:
            label_column = "label" if "label" not in batch.carried else predictor.label_column
        if batch.labels is not None:
            scores.add(rows, batch.labels, batch.ids[0].rsplit(":", 1)[0])
            for row, label in zip(rows, batch.labels):
                row[label_column] = label
        if fmt == "jsonl":
            for row in rows:
                stream.write(json.dumps(row) + "\n")
        else:
            if writer is None:
                columns = output_columns(predictor, top_k, probabilities, outputs.shape[1], list(batch.carried))
                if label_column is not None:  # beside the prediction, for comparing by eye
                    columns.insert(columns.index("prediction") + 1 if "prediction" in columns else len(columns),
                                   label_column)
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
