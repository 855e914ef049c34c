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
import sys
import tempfile
from pathlib import Path

from ..data.images import DEFAULT_MAX_IMAGE_PIXELS
from ..data.inputs import InputSet
from ..data.tables import Cells
from ..errors import DataError
from .answers import escape_formula, output_columns, rows_of
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
