"""Weight initializers, drawn from the run's seeded generator on the host.

fan_in / fan_out follow torch's convention for a weight shaped (out, in, *kernel).
"""

from __future__ import annotations

import math

from .. import backend
from ..registry import initializers

np = backend.np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_out = shape[0] * receptive
    fan_in = (shape[1] if len(shape) > 1 else shape[0]) * receptive
    return fan_in, fan_out


def _uniform(shape, bound):
    return backend.host_rng().uniform(-bound, bound, size=shape).astype(backend.default_dtype())


def _normal(shape, std):
    return (backend.host_rng().standard_normal(size=shape) * std).astype(backend.default_dtype())


@initializers.register("he_uniform")
def he_uniform(shape):
    """U(-b, b) with b = sqrt(6 / fan_in): keeps ReLU activations' variance constant."""
    return _uniform(shape, math.sqrt(6.0 / fans(shape)[0]))


@initializers.register("he_normal")
def he_normal(shape):
    """N(0, 2 / fan_in)."""
    return _normal(shape, math.sqrt(2.0 / fans(shape)[0]))


@initializers.register("glorot_uniform")
def glorot_uniform(shape):
    """U(-b, b) with b = sqrt(6 / (fan_in + fan_out)): suited to tanh and sigmoid."""
    fan_in, fan_out = fans(shape)
    return _uniform(shape, math.sqrt(6.0 / (fan_in + fan_out)))


@initializers.register("glorot_normal")
def glorot_normal(shape):
    """N(0, 2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return _normal(shape, math.sqrt(2.0 / (fan_in + fan_out)))


@initializers.register("lecun_normal")
def lecun_normal(shape):
    """N(0, 1 / fan_in)."""
    return _normal(shape, math.sqrt(1.0 / fans(shape)[0]))


@initializers.register("zeros")
def zeros(shape):
    """All zeros (biases; a zero weight matrix never breaks symmetry)."""
    return np.zeros(shape, dtype=backend.default_dtype())


@initializers.register("ones")
def ones(shape):
    """All ones (batchnorm scale)."""
    return np.ones(shape, dtype=backend.default_dtype())

