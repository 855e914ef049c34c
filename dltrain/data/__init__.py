"""Datasets (registered by name), file readers, download with checksums, splits and normalization."""

from . import datasets  # noqa: F401 (registers the built-in datasets)
from .splits import Split, Splits, prepare

__all__ = ["Split", "Splits", "prepare"]
