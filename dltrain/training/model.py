"""A built network and the loss it trains with: outputs, losses, predictions and evaluation on a split.

`build_for(config)` is the one road from a config to its data and model (task -> data -> output width -> Model),
taken by training, evaluation, `dltrain graph` and `dltrain info` alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import backend
from ..autograd import Tensor, no_grad
from ..config import Config
from ..data import Split, Splits, prepare
from ..data.splits import blank_value, check_token_ids
from ..errors import ConfigError, DataError, ShapeError
from ..functional import log_softmax
from ..functional.loss import _softplus
from ..layers import Sequential, Softmax, build_model
from ..layers.core import format_shape, run_layers
from ..registry import losses

np = backend.np


def _shifted(x, down: int, right: int, fill: float):
    """x moved by one pixel (down, right: -1, 0 or 1); the uncovered row or column holds `fill`, as random_crop's
    padding does in training."""
    height, width = x.shape[-2:]
    padded = backend.array_module(x).pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=fill)
    return padded[..., 1 - down:1 - down + height, 1 - right:1 - right + width]


# data.test_time_augment: the views of a batch of images (N, C, H, W) whose predictions are averaged with its own;
# each takes the batch and the normalized value of a blank pixel.
TEST_TIME_VIEWS = {
    "horizontal_flip": lambda x, fill: x[..., ::-1],
    "vertical_flip": lambda x, fill: x[..., ::-1, :],
    "shift_up": lambda x, fill: _shifted(x, -1, 0, fill),
    "shift_down": lambda x, fill: _shifted(x, 1, 0, fill),
    "shift_left": lambda x, fill: _shifted(x, 0, -1, fill),
    "shift_right": lambda x, fill: _shifted(x, 0, 1, fill),
}


def checked_views(views, input_shape: tuple, where: str) -> list[str]:
    """Test-time views, each once, known and on images; `where` names the setting in errors (key or flag)."""
    views = list(dict.fromkeys(views or []))
    for name in views:
        if name not in TEST_TIME_VIEWS:
            raise ConfigError(f"{where}: unknown view {name!r}; expected one of {', '.join(TEST_TIME_VIEWS)}")
    if views and len(input_shape) != 3:
        raise ConfigError(f"{where}: {', '.join(views)}: views of images (batch, channels, height, width); this "
                          f"data's inputs are {format_shape(tuple(input_shape))}")
    return views


@dataclass
class Evaluation:
    loss: float
    accuracy: float | None
    predictions: object  # host array
    targets: object  # host array
    outputs: object = None  # host array of the network's outputs, when asked for (ROC curves)
    error_sums: object = None  # regression: error_sums() of the split, which ranks add up
    mae: float | None = None  # regression: in the data's units
    r2: float | None = None


def error_sums(predictions, targets):
    """Regression's sums (float64, rows: |error|, error², target, target²; a column per target) in the units the
    model trains in; summed over MPI ranks' shards they give the whole split's MAE and R² (regression_figures)."""
    errors = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
    targets = np.asarray(targets, np.float64)
    return np.stack([np.abs(errors).sum(axis=0), (errors ** 2).sum(axis=0), targets.sum(axis=0),
                     (targets ** 2).sum(axis=0)])


def regression_figures(sums, n: int, target_normalization: dict | None) -> tuple[float | None, float | None]:
    """(MAE in the data's units, R²) from error_sums over n samples, as `dltrain eval` reports them: the MAE over
    every target value, R² the mean over target columns of 1 - residual / total sum of squares (None where no column
    varies). Targets train standardized (mean 0, so the sums lose no precision); R² does not change with the units."""
    if n == 0:
        return None, None
    absolute, squared, total, total_squared = sums
    std = np.asarray(target_normalization["std"], np.float64) if target_normalization else np.ones(len(absolute))
    variation = total_squared - total ** 2 / n
    varies = variation > 1e-12 * total_squared  # a constant column leaves only rounding
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(varies, 1 - squared / variation, np.nan)
    mae = float((absolute * std).sum() / (n * len(absolute)))
    return mae, float(np.nanmean(r2)) if np.isfinite(r2).any() else None


class Model:
    """A built network plus the loss it trains with: one place that knows how outputs become losses and predictions.

    A final softmax layer before a cross_entropy loss is skipped for training and prediction
    (cross_entropy takes logits, and argmax is the same), so the tutorial's
    Linear-ReLU-Linear-Softmax model trains stably.
    """

    def __init__(self, config: Config, input_shape: tuple[int, ...], classes: int | None, target_width: int | None,
                 blank: float = 0.0, data: dict | None = None):
        data = data or {}
        # token ids equal to padding_id are padding: input_tensor marks them, layers that read time steps skip them
        self.padding_id = data.get("padding_id")
        self.network: Sequential = build_model(config.model, input_shape, data)
        self.loss = losses.build(config.loss)
        self.task = self.loss.task
        last = self.network.layers[-1]
        self.skips_softmax = isinstance(last, Softmax) and config.loss["name"] == "cross_entropy"
        self._check_output(classes, target_width)
        self.views = checked_views(config.data.get("test_time_augment"), input_shape, "data.test_time_augment")
        self.blank = blank  # a raw 0 after normalization: what a shifted view's uncovered pixels hold
        self.target_normalization = None  # regression: the targets' mean and std (build_for), for the data's units

    @staticmethod
    def task_of(config: Config) -> str:
        """'classification', 'binary' or 'regression': what the config's loss trains."""
        return losses.get(config.loss["name"]).task

    def _check_output(self, classes, target_width) -> None:
        out = self.network.output_shape
        last = self.network.layers[-1]
        expected = (classes,) if self.task == "classification" else (target_width,)
        if out != expected:
            what = f"{classes} classes" if self.task == "classification" else f"targets of width {target_width}"
            raise ShapeError(f"{last.path}: the model's output {format_shape(out)} does not fit the data's {what}; "
                             f"loss {self.loss.registry_name!r} expects {format_shape(expected)}")

    def input_tensor(self, x) -> Tensor:
        """A batch of inputs as the network takes it: the one place a batch becomes a Tensor, so that token ids
        (batch, time) carry their padding mask (True where x == the data's padding id; see layers/module.py)."""
        tensor = Tensor(x)
        if self.padding_id is not None and x.ndim == 2:
            tensor.padding_mask = x == self.padding_id
        return tensor

    def outputs(self, x: Tensor, watch=None) -> Tensor:
        """The outputs the loss takes; `watch(layer, output)` sees every layer's output (gradient logging)."""
        return run_layers(self.network.layers[:-1] if self.skips_softmax else self.network.layers, x, watch)

    def predict_outputs(self, x) -> Tensor:
        """What evaluation and prediction take from a batch (the caller sets eval mode and no_grad): the network's
        outputs, or with data.test_time_augment the average over the batch and each view of it: of the class
        probabilities (returned as log-probabilities, which the loss and argmax take as logits), of the sigmoid
        probabilities (returned as their logit), or of the values (regression)."""
        out = self.outputs(self.input_tensor(x))
        if not self.views:
            return out
        xp = backend.array_module(x)
        outs = [out.data] + [self.outputs(self.input_tensor(xp.ascontiguousarray(TEST_TIME_VIEWS[name](x, self.blank))))
                             .data for name in self.views]
        return Tensor(average_outputs(xp.stack(outs), self.task))

    def count_correct(self, outputs, targets, counter) -> None:
        """counter (a 0-d int64 device array) += the number of predictions that are right; nothing for regression."""
        if self.task == "classification" and targets.ndim == 2:  # class probabilities (mixup): their argmax
            targets = backend.array_module(targets).argmax(targets, axis=1)
        if self.task != "regression":
            self.loss.add_correct(outputs, targets, counter)

    def evaluate(self, split: Split, batch_size: int, keep_outputs: bool = False) -> Evaluation:
        """Loss (sample-weighted mean), accuracy and predictions on a whole split, in eval mode.
        Losses and predictions stay on the device until the end: one transfer, not one per batch."""
        was_training = self.network.training
        self.network.eval()
        xp = backend.array_module(split.y)  # split.x may be read batch by batch (image folders)
        losses, sizes, predictions, outputs = [], [], [], []
        try:  # a model with huge weights reports an infinite or NaN loss, without NumPy's warnings
            with no_grad(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for start in range(0, len(split), batch_size):
                    x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
                    out = self.predict_outputs(x)
                    losses.append(self.loss(out, y).data)
                    sizes.append(len(x))
                    predictions.append(self.loss.predict(out.data))
                    if keep_outputs:
                        outputs.append(out.data)
        finally:
            self.network.train(was_training)
        weighted = xp.stack(losses).astype(xp.float64) * xp.asarray(sizes, dtype=xp.float64)
        total_loss = float(weighted.sum())
        predictions = backend.to_numpy(xp.concatenate(predictions))
        targets = backend.to_numpy(split.y)
        accuracy = None if self.task == "regression" else float((predictions == targets).mean())
        kept = backend.to_numpy(xp.concatenate(outputs)) if keep_outputs else None
        evaluation = Evaluation(total_loss / len(split), accuracy, predictions, targets, kept)
        if self.task == "regression":
            evaluation.error_sums = error_sums(predictions, targets)
            evaluation.mae, evaluation.r2 = regression_figures(evaluation.error_sums, len(split),
                                                               self.target_normalization)
        return evaluation


def _logsumexp(xp, a, axis: int):
    top = a.max(axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, 0)
    return (top + xp.log(xp.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def average_outputs(stacked, task: str):
    """Outputs (views, N, width) of one batch seen several ways -> (N, width): the mean prediction, in the form the
    loss takes. Log-probabilities and logits are combined in log space, so that no probability rounds to 0 or 1."""
    xp = backend.array_module(stacked)
    if task == "classification":
        return _logsumexp(xp, log_softmax(stacked, -1).data, 0) - math.log(len(stacked))
    if task == "binary":  # logit(mean p) = log(mean p) - log(mean (1 - p))
        return _logsumexp(xp, -_softplus(xp, -stacked), 0) - _logsumexp(xp, -_softplus(xp, stacked), 0)
    return stacked.mean(axis=0)


def data_info(splits: Splits, task: str) -> dict:
    target_width = None if task == "classification" else int(splits.train.y.shape[1])
    return {"input_shape": list(splits.input_shape), "classes": splits.classes, "class_names": splits.class_names,
            "target_width": target_width, "feature_names": splits.feature_names, "features": splits.encoding,
            "target_normalization": splits.target_normalization, "padding_id": splits.padding_id,
            "vocab_size": splits.vocab_size, "text": splits.text}


@dataclass
class Built:
    model: Model
    splits: Splits
    info: dict  # what a checkpoint records of the data: input_shape, classes, class_names, target_width


def build_for(config: Config, device: str = "cpu", checkpoint=None, text: dict | None = None,
              text_source: str | None = None) -> Built:
    """The config's data and a freshly initialised model on `device`, seeded by config.seed. With a checkpoint the
    data is normalized by its statistics and must have its input shape, and the model has its output width (load
    its weights yourself: training restores more than weights). `text`: a tokenizer's state to use instead of fitting
    one (fine-tuning a text model: its embedding's rows belong to that tokenizer's ids), `text_source` where it came
    from (for messages)."""
    backend.manual_seed(config.seed)
    task = Model.task_of(config)
    trained = checkpoint.data if checkpoint is not None else {}
    shape = tuple(trained["input_shape"]) if trained.get("input_shape") else None
    embedding = config.input_embedding()
    try:
        splits = prepare(config.data, task, config.seed, device,
                         stats=checkpoint.normalization if checkpoint is not None else None, expected_shape=shape,
                         encoding=trained.get("features"), target_normalization=trained.get("target_normalization"),
                         token_ids=embedding is not None, text=text or trained.get("text"),
                         text_source=text_source or (str(checkpoint.path) if checkpoint is not None else None))
    except ShapeError as exc:
        if checkpoint is None:
            raise
        raise ShapeError(f"{checkpoint.path}: {exc}") from None
    info = data_info(splits, task)
    # what the layers take from the data: the padding id (masks) and the vocabulary (an embedding's default size)
    data = {key: trained[key] if trained.get(key) is not None else info[key] for key in ("padding_id", "vocab_size")}
    if embedding is not None:  # values the first step would refuse, said before any run directory is made
        layer, vocab_size = embedding
        if (vocab_size or data["vocab_size"]) is not None:  # else building the model names the missing vocab_size
            check_token_ids(splits, config.data, layer, vocab_size or data["vocab_size"])
    if task == "classification" and trained.get("classes") is not None and splits.classes > trained["classes"]:
        raise DataError(f"{config.data.get('path') or config.data['name']}: labels go up to {splits.classes - 1} "
                        f"but {checkpoint.path} was trained on {trained['classes']} classes "
                        f"(0..{trained['classes'] - 1})")
    model = Model(config, splits.input_shape, trained.get("classes", info["classes"]),
                  trained.get("target_width", info["target_width"]), blank_value(splits.normalization), data)
    model.target_normalization = splits.target_normalization  # a checkpoint's, when given one (prepare)
    model.network.to(device)
    if hasattr(model.loss, "weights_for"):
        weights = trained.get("class_weights") or model.loss.weights_for(backend.to_numpy(splits.train.y),
                                                                         model.network.output_shape[0])
        info["class_weights"] = weights
        model.loss.weight = None if weights is None else backend.to_device(np.asarray(weights, backend.default_dtype()),
                                                                           device)
    return Built(model, splits, info)
