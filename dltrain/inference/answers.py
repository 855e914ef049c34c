"""A model's outputs as answers people read: the predicted class and its probability, the top k, every class's
probability (classification); the probability and label (binary); the values in the data's units (regression).
`dltrain predict` writes them as CSV or JSON lines; `dltrain serve` answers with them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .. import backend

if TYPE_CHECKING:
    from .loading import Predictor

np = backend.np


def to_target_units(values, data: dict):
    """Regression outputs or targets back in the units of the data (training standardizes them)."""
    norm = data.get("target_normalization")
    values = np.asarray(values, np.float64)
    return values if not norm else values * np.asarray(norm["std"]) + np.asarray(norm["mean"])


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


def class_probabilities(predictor: Predictor, outputs):
    """(probabilities (n, classes), classes best first (n, classes)) of a classifier's outputs: the first of equal
    outputs first, as eval's argmax."""
    probs = outputs if predictor.outputs_are_probabilities else _softmax(outputs)
    return probs, np.argsort(-outputs, axis=1, kind="stable")


def binary_probabilities(outputs):
    """(probabilities, predicted 0 or 1) of binary logits: the logit's sign decides, as eval."""
    return _sigmoid(outputs), (outputs > 0).astype(np.int64)


def binary_names(predictor: Predictor) -> list[str]:
    return predictor.class_names if predictor.class_names and len(predictor.class_names) == 2 else ["0", "1"]


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
        probs, order = class_probabilities(predictor, outputs)
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
        probs, predicted = binary_probabilities(outputs)
        names = binary_names(predictor)
        for i, input_id in enumerate(ids):
            row = {"input": input_id, **{k: v[i] for k, v in carried.items()}}
            suffixes = [""] if outputs.shape[1] == 1 else [f"_{j}" for j in range(outputs.shape[1])]
            for j, suffix in enumerate(suffixes):
                row[f"prediction{suffix}"] = names[predicted[i, j]]
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
