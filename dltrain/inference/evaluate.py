"""Evaluating a checkpoint on a split: loss, accuracy, per-class precision / recall / F1, confusion matrix."""

from __future__ import annotations

from pathlib import Path

from .. import backend
from ..autograd import Tensor
from ..config import config_from_dict
from ..data import prepare
from ..errors import CheckpointError, ConfigError, DltrainError, RunDirError, ShapeError
from ..registry import losses
from ..training.checkpoint import load_checkpoint, resolve_checkpoint
from ..training.model import Model, build_for, checked_views
from .answers import to_target_units
from .eval_plots import write_plots
from .loading import load_onnx, note_views_not_exported

np = backend.np

SPLITS = ("test", "val", "train")


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


def _report(path, split: str, n: int, loss: float, predictions, targets, task: str, data: dict) -> dict:
    report = {"checkpoint": str(path), "split": split, "n": int(n), "loss": float(loss)}
    if task == "classification":
        matrix = confusion_matrix(predictions, targets, data["classes"])
        report["accuracy"] = float((predictions == targets).mean())
        report["per_class"] = per_class_scores(matrix, data.get("class_names"))
        report["confusion_matrix"] = matrix.tolist()
    elif task == "binary":
        report["accuracy"] = float((predictions == targets).mean())
    else:
        report.update(regression_scores(*(to_target_units(a, data) for a in (predictions, targets))))
    return report


def regression_scores(predictions, targets) -> dict:
    """MAE, RMSE and R² (the mean over target columns of 1 - residual / total sum of squares), in the data's units."""
    errors = predictions - targets
    total = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1 - (errors ** 2).sum(axis=0) / np.where(total > 0, total, np.nan)
    return {"mae": float(np.abs(errors).mean()), "rmse": float(np.sqrt((errors ** 2).mean())),
            "r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else None}


def _choose_split(splits, split: str):
    chosen = getattr(splits, split)
    if chosen is None:
        available = [s for s in SPLITS if getattr(splits, s) is not None]
        raise DltrainError(f"--split {split}: this data has no {split} split; available: {', '.join(available)}")
    return chosen


def evaluate_onnx(path: Path, split: str = "test", data_path: str | None = None, plots: Path | None = None) -> dict:
    """The same report for an exported model, run by onnxruntime on raw (unnormalized) inputs."""
    session, props, config, data = load_onnx(path, "evaluating")
    config = config_from_dict(config, f"{path} (config)")
    if data_path is not None:
        config.data["path"] = str(data_path)
    note_views_not_exported(config.data)
    task = Model.task_of(config)
    identity = {"mean": np.zeros((1,) * len(data["input_shape"])), "std": np.ones((1,) * len(data["input_shape"]))}
    splits = prepare(config.data, task, config.seed, "cpu", stats=identity,
                     expected_shape=tuple(data["input_shape"]), encoding=data.get("features"),
                     target_normalization=data.get("target_normalization"), text=data.get("text"),
                     text_source=str(path))
    chosen = _choose_split(splits, split)
    batch = config.training.eval_batch_size
    outputs = np.concatenate([session.run(None, {"input": np.asarray(chosen.x[i:i + batch], np.float32)})[0]
                              for i in range(0, len(chosen), batch)])
    loss_fn = losses.build(config.loss)
    if props.get("dltrain_outputs") == "probabilities":
        outputs = np.log(np.clip(outputs, 1e-30, None))  # log-probabilities act as logits for cross-entropy
    loss = float(loss_fn(Tensor(outputs.astype(np.float32)), chosen.y).data)
    report = _report(path, split, len(chosen), loss, loss_fn.predict(outputs), chosen.y, task, data)
    if plots is not None:
        report["plots"] = _plots(plots, task, loss_fn.predict(outputs), chosen.y, outputs, data, split, report)
    return report


def evaluate_checkpoint(path: str | Path, split: str = "test", data_path: str | None = None,
                        device: str = "cpu", batch_size: int | None = None, plots: Path | None = None,
                        views: list[str] | None = None) -> dict:
    """The report `dltrain eval` prints (and --json writes); with `plots`, the pictures of it in that folder.
    `views` replaces the config's data.test_time_augment ([]: the network's own predictions only)."""
    if Path(path).suffix == ".onnx":
        if views:
            raise ConfigError(f"{path}: test-time augmentation is not part of an exported ONNX graph; evaluate the "
                              f"checkpoint instead")
        return evaluate_onnx(Path(path), split, data_path, plots)
    ckpt = load_checkpoint(resolve_checkpoint(path))
    config = config_from_dict(ckpt.config, f"{ckpt.path} (config)")
    if data_path is not None:
        config.data["path"] = str(data_path)
    if views is not None:
        config.data["test_time_augment"] = checked_views(views, ckpt.data["input_shape"], "--tta")
    built = build_for(config, device, ckpt)
    chosen = _choose_split(built.splits, split)
    try:
        built.model.network.load_state_dict(ckpt.model)
    except ShapeError as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit the model in its config ({exc})") from None
    result = built.model.evaluate(chosen, batch_size or config.training.eval_batch_size, keep_outputs=plots is not None)
    report = _report(ckpt.path, split, len(chosen), result.loss, result.predictions, result.targets, built.model.task,
                     ckpt.data)
    if built.model.views:
        report["test_time_augment"] = built.model.views
    if plots is not None:
        report["plots"] = _plots(plots, built.model.task, result.predictions, result.targets, result.outputs, ckpt.data,
                                 split, report)
    return report


def _plots(directory, task, predictions, targets, outputs, data, split, report) -> dict:
    if task == "regression":
        predictions, targets = (to_target_units(a, data) for a in (predictions, targets))
    try:
        return write_plots(directory, task, predictions, targets, outputs, data, split, report.get("confusion_matrix"))
    except OSError as exc:
        raise RunDirError(f"--plots: cannot write into {directory}: {exc.strerror or exc}") from None
