"""`dltrain eval --plots`: pictures of a model's test results.

    classification   confusion_matrix.png: counts, coloured by row-normalized rate (recall on the diagonal)
    binary           roc.png (with its AUC) and precision_recall.png (with its average precision)
    regression       predicted_vs_true.png and residuals.png (residual against prediction), in the data's units

The curves are computed here (numpy), the same way as scikit-learn's roc_curve, roc_auc_score and
average_precision_score (the tests compare them).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..training.rundir import atomic_write


def roc_curve(targets, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates), one point per distinct score, from (0, 0) to (1, 1)."""
    tp, fp, _ = _cumulative_counts(targets, scores)
    positives, negatives = tp[-1], fp[-1]
    tpr = np.concatenate([[0.0], tp / positives]) if positives else np.zeros(len(tp) + 1)
    fpr = np.concatenate([[0.0], fp / negatives]) if negatives else np.zeros(len(fp) + 1)
    return fpr, tpr


def auc(x, y) -> float:
    """Area under a curve by the trapezoidal rule."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def precision_recall_curve(targets, scores) -> tuple[np.ndarray, np.ndarray]:
    """(recalls, precisions) at each distinct score threshold, highest threshold first."""
    tp, fp, _ = _cumulative_counts(targets, scores)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / tp[-1] if tp[-1] else np.zeros_like(tp)
    return recall, precision


def average_precision(targets, scores) -> float:
    """Sum over thresholds of (recall gained) x precision, as scikit-learn's average_precision_score."""
    recall, precision = precision_recall_curve(targets, scores)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def _cumulative_counts(targets, scores):
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    scores = np.asarray(scores, np.float64)[order]
    positive = np.asarray(targets).reshape(-1)[order] > 0.5
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # ties share one threshold
    tp = np.cumsum(positive)[last_of_each].astype(np.float64)
    fp = (last_of_each + 1 - tp).astype(np.float64)
    return tp, fp, scores[last_of_each]


def write_plots(directory: Path, task: str, predictions, targets, outputs, data: dict, split: str,
                matrix=None) -> dict:
    """Write the plots for `task` into `directory` (`matrix`: the confusion matrix of a classification); returns
    name -> file, and the curves' areas."""
    import matplotlib  # noqa: PLC0415 (slow import, only with --plots)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written, figures = {}, {}

    def save(name: str, figure) -> None:
        buffer = io.BytesIO()
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        path = directory / f"{name}-{split}.png"
        atomic_write(path, buffer.getvalue())
        written[name] = str(path)

    if task == "classification":
        counts = np.asarray(matrix)
        classes = len(counts)
        names = data.get("class_names") or [str(c) for c in range(classes)]
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        size = max(5.0, 0.6 * classes + 2)
        figure, axes = plt.subplots(figsize=(size + 1, size))
        image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="rate (row-normalized)")
        for i in range(classes):
            for j in range(classes):
                axes.text(j, i, f"{counts[i, j]}\n{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if rates[i, j] > 0.5 else "black")
        axes.set_xticks(range(classes), names, rotation=45, ha="right")
        axes.set_yticks(range(classes), names)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_title(f"confusion matrix ({split}, {len(targets)} samples, accuracy "
                       f"{float(np.trace(counts) / max(counts.sum(), 1)):.4f})")
        save("confusion_matrix", figure)
    elif task == "binary":
        scores = np.asarray(outputs, np.float64).reshape(-1)
        labels = np.asarray(targets).reshape(-1)
        fpr, tpr = roc_curve(labels, scores)
        figures["roc_auc"] = auc(fpr, tpr)
        figure, axes = plt.subplots(figsize=(6, 6))
        axes.plot(fpr, tpr, label=f"AUC {figures['roc_auc']:.4f}")
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
        axes.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({split})")
        axes.legend(loc="lower right")
        save("roc", figure)
        recall, precision = precision_recall_curve(labels, scores)
        figures["average_precision"] = average_precision(labels, scores)
        figure, axes = plt.subplots(figsize=(6, 6))
        axes.step(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]), where="post",
                  label=f"average precision {figures['average_precision']:.4f}")
        axes.axhline(labels.mean(), linestyle="--", color="grey", label="chance")
        axes.set(xlabel="recall", ylabel="precision", title=f"precision-recall ({split})", ylim=(0, 1.02))
        axes.legend(loc="lower left")
        save("precision_recall", figure)
    else:
        predicted = np.asarray(predictions, np.float64).reshape(len(targets), -1)[:, 0]
        true = np.asarray(targets, np.float64).reshape(len(targets), -1)[:, 0]
        figure, axes = plt.subplots(figsize=(6, 6))
        axes.scatter(true, predicted, s=8, alpha=0.6)
        low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        axes.plot([low, high], [low, high], linestyle="--", color="grey", label="predicted = true")
        axes.set(xlabel="true", ylabel="predicted", title=f"predicted against true ({split})")
        axes.legend(loc="upper left")
        save("predicted_vs_true", figure)
        figure, axes = plt.subplots(figsize=(7, 4.5))
        axes.scatter(predicted, predicted - true, s=8, alpha=0.6)
        axes.axhline(0, linestyle="--", color="grey")
        axes.set(xlabel="predicted", ylabel="residual (predicted - true)", title=f"residuals ({split})")
        save("residuals", figure)
    return {"files": written, **figures}
