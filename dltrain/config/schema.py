"""The config schema and its validation.

A run's YAML has these top-level keys (only `data` and `model` are required):

    seed: 0                      # one seed: initialisation, shuffling, dropout, validation split
    device: cpu                  # cpu | gpu | auto
    data: {name: fashion-mnist, val_fraction: 0.1, ...}     # or just: data: xor
    model: [{linear: {units: 128}}, relu, {linear: {units: 10}}]
    loss: cross_entropy          # or {name: cross_entropy, label_smoothing: 0.1}
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
    schedule: {name: exponential, gamma: 0.98, warmup_epochs: 1}
    training: {epochs: 20, batch_size: 128, early_stopping: {patience: 5}}

Layers, losses, optimizers, schedules and datasets take exactly the parameters of their
registered constructor (dltrain/registry.py); the sections below are typed the same way.
Validation reports every problem at once, each as `FILE:LINE: key.path: expected ..., got ...`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import TypeAdapter, ValidationError

from .. import registry
from ..errors import ConfigError
from ..registry import NonNegativeFloat, NonNegativeInt, Param, PositiveFloat, PositiveInt, did_you_mean
from .loader import format_path

MONITORS = ("val_loss", "val_accuracy", "train_loss", "train_accuracy", "val_mae", "val_r2")  # mae, r2: regression
TEXT_DATASETS = ("text_folder", "wordlists")  # their inputs are token ids (so are csv's with text_columns)


@dataclass
class EarlyStoppingConfig:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs; `false` turns it off.

    The monitor also decides which epoch is `best` (saved as best.safetensors, restored at the end).
    """

    enabled: bool = True
    monitor: Literal[MONITORS] = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"  # auto: max for accuracies, min for losses
    patience: NonNegativeInt = 5
    min_delta: NonNegativeFloat = 0.0
    start_from_epoch: NonNegativeInt = 0  # epochs before this never count towards patience
    restore_best: bool = True


@dataclass
class EmaConfig:
    """An exponential moving average of the weights, validated, tested and checkpointed: `ema: {decay: 0.999}`."""

    enabled: bool = False
    decay: Annotated[float, Gt(0), Lt(1)] = 0.999


@dataclass
class MlflowConfig:
    """Where training.loggers: [mlflow] logs (MLFLOW_TRACKING_URI, when set, wins over tracking_uri)."""

    tracking_uri: str | None = None  # default ./mlruns; or sqlite:///mlflow.db, or http://server:5000
    experiment: str | None = None  # default: the config file's name


@dataclass
class TrainingConfig:
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32
    accumulate_steps: PositiveInt = 1  # batches whose gradients add up to one optimizer step (effective batch x N)
    eval_batch_size: PositiveInt = 1024
    shuffle: bool = True
    grad_clip: PositiveFloat | None = None  # max global L2 norm of the gradients (also checks them for NaN/Inf)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/Inf loss (or gradient): stop, or skip the batch
    max_nonfinite_skips: NonNegativeInt = 10  # with skip: stop after this many skipped batches
    log_gradients: bool = False  # per-layer gradient norms each epoch -> gradients.csv (dltrain plot --gradients)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)  # a mapping turns it on (enabled: true is implied)
    loggers: list[Literal["tensorboard", "mlflow"]] = field(default_factory=list)  # trackers (loggers.py)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    # k-fold cross-validation (training/folds.py): K runs, each validated on one fold of the training data
    folds: Annotated[int, Ge(2)] | None = None
    final: bool = False  # with folds: then one run on all the training data for the folds' mean best epoch count


@dataclass
class FoldConfig:
    """Which fold of the training data validates this run: `fold: {index: 2, of: 5}`. A k-fold run writes it into
    the config of each of its runs; the folds are stratified by class and drawn by the seed."""

    index: NonNegativeInt
    of: Annotated[int, Ge(2)]


