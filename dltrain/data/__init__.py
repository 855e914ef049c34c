"""Datasets (registered by name), file readers, download with checksums, splits and normalization."""

from . import augment, datasets  # noqa: F401 (registers the built-in datasets and augmentations)
from .splits import Split, Splits, prepare

__all__ = ["Split", "Splits", "prepare"]
