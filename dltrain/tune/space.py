"""The `tune:` section: what `dltrain tune` searches, checked against the config it searches before any trial runs.

    tune:
      metric: val_accuracy          # an early-stopping monitor; maximized for accuracies and R², else minimized
      trials: 40
      sampler: tpe                  # tpe | random | grid | cmaes
      pruner: median                # median | hyperband | none
      folds: 5                      # optional: each trial a k-fold run, judged by the folds' mean
      parameters:                   # config key paths, written as for --set
        optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
        model[1].linear.units: {choice: [256, 512, 1024]}
        model[3].dropout.rate: {uniform: [0.0, 0.5]}

Each parameter's key must exist in the config, and every value it can take must validate there: the bounds of a
range (and, for a range of numbers with fractions, a value between them) and each choice are written into a copy of
the config and validated, so `{uniform: [32, 512]}` for `units` is refused as `units` would refuse 272.0.
This module needs no Optuna: `dltrain tune` checks the whole search before it imports it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge

from ..config import format_path
from ..config.loader import apply_override, parse_key, parse_override, read_config_file
from ..config.schema import MONITORS, SEARCH_SECTION, Config, Validator, maximized, validate
from ..errors import ConfigError
from ..registry import PositiveInt, did_you_mean, losses

RANGES = {"uniform": float, "log_uniform": float, "int_uniform": int, "int_log_uniform": int}
KINDS = (*RANGES, "choice")
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")


@dataclass
class TuneSection:
    """The section's plain options; `parameters` is checked by `_parameter` below."""

    parameters: dict
    metric: Literal[MONITORS] | None = None  # default: the config's early-stopping monitor
    trials: PositiveInt = 20
    sampler: Literal[SAMPLERS] = "tpe"
    pruner: Literal[PRUNERS] = "median"
    folds: Annotated[int, Ge(2)] | None = None  # each trial a k-fold run (training.folds), judged by the folds' mean


@dataclass(frozen=True)
class Parameter:
    """One searched key: `values` holds (low, high) for a range, the options for a choice."""

    key: str  # as written: 'model[1].linear.units'
    path: tuple  # ('model', 1, 'linear', 'units')
    kind: str
    values: tuple

    @property
    def log(self) -> bool:
        return self.kind.endswith("log_uniform")

    def categories(self) -> list:
        """A choice's options as Optuna stores them (None, bool, int, float, str); lists and mappings as JSON text."""
        return [value if _is_scalar(value) else json.dumps(value) for value in self.values]

    def from_category(self, category):
        """The config value of a stored category (inverse of categories())."""
        return self.values[self.categories().index(category)]


@dataclass
class Search:
    """A validated search: the base config (raw values, where each came from) and what to vary in it."""

    config: Config
    values: dict  # the config file's values with --set applied, `tune` removed
    positions: dict
    filename: str
    overrides: dict  # key path -> the --set expression that wrote it
    metric: str
    direction: str  # 'maximize' or 'minimize'
    trials: int
    sampler: str
    pruner: str
    parameters: list[Parameter] = field(default_factory=list)
    monitor: str | None = None  # what a trial's early stopping and best checkpoint follow (default: metric)
    folds: int | None = None  # each trial a k-fold run of this many folds (tune.folds, or the config's own)

    def __post_init__(self):
        self.monitor = self.monitor or self.metric
        self.folds = self.folds or self.config.training.folds

    def trial_config(self, assignment: dict) -> Config:
        """The config of one trial: the base values with `assignment` (key -> value) written in, and the study's
        metric as its early-stopping monitor unless the config names one; validated."""
        values = copy.deepcopy(self.values)
        written_by = dict(self.overrides)
        for parameter in self.parameters:
            value = assignment[parameter.key]
            apply_override(values, parameter.path, value, f"{parameter.key}={value!r}")
            written_by[parameter.path] = f"{parameter.key}={value!r} (tune)"
        if self.folds is not None:  # each trial a k-fold run; the study keeps no final runs
            if self.folds != self.config.training.folds:
                apply_override(values, ("training", "folds"), self.folds, f"tune.folds={self.folds}")
                written_by[("training", "folds")] = f"tune.folds: {self.folds}"
            if self.config.training.final:
                apply_override(values, ("training", "final"), False, "training.final=false")
        monitor_metric(values, self.metric)
        return validate(values, self.positions, self.filename, written_by)

    @property
    def grid_size(self) -> int:
        size = 1
        for parameter in self.parameters:
            size *= len(parameter.values)
        return size


