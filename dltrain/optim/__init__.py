"""Optimizers and learning-rate schedules (registered by name for configs)."""

from .optimizers import SGD, Adam, AdamW, Optimizer, clip_grad_norm
from .schedules import Constant, Cosine, Exponential, Schedule, Step

__all__ = ["SGD", "Adam", "AdamW", "Constant", "Cosine", "Exponential", "Optimizer", "Schedule", "Step",
           "clip_grad_norm"]
