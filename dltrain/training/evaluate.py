"""Evaluating a checkpoint on a split: loss, accuracy, per-class precision / recall / F1, confusion matrix."""

from __future__ import annotations

from pathlib import Path

from .. import backend
from ..config import config_from_dict
from ..data import prepare
from ..errors import CheckpointError, DltrainError, ShapeError
from . import rundir as files
from .checkpoint import load_checkpoint
from .trainer import Model

np = backend.np

SPLITS = ("test", "val", "train")


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best checkpoint (its last one if no best was written)."""
    path = Path(path)
    if path.is_dir():
        for name in (files.BEST, files.LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no checkpoint in this directory (expected {files.BEST} or {files.LAST})")
    return path


def confusion_matrix(predictions, targets, classes: int):
    """Counts with rows = true class, columns = predicted class."""
    flat = targets.astype(np.int64) * classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def per_class_scores(matrix, class_names: list[str] | None) -> list[dict]:
    scores = []
    for c in range(len(matrix)):
        tp = int(matrix[c, c])
        predicted = int(matrix[:, c].sum())
        actual = int(matrix[c, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        scores.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": actual})
    return scores


def evaluate_checkpoint(path: str | Path, split: str = "test", data_path: str | None = None,
                        device: str = "cpu", batch_size: int | None = None) -> dict:
    """The report `dltrain eval` prints (and --json writes)."""
    ckpt = load_checkpoint(resolve_checkpoint(path))
    config = config_from_dict(ckpt.config, f"{ckpt.path} (config)")
    if data_path is not None:
        config.data["path"] = str(data_path)
    task = Model.task_of(config)
    try:
        splits = prepare(config.data, task, config.seed, device, stats=ckpt.normalization,
                         expected_shape=tuple(ckpt.data.get("input_shape", ())))
    except ShapeError as exc:
        raise ShapeError(f"{ckpt.path}: {exc}") from None
    chosen = getattr(splits, split)
    if chosen is None:
        available = [s for s in SPLITS if getattr(splits, s) is not None]
        raise DltrainError(f"--split {split}: this data has no {split} split; available: {', '.join(available)}")
    model = Model(config, splits.input_shape, ckpt.data.get("classes"), ckpt.data.get("target_width"))
    try:
        model.network.load_state_dict(ckpt.model)
    except ShapeError as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the model in its config ({exc})") from None
    model.network.to(device)
    result = model.evaluate(chosen, batch_size or config.training.eval_batch_size)
    report = {"checkpoint": str(ckpt.path), "split": split, "n": int(len(chosen)), "loss": result.loss}
    if task == "classification":
        matrix = confusion_matrix(result.predictions, result.targets, ckpt.data["classes"])
        report["accuracy"] = result.accuracy
        report["per_class"] = per_class_scores(matrix, ckpt.data.get("class_names"))
        report["confusion_matrix"] = matrix.tolist()
    elif result.accuracy is not None:
        report["accuracy"] = result.accuracy
    return report