@dataclass
class DataConfig:
    """Options every dataset takes; a dataset's own options follow its registered signature."""

    name: str
    path: str | None = None  # IDX directory, or the .npz / .csv file
    val_fraction: Annotated[float, Ge(0), Lt(1)] = 0.1  # held out from train (stratified) unless val_path
    val_path: str | None = None
    test_path: str | None = None
    fold: FoldConfig | None = None  # validate on this fold of the training data (replaces val_fraction)
    normalize: Literal["auto", "global", "feature", "none"] = "auto"  # statistics from the training split
    normalize_targets: bool = True  # regression: train on standardized targets, predict in the original units
    # training-batch augmentations (dltrain/data/augment.py); none where the inputs are token ids (Config.token_inputs)
    # except those whose class sets keeps_token_ids = True (they change no input value, or only ids to valid ids)
    augment: list = field(default_factory=list)
    # views of each image whose predictions are averaged with the image's own: validation, test, eval and predict
    test_time_augment: list[Literal["horizontal_flip", "vertical_flip", "shift_up", "shift_down", "shift_left",
                                    "shift_right"]] = field(default_factory=list)


@dataclass
class Config:
    data: dict
    model: list
    seed: Annotated[int, Ge(0), Lt(2**63)] = 0
    device: Literal["cpu", "gpu", "auto"] = "cpu"
    loss: dict = field(default_factory=lambda: {"name": "cross_entropy"})
    optimizer: dict = field(default_factory=lambda: {"name": "adam"})
    schedule: dict = field(default_factory=lambda: {"name": "constant"})
    training: TrainingConfig = field(default_factory=TrainingConfig)
    callbacks: list = field(default_factory=list)  # registered callbacks, run after the built-in ones

    def to_dict(self) -> dict:
        """The resolved config as plain values (written to the run and into checkpoints)."""
        return dataclasses.asdict(self)

    def input_embedding(self) -> tuple[str, int | None] | None:
        """(key path, vocab_size) of the embedding that the inputs reach first (inside containers too), else None:
        such inputs are token ids, which standardizing would turn into fractions. vocab_size is None when the
        embedding takes the data's vocabulary."""
        specs, path = self.model, ("model",)
        while specs:
            ((name, options),) = specs[0].items()
            path += (0, name)
            if name == "embedding":
                return format_path(path), (options or {}).get("vocab_size")
            if not isinstance(options, dict) or not options.get("layers"):
                return None
            specs, path = options["layers"], path + ("layers",)
        return None

    def token_inputs(self) -> str | None:
        """Why the model's inputs are token ids, in words ('model[0].embedding takes them as token ids'), or None:
        the inputs reach an embedding first (input_embedding), or the data is tokenized text (text_folder,
        wordlists, or csv with text_columns)."""
        embedding = self.input_embedding()
        if embedding is not None:
            return f"{embedding[0]} takes them as token ids"
        name = self.data.get("name")
        if name in TEXT_DATASETS:
            return f"data {name!r} is tokenized text, read as token ids"
        if name == "csv" and self.data.get("text_columns"):
            return "data.text_columns are tokenized text, read as token ids"
        return None

    @property
    def monitor_mode(self) -> str:
        es = self.training.early_stopping
        if es.mode != "auto":
            return es.mode
        return "max" if maximized(es.monitor) else "min"


def maximized(monitor: str) -> bool:
    """Whether a larger value of the metric is better: accuracies and R²; losses and the MAE are minimized."""
    return monitor.endswith(("accuracy", "r2"))


TOP_LEVEL_ORDER = ("seed", "device", "data", "model", "loss", "optimizer", "schedule", "training", "callbacks")
SEARCH_SECTION = "tune"  # read by `dltrain tune` (dltrain/tune/space.py); a run trains the values as written


# ---------------------------------------------------------------- describing types for messages


def _entry_of(annotation) -> registry.EntryOf | None:
    """The EntryOf marker of an Annotated[str, EntryOf(...)] annotation, else None."""
    if typing.get_origin(annotation) is Annotated:
        return next((m for m in typing.get_args(annotation)[1:] if isinstance(m, registry.EntryOf)), None)
    return None


def describe(annotation) -> str:
    """A type in words: 'a positive integer', "one of 'min', 'max'", 'a number in [0, 1)'."""
    entry_of = _entry_of(annotation)
    if entry_of is not None:
        return "one of " + ", ".join(repr(name) for name in entry_of.registry.names())
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        return _describe_bounded(base, meta)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(describe(a) for a in args)
        return text + " or null" if len(args) < len(typing.get_args(annotation)) else text
    if origin is list and typing.get_args(annotation):
        return f"a list, each {describe(typing.get_args(annotation)[0])}"
    if origin is list or annotation is list:
        return "a list"
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(annotation, str(annotation))