def load_search(config_path: str | Path, overrides: list[str] = (), space_path: str | Path | None = None) -> Search:
    """Read the config (and --space file), apply --set, validate both; one ConfigError naming every problem."""
    values, positions, filename = read_config_file(config_path)
    values = {} if values is None else values
    if not isinstance(values, dict):
        validate(values, positions, filename)  # raises: a config is a mapping of sections
    section_positions, section_file = positions, filename
    if space_path is not None:
        space, space_positions, section_file = read_config_file(space_path)
        if isinstance(space, dict) and SEARCH_SECTION in space:
            values[SEARCH_SECTION], section_positions = space[SEARCH_SECTION], space_positions
        else:  # the file holds the section's keys themselves
            values[SEARCH_SECTION] = space
            section_positions = {(SEARCH_SECTION, *key): line for key, line in space_positions.items()}
    written_by = {}
    for expression in overrides:  # --set tune.trials=10 changes the search, --set optimizer.lr=... every trial
        key_path, value = parse_override(expression)
        apply_override(values, key_path, value, expression)
        written_by[key_path] = expression
    section = values.pop(SEARCH_SECTION, None)
    config = validate(copy.deepcopy(values), positions, filename, written_by)
    if section is None:
        raise ConfigError(f"{filename}: no 'tune:' section says what to search; add one (see docs/tuning.md, "
                          f"'Searching hyperparameters') or give a file with --space")

    v = Validator(section_file, section_positions, written_by)
    options = v.section(section, TuneSection, (SEARCH_SECTION,))
    v.raise_if_any()
    metric = options.metric or config.training.early_stopping.monitor
    if options.folds is not None and config.data["val_path"] is not None:
        v.error((SEARCH_SECTION, "folds"), "k-fold cross-validation validates on folds of the training data, but "
                                           "data.val_path names a validation set; remove one of them")
    if options.folds is not None and config.data["fold"] is not None:
        v.error((SEARCH_SECTION, "folds"), "makes each trial a k-fold run, which writes data.fold into the config of "
                                           "each of its runs; remove data.fold")
    if options.folds is not None and metric.startswith("train_") and options.metric is None:
        metric = "val_" + metric.removeprefix("train_")  # no validation split, until the folds give one
    _check_metric(v, config, metric, options.metric is not None, options.folds)
    raw_parameters = options.parameters
    parameters = []
    if not isinstance(raw_parameters, dict) or not raw_parameters:
        example = "optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}"
        v.error((SEARCH_SECTION, "parameters"),
                f"expected a mapping of config keys to ranges or choices, e.g. {example}, got {raw_parameters!r}")
    else:
        for key, spec in raw_parameters.items():
            parameter = _parameter(v, key, spec, values, config.to_dict(), positions, filename, written_by)
            if parameter is not None:
                parameters.append(parameter)
    if options.sampler == "grid":
        ranges = [p.key for p in parameters if p.kind != "choice"]
        if ranges:
            what = "is a range (give it" if len(ranges) == 1 else "are ranges (give them"
            v.error((SEARCH_SECTION, "sampler"), f"the grid sampler tries every combination of choices; "
                                                 f"{', '.join(ranges)} {what} as choice: [...])")
    v.raise_if_any()
    direction = "maximize" if maximized(metric) else "minimize"
    monitor = config.training.early_stopping.monitor if named_monitor(values) else metric
    return Search(config, values, positions, filename, written_by, metric, direction, options.trials,
                  options.sampler, options.pruner, parameters, monitor, options.folds)


def named_monitor(values: dict) -> bool:
    """Whether the config (or a --set) names training.early_stopping.monitor."""
    training = values.get("training")
    early_stopping = training.get("early_stopping") if isinstance(training, dict) else None
    return isinstance(early_stopping, dict) and "monitor" in early_stopping


def monitor_metric(values: dict, metric: str) -> None:
    """Make a trial's early stopping and best checkpoint follow the study's metric, where the config's values do
    not name a monitor themselves: the value the study gets, the checkpoint kept and best.yaml then agree."""
    training = values.setdefault("training", {})
    if training is None:
        training = values["training"] = {}
    if not isinstance(training, dict):
        return  # validation says what is wrong
    early_stopping = training.get("early_stopping", {})
    if early_stopping is False:  # off: no stopping, but the monitor still picks the best epoch
        training["early_stopping"] = {"enabled": False, "monitor": metric}
    elif isinstance(early_stopping, dict) and "monitor" not in early_stopping:
        training["early_stopping"] = {**early_stopping, "monitor": metric}


def _check_metric(v: Validator, config: Config, metric: str, named: bool, folds: int | None = None) -> None:
    path = (SEARCH_SECTION, "metric")
    has_val = (config.data["val_fraction"] > 0 or config.data["val_path"] is not None
               or (folds or config.training.folds) is not None)
    if metric.startswith("val_") and not has_val:
        v.error(path, f"{metric!r} needs a validation split, and data.val_fraction is 0 with no data.val_path; "
                      "search on a train_ metric or hold out validation data")
    if metric.endswith("accuracy") and losses.get(config.loss["name"]).task == "regression":
        v.error(path, f"{metric!r}: loss {config.loss['name']!r} is a regression loss with no accuracy; "
                      "search on val_loss or train_loss")
    if metric in ("val_mae", "val_r2") and losses.get(config.loss["name"]).task != "regression":
        v.error(path, f"{metric!r}: loss {config.loss['name']!r} is not a regression loss: the MAE and R² are a "
                      "regression's; search on val_loss or val_accuracy")


