import shutil
import sys

import numpy as np
import pytest

from dltrain import backend


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same engine seed and the float32 default, and with TF32 off (float32 results
    on a GPU are compared closely; the TF32 tests turn it on)."""
    backend.manual_seed(0)
    backend.set_default_dtype(np.float32)
    with backend.tf32_convolutions(False):
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
def fake_gpu(monkeypatch):
    """A stand-in GPU (tests/fake_cupy.py): device 'gpu' works, and mixing its arrays with host arrays
    raises as CuPy does. The fused kernels are backend/cuda.py's own, compiled for the CPU."""
    import fake_cupy

    _, kernels = emulated_cuda()
    fake = fake_cupy.module()
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setattr(backend, "_device_rngs", {})
    monkeypatch.setattr(backend, "_tf32_devices", {})
    monkeypatch.setattr(backend, "nccl_module", lambda: None)  # the stand-in has no NCCL, even beside a real CuPy
    for name, module in fake_cupy.cupyx_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "fused", lambda array: kernels if backend.fused_enabled() and isinstance(
        array, fake.ndarray) and kernels.supports(array.dtype) else None)
    return fake



_emulated = None


def emulated_cuda():
    """(stand-in cupy, backend/cuda.py imported against it): the real CUDA kernels compiled for the CPU by
    tests/cuda_on_cpu.py, working on tests/fake_cupy.py's arrays. Imported once per test session."""
    global _emulated
    if shutil.which("g++") is None:
        pytest.skip("no g++ here: the stand-in GPU runs the CUDA kernels compiled for the CPU by g++ "
                    "(apt-get install g++)")
    if _emulated is None:
        import importlib.util
        from pathlib import Path

        import cuda_on_cpu
        import fake_cupy

        fake = fake_cupy.module()
        cuda_on_cpu.install(fake)
        source = Path(backend.__file__).with_name("cuda.py")
        spec = importlib.util.spec_from_file_location("dltrain_cuda_on_cpu", source)
        kernels = importlib.util.module_from_spec(spec)
        saved = sys.modules.get("cupy")
        sys.modules["cupy"] = fake  # what `import cupy` in cuda.py finds
        try:
            spec.loader.exec_module(kernels)
        finally:
            if saved is None:
                del sys.modules["cupy"]
            else:
                sys.modules["cupy"] = saved
        _emulated = fake, kernels
    return _emulated


@pytest.fixture(params=["cuda-on-cpu", pytest.param("gpu", marks=pytest.mark.skipif(
    not backend.gpu_available(), reason=GPU_SKIP_REASON or "no GPU"))])
def cuda_kernels(request):
    """(cupy, backend.cuda): the real ones on a GPU; everywhere, the same kernels compiled for the CPU
    (tests/cuda_on_cpu.py) on the stand-in GPU arrays."""
    if request.param == "gpu":
        import cupy

        from dltrain.backend import cuda

        return cupy, cuda
    request.getfixturevalue("fake_gpu")  # the backend knows the stand-in arrays (cuda.py takes some reference code)
    return emulated_cuda()


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of this session's own (tests/pg_server.py: initdb into a temporary directory, a free
    127.0.0.1 port, run as `nobody` under root), stopped and removed at the end; skips, saying why, where none can
    be started (no server binaries, no psycopg2)."""
    import pg_server

    server = pg_server.PostgresServer()
    try:
        server.start()
    except pg_server.Unavailable as exc:
        server.stop()
        pytest.skip(f"no PostgreSQL server for this test: {exc}")
    yield server
    server.stop()
