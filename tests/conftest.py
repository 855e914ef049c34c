import numpy as np
import pytest

from dltrain import backend


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same engine seed and the float32 default."""
    backend.manual_seed(0)
    backend.set_default_dtype(np.float32)
    yield
    backend.set_default_dtype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
