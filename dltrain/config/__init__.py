"""Configs: safe YAML with line numbers, a typed schema, --set overrides, errors with FILE:LINE."""

from __future__ import annotations

from pathlib import Path

from .loader import apply_override, flatten_keys, format_path, parse_override, read_config_file
from .schema import Config, config_from_dict, validate

__all__ = ["Config", "config_from_dict", "flatten_keys", "format_path", "load_config", "validate"]


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, apply `--set KEY=VALUE` overrides, validate: a Config or one ConfigError listing every problem."""
    values, positions, name = read_config_file(path)
    if values is None:  # an empty file: the overrides may still give every section
        values = {}
    if not isinstance(values, dict):  # no override can make a list or a scalar into config sections
        return validate(values, positions, name)
    written_by = {}
    for expression in overrides:
        key_path, value = parse_override(expression)
        apply_override(values, key_path, value, expression)
        written_by[key_path] = expression
    return validate(values, positions, name, written_by)