def _describe_bounded(base, meta) -> str:
    if typing.get_origin(base) is list:
        item = describe(typing.get_args(base)[0])
        least = next((m.min_length for m in meta if isinstance(m, MinLen)), None)
        most = next((m.max_length for m in meta if isinstance(m, MaxLen)), None)
        count = f"{least}" if least == most else f"{least or 0} to {most}" if most is not None else f"{least} or more"
        return f"a list of {count} items, each {item}"
    lower = upper = None
    for m in meta:
        if isinstance(m, Gt):
            lower = ("(", m.gt)
        elif isinstance(m, Ge):
            lower = ("[", m.ge)
        elif isinstance(m, Lt):
            upper = (")", m.lt)
        elif isinstance(m, Le):
            upper = ("]", m.le)
    noun = "integer" if base is int else "number"
    if upper is None and lower == ("(", 0):
        return f"a positive {noun}"
    if upper is None and lower == ("[", 0):
        return f"a non-negative {noun}"
    article = "an" if noun == "integer" else "a"
    if lower and upper:
        return f"{article} {noun} in {lower[0]}{lower[1]}, {upper[1]}{upper[0]}"
    if lower:
        return f"{article} {noun} {'>' if lower[0] == '(' else '>='} {lower[1]}"
    if upper:
        return f"{article} {noun} {'<' if upper[0] == ')' else '<='} {upper[1]}"
    return describe(base)


def _non_finite(raw, inner: tuple = ()) -> tuple[tuple, float] | None:
    """(where inside `raw`, the number) of the first inf or nan in a value as YAML gives it, else None."""
    if isinstance(raw, float):
        return None if math.isfinite(raw) else (inner, raw)
    items = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
    return next((found for key, item in items if (found := _non_finite(item, inner + (key,))) is not None), None)


def _takes_floats(annotation) -> bool:
    """Whether a type has numbers with fractions anywhere in it (a bound or a list of them)."""
    return annotation is float or any(_takes_floats(arg) for arg in typing.get_args(annotation))


@functools.cache
def _adapter(annotation) -> TypeAdapter:
    return TypeAdapter(annotation)


def dataclass_params(cls) -> list[Param]:
    hints = typing.get_type_hints(cls, include_extras=True)
    params = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty
        params.append(Param(f.name, hints[f.name], default))
    return params


# ---------------------------------------------------------------- validation


