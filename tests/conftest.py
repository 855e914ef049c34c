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


GPU_SKIP_REASON = f"no GPU here: {backend.gpu_unavailable_reason()}" if not backend.gpu_available() else ""
DEVICES = ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(not backend.gpu_available(),
                                                               reason=GPU_SKIP_REASON or "no GPU"))]


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device this machine has: 'cpu', and 'gpu' where CuPy finds one (else that case skips)."""
    return request.param


@pytest.fixture
def numpy_kernels(monkeypatch):
    """Hand out the NumPy twin of the CUDA kernels for host arrays, so the GPU-only branches run on the CPU."""
    import numpy_kernels as twin

    real = backend.fused
    def fused(array):
        if isinstance(array, np.ndarray):
            return twin if backend.fused_enabled() and twin.supports(array.dtype) else None
        return real(array)

    monkeypatch.setattr(backend, "fused", fused)
    return twin
