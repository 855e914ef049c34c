"""Safe YAML loading that remembers where every key and item came from.

`load_yaml` returns plain Python values plus `positions`: key path -> line number, e.g.
('model', 2, 'linear', 'units') -> 12, so that errors can say `config.yaml:12: model[2].linear.units`.
Only plain YAML types are accepted: a `!!python/...` tag is an error, never code.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..errors import ConfigError

KeyPath = tuple  # a key path: str keys and int indices

_PLAIN_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 as a float (YAML 1.1 wants 1.0e-3 and would give the text '1e-3')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def format_path(path: KeyPath) -> str:
    """('model', 2, 'linear', 'units') -> 'model[2].linear.units'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def flatten_keys(values, path: tuple = ()) -> dict[str, object]:
    """{'optimizer': {'lr': 0.1}, 'model': [{'linear': {'units': 8}}]} -> {'optimizer.lr': 0.1,
    'model[0].linear.units': 8}; empty mappings and lists are kept as values."""
    if isinstance(values, dict) and values:
        return {k: v for key, item in values.items() for k, v in flatten_keys(item, path + (key,)).items()}
    if isinstance(values, list) and values:
        return {k: v for i, item in enumerate(values) for k, v in flatten_keys(item, path + (i,)).items()}
    return {format_path(path): values}


# What a config may expand to: a real one has hundreds of values and a few levels. YAML aliases can make a 1 KB
# file expand exponentially (nine levels of nine aliases: 387 million values), and deep nesting exhausts the stack.
MAX_VALUES = 100_000
MAX_DEPTH = 64


def load_yaml(text: str, filename: str) -> tuple[object, dict[KeyPath, int]]:
    positions: dict[KeyPath, int] = {}
    _check_bracket_depth(text, filename)
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{filename}: nested more than the parser can follow (a config has a few levels, "
                              f"at most {MAX_DEPTH})") from None
        if node is None:
            return {}, positions
        return _construct(loader, node, (), positions, filename, [0]), positions
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        if "could not determine a constructor" in str(problem):
            problem = f"YAML tag {getattr(exc, 'problem_tag', '') or _tag_in(str(exc))} is not allowed " \
                      "(configs hold plain values only)"
        raise ConfigError(f"{filename}:{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{filename}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def _tag_in(message: str) -> str:
    start = message.find("'")
    end = message.find("'", start + 1)
    return message[start:end + 1] if start >= 0 and end > start else "(unknown)"


def _check_bracket_depth(text: str, filename: str) -> None:
    """Flow collections ([...], {...}) nested deeper than MAX_DEPTH, found before the parser recurses into them."""
    depth, quote = 0, None
    for line_number, line in enumerate(text.splitlines(), start=1):
        for char in line:
            if quote:
                quote = None if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char == "#":
                break
            elif char in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(f"{filename}:{line_number}: brackets nested more than {MAX_DEPTH} deep "
                                      "(a config has a few levels)")
            elif char in "]}":
                depth = max(0, depth - 1)


def _construct(loader, node, path: KeyPath, positions: dict, filename: str, count: list):
    line = node.start_mark.line + 1
    count[0] += 1
    if count[0] > MAX_VALUES:
        raise ConfigError(f"{filename}:{line}: {format_path(path)}: the config expands to more than {MAX_VALUES:,} "
                          "values (YAML aliases repeating one another?)")
    if len(path) > MAX_DEPTH:
        raise ConfigError(f"{filename}:{line}: {format_path(path[:4])}...: nested more than {MAX_DEPTH} levels deep "
                          "(a config has a few levels)")
    positions.setdefault(path, line)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTION_TAGS:
        raise ConfigError(f"{filename}:{line}: {format_path(path)}: YAML tag {node.tag!r} is not allowed "
                          "(configs hold plain values only)")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves '<<' merge keys
        result = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise ConfigError(f"{filename}:{key_node.start_mark.line + 1}: {format_path(path)}: "
                                  f"keys must be text, got {key!r}")
            if key in result:
                raise ConfigError(f"{filename}:{key_node.start_mark.line + 1}: {format_path(path + (key,))}: "
                                  f"duplicate key (first given on line {positions[path + (key,)]})")
            positions[path + (key,)] = key_node.start_mark.line + 1
            result[key] = _construct(loader, value_node, path + (key,), positions, filename, count)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, child, path + (i,), positions, filename, count)
                for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def read_config_file(path: str | Path) -> tuple[object, dict[KeyPath, int], str]:
    """(values, positions, display name) of a YAML file; a clear error when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: expected a YAML file, found a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    values, positions = load_yaml(text, str(path))
    return values, positions, str(path)


def parse_key(key: str, where: str) -> KeyPath:
    """'model[0].linear.units' -> ('model', 0, 'linear', 'units'); errors start with `where`."""
    path: list = []
    for part in key.strip().split("."):
        name, _, rest = part.partition("[")
        if name:
            path.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if not index.isdigit():
                raise ConfigError(f"{where}: list index must be a number, got [{index}]")
            path.append(int(index))
            rest = rest.lstrip("[")
    if not path or any(p == "" for p in path):
        raise ConfigError(f"{where}: empty key path")
    return tuple(path)


def parse_override(expression: str) -> tuple[KeyPath, object]:
    """'training.epochs=5' -> (('training', 'epochs'), 5); 'model[0].linear.units=8' too.

    The value is read as a YAML scalar or flow collection, so 5 is an int, 0.1 a float, true a bool.
    """
    if "=" not in expression:
        raise ConfigError(f"--set {expression}: expected KEY.PATH=VALUE, e.g. training.epochs=5")
    key, _, raw_value = expression.partition("=")
    path = parse_key(key, f"--set {expression}")
    try:
        value, _ = load_yaml(raw_value, f"--set {expression}") if raw_value.strip() else (None, {})
    except ConfigError as exc:
        raise ConfigError(f"--set {expression}: value is not valid YAML ({exc})") from None
    return tuple(path), value


def apply_override(values: dict, path: KeyPath, value, expression: str) -> None:
    """Set `value` at `path` inside `values`, creating mappings on the way."""
    target = values
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(part, int):
            if not isinstance(target, list) or part >= len(target):
                raise ConfigError(f"--set {expression}: {format_path(path[:i + 1])} does not exist")
            if isinstance(target[part], str) and isinstance(nxt, str):
                target[part] = {target[part]: {}}  # bare layer name -> mapping with options
            target = target[part]
        else:
            if not isinstance(target, dict):
                raise ConfigError(f"--set {expression}: {format_path(path[:i])} is not a mapping")
            current = target.get(part)
            if current is None or (isinstance(current, str) and isinstance(nxt, str)):
                target[part] = {} if current is None else {"name": current}
            target = target[part]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(target, list) or last >= len(target):
            raise ConfigError(f"--set {expression}: {format_path(path)} does not exist")
    elif not isinstance(target, dict):
        raise ConfigError(f"--set {expression}: {format_path(path[:-1])} is not a mapping")
    target[last] = value
