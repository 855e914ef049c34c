import sys

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
DEVICES = ["cpu", "stand-in-gpu", pytest.param("gpu", marks=pytest.mark.skipif(not backend.gpu_available(),
                                                                               reason=GPU_SKIP_REASON or "no GPU"))]


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device: 'cpu'; 'gpu' on the stand-in GPU arrays of tests/fake_cupy.py (everywhere); and the
    real 'gpu' where CuPy finds one (else that case skips)."""
    if request.param == "stand-in-gpu":
        request.getfixturevalue("fake_gpu")
        return "gpu"
    return request.param


@pytest.fixture(params=DEVICES[1:])
def gpu(request):
    """'gpu': the stand-in GPU everywhere, and the real one where CuPy finds one."""
    if request.param == "stand-in-gpu":
        request.getfixturevalue("fake_gpu")
    return "gpu"


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


@pytest.fixture
def fake_gpu(monkeypatch):
    """A stand-in GPU (tests/fake_cupy.py): device 'gpu' works, and mixing its arrays with host arrays
    raises as CuPy does. The fused kernels are their NumPy twin."""
    import fake_cupy
    import numpy_kernels as twin

    fake = fake_cupy.module()
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setattr(backend, "_device_rngs", {})
    for name, module in fake_cupy.cupyx_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "fused", lambda array: twin if backend.fused_enabled() and isinstance(
        array, fake.ndarray) and twin.supports(array.dtype) else None)
    return fake
