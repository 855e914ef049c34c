"""Every registry in one place: layers, losses, optimizers, schedules, initializers, datasets, callbacks, augmentations.

An entry is a class or function whose typed signature IS its parameter list: the config
schema, its validation and `dltrain layers` all read that one signature.

    @layers.register("linear")
    class Linear(Module):
        def __init__(self, units: PositiveInt, bias: bool = True): ...
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt

from .errors import ConfigError

# Parameter types shared by the registries' signatures (annotated_types constraints are
# understood by the config validator and printed by `dltrain layers`).
PositiveInt = Annotated[int, Gt(0)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Probability = Annotated[float, Ge(0), Lt(1)]
UnitInterval = Annotated[float, Ge(0), Le(1)]


class EntryOf:
    """Annotation metadata: the value names an entry of `registry`, checked against what is registered when a config
    is validated (not frozen at import, so entries registered later by a user's code can be named)."""

    def __init__(self, registry: Registry):
        self.registry = registry


@dataclass(frozen=True)
class Param:
    """One parameter of a registry entry, read from its signature."""

    name: str
    annotation: Any
    default: Any  # inspect.Parameter.empty when required

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry:
    """Named entries of one kind; `skip` names constructor arguments supplied by code, not by configs."""

    def __init__(self, kind: str, skip: tuple[str, ...] = ()):
        self.kind = kind
        self.skip = ("self", *skip)
        self._entries: dict[str, Any] = {}

    def register(self, name: str):
        def decorator(entry):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            entry.registry_name = name
            return entry
        return decorator

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str):
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; "
                              f"available: {', '.join(self.names())}") from None

    def build(self, spec: dict, **from_code):
        """The entry a validated spec {'name': ..., option: value, ...} names, called with its options and the
        arguments only code supplies (an optimizer's parameters, a schedule's epochs)."""
        options = {key: value for key, value in spec.items() if key != "name"}
        return self.get(spec["name"])(**from_code, **options)

    def params(self, name: str) -> list[Param]:
        """The entry's parameters from its signature (self, *args and **kwargs left out)."""
        entry = self.get(name)
        target = entry.__init__ if inspect.isclass(entry) else entry
        hints = typing.get_type_hints(target, include_extras=True)
        found = []
        for p in inspect.signature(target).parameters.values():
            if p.name in self.skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            found.append(Param(p.name, hints.get(p.name, Any), p.default))
        return found

    def doc(self, name: str) -> str:
        text = inspect.getdoc(self.get(name)) or ""
        return text.split("\n\n")[0].replace("\n", " ")


layers = Registry("layer")
losses = Registry("loss")
optimizers = Registry("optimizer", skip=("params",))
schedules = Registry("schedule", skip=("base_lr", "total_epochs", "steps_per_epoch", "batch_size"))
initializers = Registry("initializer", skip=("shape",))
datasets = Registry("dataset", skip=("path", "rng"))
callbacks = Registry("callback")
augmentations = Registry("augmentation")