class Validator:
    """Collects every problem with its location instead of stopping at the first."""

    def __init__(self, filename: str, positions: dict, overrides: dict):
        self.filename = filename
        self.positions = positions
        self.overrides = overrides  # key path -> the --set expression that wrote it
        self.problems: list[tuple[str, str]] = []

    def where(self, path: tuple) -> str:
        for end in range(len(path), -1, -1):
            if path[:end] in self.overrides:
                return f"--set {self.overrides[path[:end]]}"
            if path[:end] in self.positions:
                return f"{self.filename}:{self.positions[path[:end]]}"
        return self.filename

    def error(self, path: tuple, message: str) -> None:
        self.problems.append((self.where(path), f"{format_path(path)}: {message}"))

    def raise_if_any(self) -> None:
        if self.problems:
            lines = [f"{where}: {message}" for where, message in self.problems]
            raise ConfigError("\n".join(lines))

    # ------------------------------------------------------------ values

    def value(self, raw, annotation, path: tuple):
        """Check one value against its type; on failure record 'expected ..., got ...'."""
        if dataclasses.is_dataclass(annotation):
            return self.section(raw, annotation, path)
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        options = typing.get_args(annotation) if union else ()
        if len(options) == 2 and type(None) in options:  # an optional section: null, or the section's mapping
            (inner,) = (option for option in options if option is not type(None))
            if dataclasses.is_dataclass(inner):
                return None if raw is None else self.section(raw, inner, path)
        entry_of = _entry_of(annotation)
        if entry_of is not None:
            names = entry_of.registry.names()
            if not isinstance(raw, str) or raw not in names:
                self.error(path, f"unknown {entry_of.registry.kind} {raw!r}{did_you_mean(raw, names)}; "
                                 f"available: {', '.join(names)}")
                return None
            return raw
        found = _non_finite(raw)
        try:
            value = _adapter(annotation).validate_python(raw, strict=True)
        except ValidationError:
            if found is None or not _takes_floats(annotation):  # inf where text is expected: the type says more
                self.error(path, f"expected {describe(annotation)}, got {raw!r}")
                return None
            value = None
        if found is not None:  # pydantic takes inf and nan as floats (inf even as positive): runs died at step 2
            inner, number = found
            self.error(path + inner, f"expected a finite number, got {number!r}")
            return None
        return value

    def mapping(self, raw, params: list[Param], path: tuple, what: str) -> dict:
        """Validate a mapping against named, typed parameters; fill defaults; reject unknown keys."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.error(path, f"expected a mapping of {what} options, got {raw!r}")
            return {}
        known = {p.name: p for p in params}
        result = {}
        for key in raw:
            if key not in known:
                allowed = ", ".join(known) or "none"
                self.error(path + (key,), f"unknown key {key!r} for {what}{did_you_mean(key, known)}; "
                                          f"allowed: {allowed}")
        for p in params:
            if p.name in raw:
                result[p.name] = self.value(raw[p.name], p.annotation, path + (p.name,))
            elif p.required:
                self.error(path, f"missing required key {p.name!r} ({describe(p.annotation)}) for {what}")
            else:
                result[p.name] = p.default
        return result

    def section(self, raw, cls, path: tuple):
        if isinstance(raw, cls):  # an already validated section (a config's data re-validated with a change)
            raw = dataclasses.asdict(raw)
        if cls is EarlyStoppingConfig and raw is False:
            return EarlyStoppingConfig(enabled=False)
        if cls is EmaConfig and raw in (False, None):
            return EmaConfig(enabled=False)
        if cls is EmaConfig and isinstance(raw, dict) and "enabled" not in raw:
            raw = {"enabled": True, **raw}
        values = self.mapping(raw, dataclass_params(cls), path, format_path(path))
        try:
            return cls(**values)
        except TypeError:  # required fields missing: already reported
            return None

    def named(self, raw, reg: registry.Registry, path: tuple, extra: list[Param] = (),
              default: str | None = None) -> dict | None:
        """A registry entry given as 'name' or {name: ..., options...} (`default` when the name is left out)."""
        if isinstance(raw, str):
            raw = {"name": raw}
        if isinstance(raw, dict) and "name" not in raw and default is not None:
            raw = {"name": default, **raw}
        if not isinstance(raw, dict) or "name" not in raw:
            article = "an" if reg.kind[0] in "aeiou" else "a"
            self.error(path, f"expected the name of {article} {reg.kind} or a mapping with 'name', got {raw!r}; "
                             f"available: {available(reg)}")
            return None
        name = raw["name"]
        if not isinstance(name, str) or name not in reg:
            self.error(path + ("name",), f"unknown {reg.kind} {name!r}{did_you_mean(name, reg.names())}; "
                                         f"available: {available(reg)}")
            return None
        options = {k: v for k, v in raw.items() if k != "name"}
        params = list(extra) + [p for p in reg.params(name) if p.name not in {e.name for e in extra}]
        return {"name": name, **self.mapping(options, params, path, f"{reg.kind} {name!r}")}

    def layers(self, raw, path: tuple) -> list:
        """A list of layer specs: `relu` or `{linear: {units: 10}}`; containers nest."""
        if not isinstance(raw, list) or not raw:
            self.error(path, f"expected a non-empty list of layers, got {raw!r}")
            return []
        return [self.layer(item, path + (i,)) for i, item in enumerate(raw)]

    def layer(self, raw, path: tuple) -> dict | None:
        if isinstance(raw, str):
            name, options = raw, {}
        elif isinstance(raw, dict) and len(raw) == 1:
            ((name, options),) = raw.items()
        else:
            self.error(path, f"expected a layer name or a one-key mapping like {{linear: {{units: 10}}}}, got {raw!r}")
            return None
        if name not in registry.layers:
            self.error(path, f"unknown layer {name!r}{did_you_mean(name, registry.layers.names())}; "
                             f"available: {', '.join(registry.layers.names())}")
            return None
        if isinstance(options, list) and any(p.name == "layers" for p in registry.layers.params(name)):
            options = {"layers": options}  # `- sequential: [...]` shorthand
        params = registry.layers.params(name)
        nested = {p.name for p in params if p.name == "layers"}
        flat = [p for p in params if p.name not in nested]
        if options is not None and not isinstance(options, dict):
            self.error(path + (name,), f"expected a mapping of layer {name!r} options, got {options!r}")
            return None
        options = dict(options or {})
        inner = options.pop("layers", None) if nested else None
        result = self.mapping(options, flat, path + (name,), f"layer {name!r}")
        if nested:
            result["layers"] = self.layers(inner, path + (name, "layers"))
        return {name: result}


def _import_registries() -> None:
    """Importing these modules fills the registries the schema checks against (installed plugins' too)."""
    from .. import data, layers, losses, optim  # noqa: F401, PLC0415
    from ..plugins import load_plugins  # noqa: PLC0415

    load_plugins()


def _one_key_form(item, reg: registry.Registry):
    """{random_crop: {padding: 4}} (as model layers are written) read as {name: random_crop, padding: 4}."""
    if isinstance(item, dict) and len(item) == 1 and "name" not in item:
        ((name, options),) = item.items()
        if name in reg and isinstance(options, dict | type(None)):
            return {"name": name, **(options or {})}
    return item


def available(reg: registry.Registry) -> str:
    return ", ".join(reg.names()) or "none (a file given with --code, or an installed plugin, registers them)"


def _kind(values) -> str:
    """What a YAML document holds, in a few words: 'a list of 2 items', 'the string "x"'."""
    if isinstance(values, list):
        return f"a list of {len(values)} item{'s' if len(values) != 1 else ''}"
    if isinstance(values, str):
        return f"the string {values[:40]!r}"
    return f"{type(values).__name__} {values!r}"[:60]


def validate(values, positions: dict, filename: str, overrides: dict | None = None) -> Config:
    """A typed Config from loaded YAML values, or one ConfigError listing every problem."""
    _import_registries()
    v = Validator(filename, positions, overrides or {})
    if not isinstance(values, dict):
        v.error((), f"expected a mapping of config sections ({', '.join(TOP_LEVEL_ORDER)}), got {_kind(values)}")
        v.raise_if_any()
    for key in values:
        if key not in TOP_LEVEL_ORDER and key != SEARCH_SECTION:
            allowed = TOP_LEVEL_ORDER + (SEARCH_SECTION,)
            v.error((key,), f"unknown key {key!r}{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
    for key in ("data", "model"):
        if key not in values:
            v.error((), f"missing required section {key!r}")
    params = {p.name: p for p in dataclass_params(Config)}
    seed = v.value(values.get("seed", 0), params["seed"].annotation, ("seed",))
    device = v.value(values.get("device", "cpu"), params["device"].annotation, ("device",))
    data = None
    if "data" in values:
        common = [p for p in dataclass_params(DataConfig) if p.name not in ("name", "augment")]
        raw_data = values["data"]
        augment = raw_data.get("augment", []) if isinstance(raw_data, dict) else []
        if isinstance(raw_data, dict):
            raw_data = {k: value for k, value in raw_data.items() if k != "augment"}
        data = v.named(raw_data, registry.datasets, ("data",), extra=common)
        if data is not None and isinstance(data.get("fold"), FoldConfig):
            data["fold"] = dataclasses.asdict(data["fold"])  # data is plain values, as the loaders take them
        if not isinstance(augment, list):
            v.error(("data", "augment"), f"expected a list of augmentations, got {_kind(augment)}")
        elif data is not None:
            data["augment"] = [v.named(_one_key_form(item, registry.augmentations), registry.augmentations,
                                       ("data", "augment", i)) for i, item in enumerate(augment)]
    model = v.layers(values["model"], ("model",)) if "model" in values else []
    loss = v.named(values.get("loss", "cross_entropy"), registry.losses, ("loss",), default="cross_entropy")
    optimizer = v.named(values.get("optimizer", "adam"), registry.optimizers, ("optimizer",), default="adam")
    schedule_common = list(registry.schedules.params("constant"))
    schedule = v.named(values.get("schedule", "constant"), registry.schedules, ("schedule",), extra=schedule_common,
                       default="constant")
    training = v.section(values.get("training", {}), TrainingConfig, ("training",))
    callbacks = values.get("callbacks", [])
    if isinstance(callbacks, list):
        callbacks = [v.named(item, registry.callbacks, ("callbacks", i)) for i, item in enumerate(callbacks)]
    else:
        v.error(("callbacks",), f"expected a list of callbacks, got {_kind(callbacks)}")
    v.raise_if_any()

    config = Config(data=data, model=model, seed=seed, device=device, loss=loss, optimizer=optimizer,
                    schedule=schedule, training=training, callbacks=callbacks)
    _cross_checks(config, v)
    v.raise_if_any()
    return config


def _cross_checks(config: Config, v: Validator) -> None:
    """Rules that involve two keys; each message names both."""
    es = config.training.early_stopping
    _fold_checks(config, v)
    has_val = (config.data["val_fraction"] > 0 or config.data["val_path"] is not None
               or config.data["fold"] is not None or config.training.folds is not None)
    monitor_path = ("training", "early_stopping", "monitor")
    named = monitor_path in v.positions or monitor_path in v.overrides
    if es.monitor.startswith("val_") and not has_val and not named:
        # the default monitor with nothing to validate on: the best epoch is the one with the lowest training loss
        es.monitor = "train_" + es.monitor.removeprefix("val_")
    elif es.monitor.startswith("val_") and not has_val:
        v.error(("training", "early_stopping", "monitor"),
                f"monitors {es.monitor!r} but there is no validation split (data.val_fraction is 0 and "
                "data.val_path is not set); monitor a train_ metric or hold out validation data")
    task = registry.losses.get(config.loss["name"]).task
    if es.monitor.endswith("accuracy") and task == "regression":
        v.error(("training", "early_stopping", "monitor"),
                f"monitors {es.monitor!r} but loss {config.loss['name']!r} is a regression loss with no accuracy; "
                "monitor val_loss or train_loss")
    if es.monitor in ("val_mae", "val_r2") and task != "regression":
        v.error(("training", "early_stopping", "monitor"),
                f"monitors {es.monitor!r} but loss {config.loss['name']!r} is not a regression loss: the MAE and R² "
                "are a regression's; monitor val_loss or val_accuracy")
    embedding = config.input_embedding()
    if embedding is not None and config.data["normalize"] in ("global", "feature"):
        layer, vocab_size = embedding
        ids = "integers from 0" if vocab_size is None else f"integers in [0, {vocab_size - 1}]"
        v.error(("data", "normalize"), f"{config.data['normalize']!r} standardizes the inputs, but {layer} takes them "
                                       f"as token ids ({ids}); set data.normalize: none "
                                       f"(or auto, which leaves an embedding's inputs as they are)")
    tokens = config.token_inputs()
    for i, spec in enumerate(config.data["augment"] if tokens is not None else []):
        if not getattr(registry.augmentations.get(spec["name"]), "keeps_token_ids", False):
            v.error(("data", "augment", i),
                    f"{spec['name']} changes the input values, but the inputs are token ids ({tokens}): an id it "
                    f"changes (noised, blended with another sample's, erased) is another token or none, and padding "
                    f"that no longer equals the padding id is read as tokens in training but masked in evaluation; "
                    f"remove it from data.augment")
    schedule = config.schedule
    if schedule.get("warmup_epochs", 0) > config.training.epochs:
        v.error(("schedule", "warmup_epochs"), f"warmup of {schedule['warmup_epochs']} epochs is longer than "
                                               f"training.epochs = {config.training.epochs}")


def _fold_checks(config: Config, v: Validator) -> None:
    """k-fold cross-validation draws its validation folds from the training split: nothing else may name one."""
    fold, folds = config.data["fold"], config.training.folds
    if fold is not None and fold["index"] >= fold["of"]:
        v.error(("data", "fold", "index"), f"expected a fold in [0, {fold['of'] - 1}] (of: {fold['of']}), "
                                           f"got {fold['index']}")
    for key, value in (("fold", fold), ("folds", folds)):
        if value is not None and config.data["val_path"] is not None:
            path = ("data", "fold") if key == "fold" else ("training", "folds")
            v.error(path, "k-fold cross-validation validates on folds of the training data, but data.val_path "
                          "names a validation set; remove one of them")
    if fold is not None and folds is not None:
        v.error(("training", "folds"), "a k-fold run writes data.fold into the config of each of its runs; a config "
                                       "with data.fold set is one of them: remove data.fold or training.folds")
    if config.training.final and folds is None:
        v.error(("training", "final"), "trains once more after the folds of a k-fold run; set training.folds "
                                       "(or --folds K) too, or remove it")


def config_from_dict(values: dict, source: str = "checkpoint") -> Config:
    """Re-validate a resolved config (from a checkpoint or a run directory): data, never code."""
    return validate(values, {}, source)