def _parameter(v: Validator, key, spec, values: dict, resolved: dict, positions, filename, written_by
               ) -> Parameter | None:
    where = (SEARCH_SECTION, "parameters", key)
    if not isinstance(key, str):
        v.error(where, f"expected a config key path like optimizer.lr, got {key!r}")
        return None
    try:
        path = parse_key(key, "key")
    except ConfigError as exc:
        v.error(where, str(exc))
        return None
    missing = _missing(path, resolved)
    if missing:
        v.error(where, missing)
        return None
    if not isinstance(spec, dict) or len(spec) != 1:
        v.error(where, f"expected one of {', '.join(KINDS)} as a one-key mapping, e.g. {{uniform: [0.0, 0.5]}}, "
                       f"got {spec!r}")
        return None
    ((kind, arguments),) = spec.items()
    if kind not in KINDS:
        v.error(where + (kind,), f"unknown kind of range {kind!r}{did_you_mean(kind, KINDS)}; "
                                 f"available: {', '.join(KINDS)}")
        return None
    checked = _arguments(v, where + (kind,), kind, arguments)
    if checked is None:
        return None
    parameter = Parameter(key, path, kind, checked)
    for candidate in _candidates(parameter):
        trial_values = copy.deepcopy(values)
        marker = "\0tune"
        try:
            apply_override(trial_values, path, candidate, marker)
            validate(trial_values, positions, filename, {**written_by, path: marker})
        except ConfigError as exc:
            lines = str(exc).splitlines()
            # the problem with the key itself, or one it causes elsewhere (warmup longer than the epochs drawn)
            first = next((line for line in lines if line.startswith(f"--set {marker}: ")), lines[0])
            problem = first.removeprefix(f"--set {marker}: ").replace(f"--set {marker}", key)
            hint = ""
            if RANGES.get(kind) is float and "integer" in problem:
                hint = f" (int_{kind} draws whole numbers)"
            v.error(where + (kind,), f"{kind} can give {candidate!r}, which the config refuses: {problem}{hint}")
            return None
    return parameter


def _missing(path: tuple, resolved) -> str | None:
    """Why `path` names nothing in the resolved config, or None when it names a value."""
    target = resolved
    for i, part in enumerate(path):
        here = format_path(path[:i]) if i else "the config"
        if isinstance(part, int):
            if not isinstance(target, list):
                return f"{here} is not a list; [{part}] names nothing"
            if part >= len(target):
                return f"{here} has {len(target)} items; [{part}] is not one of them"
        else:
            if not isinstance(target, dict):
                return f"{here} is {target!r}, not a mapping with {part!r}"
            if part not in target:
                known = [k for k in target if k != "enabled"]
                if i >= 2 and path[0] == "model" and isinstance(path[i - 1], int):
                    layer = next(iter(target))
                    return f"{format_path(path[:i])} is layer {layer!r}, not {part!r}"
                return (f"{here} has no key {part!r}{did_you_mean(part, known)}; "
                        f"it has: {', '.join(map(str, known))}")
        target = target[part]
    return None


def _arguments(v: Validator, where: tuple, kind: str, arguments) -> tuple | None:
    if kind == "choice":
        if not isinstance(arguments, list) or not arguments:
            v.error(where, f"expected a non-empty list of values to choose from, got {arguments!r}")
            return None
        texts = [json.dumps(a, sort_keys=True) for a in arguments]
        if len(set(texts)) != len(texts):
            v.error(where, f"the same value is given twice in {arguments!r}")
            return None
        return tuple(arguments)
    number = RANGES[kind]
    noun = "whole numbers" if number is int else "numbers"
    if (not isinstance(arguments, list) or len(arguments) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in arguments)):
        v.error(where, f"expected [low, high], two {noun}, got {arguments!r}")
        return None
    if number is int and not all(isinstance(a, int) for a in arguments):
        v.error(where, f"expected [low, high], two whole numbers, got {arguments!r} (for numbers with fractions: "
                       f"{kind.removeprefix('int_')})")
        return None
    low, high = arguments
    if not low < high:
        v.error(where, f"expected low < high, got [{low}, {high}]")
        return None
    if kind.endswith("log_uniform") and low <= 0:
        v.error(where, f"a log range needs low > 0, got {low}")
        return None
    return (number(low), number(high))


def _candidates(parameter: Parameter) -> list:
    """The values that stand for everything a parameter can take, for validation."""
    if parameter.kind == "choice":
        return list(parameter.values)
    low, high = parameter.values
    if RANGES[parameter.kind] is int:
        return [low, high]
    return [low, high, low + (high - low) * 0.37]  # a value between: a float range gives fractions


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def describe_assignment(assignment: dict) -> str:
    return ", ".join(f"{key}={_short(value)}" for key, value in assignment.items())


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if not _is_scalar(value) else str(value)
