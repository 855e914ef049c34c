"""The array engine: the one module that knows NumPy from CuPy.

Everything else asks it for `xp` (the array module of a device or of an array), for the
default float dtype, and for random numbers, so that CPU and GPU code paths are the same code.
CuPy stays optional: it is imported the first time a GPU is asked for. The hot chains of ops also
have fused kernels (the interface in backend/kernels.py), handed out by `fused(array)`: compiled
with Numba for NumPy arrays (backend/cpu.py), CUDA kernels for GPU arrays (backend/cuda.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys

import numpy

from ..errors import DeviceError

# Host-side NumPy, for code that works on host arrays (file formats, metrics, plots).
np = numpy

DEVICES = ("cpu", "gpu", "auto")

_cupy = None  # the cupy module once imported successfully
_cuda_kernels = None  # backend/cuda.py once imported
_cpu_kernels = None  # backend/cpu.py once imported; False when Numba is missing
_fused_enabled = os.environ.get("DLTRAIN_FUSED_KERNELS", "1") != "0"  # 0: plain NumPy / CuPy ops only
_tf32_enabled = os.environ.get("DLTRAIN_TF32", "1") != "0"  # 0: convolutions in full float32 on the GPU too
_tf32_devices: dict[int, bool] = {}  # device id -> has TF32 tensor cores (compute capability 8.0 or later)
_cupy_error: str | None = None  # why importing or using cupy failed
_default_dtype = numpy.dtype(numpy.float32)
_host_rng = numpy.random.Generator(numpy.random.PCG64(0))
_device_rngs: dict[str, object] = {}


# ---------------------------------------------------------------- host memory


_memory_reuse: bool | None = None  # whether glibc was asked to keep freed blocks (None: not asked yet)


def reuse_freed_memory() -> bool:
    """Ask glibc to keep large freed blocks for reuse instead of returning them to the OS; called when training
    starts (once), never on import: it changes malloc for the whole process.

    By default each array over 128 KiB is a fresh mmap: the kernel zeroes and page-faults it on
    first touch and unmaps it on free. A training step allocates the same sizes every time, so
    that churn cost about a third of a CNN step and half of a GRU step here (measured).
    """
    global _memory_reuse
    if _memory_reuse is None:
        _memory_reuse = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
            except OSError:
                return False
            m_trim_threshold, m_mmap_threshold = -1, -3
            _memory_reuse = (bool(libc.mallopt(m_mmap_threshold, 32 << 20))
                             and bool(libc.mallopt(m_trim_threshold, 1 << 30)))
    return _memory_reuse


# ---------------------------------------------------------------- devices


def _load_cupy():
    """Import cupy and check that a GPU answers; remember why not otherwise."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy  # noqa: PLC0415 (optional dependency, imported on demand)
    except ImportError as exc:
        _cupy_error = f"CuPy is not installed ({exc}); install it with: pip install 'dltrain[gpu]'"
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA raises its own error types; all mean "no usable GPU"
        text = str(exc)
        if "insufficient" in text or "driver" in text.lower():  # what CuPy says on a machine without one
            _cupy_error = (f"CuPy found no NVIDIA driver it can use ({text}): this needs an NVIDIA GPU with a "
                           f"driver that supports CuPy's CUDA version")
        else:
            _cupy_error = f"CuPy is installed but no GPU is usable: {text}"
        return None
    if count < 1:
        _cupy_error = "CuPy is installed but found no GPU"
        return None
    _cupy = cupy
    return cupy


def gpu_available() -> bool:
    return _load_cupy() is not None


def gpu_unavailable_reason() -> str | None:
    _load_cupy()
    return _cupy_error


def resolve_device(name: str) -> str:
    """'cpu' | 'gpu' | 'auto' -> 'cpu' or 'gpu'; a clear error when the GPU is not there."""
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}: expected one of {', '.join(DEVICES)}")
    if name == "auto":
        return "gpu" if gpu_available() else "cpu"
    if name == "gpu" and not gpu_available():
        raise DeviceError(f"device 'gpu' was asked for, but {_cupy_error}; to train on the CPU use --device cpu "
                          f"(or device: auto, which takes a GPU only when there is one)")
    return name


def select_gpu(local_rank: int) -> None:
    """Use GPU number local_rank (modulo the GPUs present) in this process: one GPU per MPI rank."""
    cupy = _load_cupy()
    if cupy is None:
        raise DeviceError(f"device 'gpu' was asked for, but {_cupy_error}")
    cupy.cuda.Device(local_rank % cupy.cuda.runtime.getDeviceCount()).use()


def nccl_module():
    """CuPy's NCCL binding (cupy.cuda.nccl) when this CuPy has it and NCCL loads; else None."""
    try:
        from cupy.cuda import nccl  # noqa: PLC0415
    except ImportError:
        return None
    return nccl if getattr(nccl, "available", True) else None


def gpu_descriptions() -> list[str]:
    """One line per GPU CuPy sees ("0: NVIDIA H100 80GB HBM3, 79.1 GiB"); empty without a usable GPU."""
    cupy = _load_cupy()
    if cupy is None:
        return []
    lines = []
    for index in range(cupy.cuda.runtime.getDeviceCount()):
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        lines.append(f"{index}: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
    return lines


def library_versions() -> dict[str, str]:
    """NumPy's version, and CuPy's once a GPU is in use."""
    versions = {"numpy": numpy.__version__}
    if _cupy is not None:
        versions["cupy"] = getattr(_cupy, "__version__", "unknown")
    return versions


def xp_for(device: str):
    """The array module of a resolved device name."""
    return _load_cupy() if device == "gpu" else numpy


def array_module(array):
    """numpy or cupy, whichever owns `array` (host scalars and lists count as numpy)."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy
    return numpy


def device_of(array) -> str:
    return "gpu" if array_module(array) is not numpy else "cpu"


def to_device(array, device: str):
    """Copy an array to 'cpu' or 'gpu' (no copy when it is already there)."""
    if device == "gpu":
        return xp_for("gpu").asarray(array)
    return to_numpy(array)


def to_numpy(array):
    """A host NumPy array from a NumPy or CuPy array."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return numpy.asarray(array)


def kernels_for(array):
    """The kernel set (the interface of backend/kernels.py) that ops call for `array`: the compiled one where it
    is on (fused), else the plain array code of backend/reference.py."""
    return fused(array) or reference


def fused(array):
    """The compiled kernels for `array`: backend/cpu.py for a NumPy array, backend/cuda.py for a GPU array; None
    when they are off (DLTRAIN_FUSED_KERNELS=0), for other dtypes, or on the CPU without Numba."""
    global _cuda_kernels
    if not _fused_enabled:
        return None
    if type(array) is numpy.ndarray:
        kernels = _cpu_kernels if _cpu_kernels is not None else _load_cpu_kernels()
        return kernels if kernels and kernels.supports(array.dtype) else None
    if _cupy is None or not isinstance(array, _cupy.ndarray):
        return None
    if _cuda_kernels is None:
        from . import cuda  # noqa: PLC0415 (needs cupy, so only once a GPU is in use)

        _cuda_kernels = cuda
    return _cuda_kernels if _cuda_kernels.supports(array.dtype) else None


def _load_cpu_kernels():
    """Import backend/cpu.py (Numba); without Numba, say once that the plain NumPy code runs instead."""
    global _cpu_kernels
    # OpenMP threads that spin after a loop take the cores from BLAS's threads: with GNU OpenMP's default spin
    # a small MLP trained twenty times slower here. A short spin keeps the wake-up fast (read when it loads).
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    try:
        import numba  # noqa: PLC0415 (a second or so to import: only once a model runs)
    except ImportError as exc:
        _cpu_kernels = False
        print(f"dltrain: Numba is not installed ({exc}); running the plain NumPy code, without the compiled CPU "
              f"kernels (pip install numba)", file=sys.stderr)
        return _cpu_kernels
    package_cache = os.path.join(os.path.dirname(__file__), "__pycache__")
    if not os.environ.get("NUMBA_CACHE_DIR") and not _writable(package_cache):
        numba.config.CACHE_DIR = os.path.join(_user_cache(), "dltrain", "numba")
    cache = numba.config.CACHE_DIR or package_cache
    if not any(name.startswith("cpu.") and name.endswith(".nbi") for name in _listdir(cache)):
        print(f"dltrain: compiling the CPU kernels for this machine (once; cached in {cache})", file=sys.stderr)
    from . import cpu  # noqa: PLC0415

    _cpu_kernels = cpu
    apply_threads(_threads)  # what was set before the kernels loaded, else the default
    return cpu


def _writable(directory: str) -> bool:
    if os.path.isdir(directory):
        return os.access(directory, os.W_OK)
    return os.access(os.path.dirname(directory), os.W_OK)


def _listdir(directory: str) -> list[str]:
    """The names in `directory` (Numba keeps them under a subfolder named after the package path when its
    cache directory is a user-wide one), or none when it does not exist."""
    names = []
    for _, _, files in os.walk(directory):
        names.extend(files)
    return names


def _user_cache() -> str:
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


# ---------------------------------------------------------------- CPU threads

_threads: int | None = None  # what the CPU kernels and BLAS were last set to


def default_threads(local_ranks: int = 1) -> int:
    """DLTRAIN_THREADS when set, else this process's share of the cores: all of them, or cores / ranks when
    MPI puts `local_ranks` processes on one machine (no oversubscription)."""
    value = os.environ.get("DLTRAIN_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise DeviceError(f"DLTRAIN_THREADS must be a whole number of at least 1, got {value!r}")
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_ranks))


def apply_threads(threads: int | None = None) -> int:
    """Use `threads` (default: default_threads()) for the compiled CPU kernels and for BLAS; returns it."""
    global _threads
    threads = default_threads() if threads is None else threads
    if _cpu_kernels:
        import numba  # noqa: PLC0415

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if threads != _threads:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        threadpool_limits(threads, user_api="blas")
        _threads = threads
    return threads


def threads() -> int:
    """The CPU threads in use (BLAS and the compiled kernels)."""
    return _threads if _threads is not None else default_threads()


def fused_enabled() -> bool:
    return _fused_enabled


def fused_kernels(enabled: bool):
    """Turn the fused kernels off (or on) for a while: tests compare both paths, benchmarks time both."""
    return _switched("_fused_enabled", enabled)


def tf32_enabled() -> bool:
    return _tf32_enabled


def tf32_convolutions(enabled: bool):
    """Allow (or forbid) TF32 in the GPU's convolution products for a while: tests compare exactly with it off."""
    return _switched("_tf32_enabled", enabled)


@contextlib.contextmanager
def _switched(name: str, value: bool):
    """This module's switch `name` set to `value` inside the with-block, restored after."""
    module = sys.modules[__name__]
    previous = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, previous)


@contextlib.contextmanager
def tf32_products(array):
    """Inside, float32 matrix products of GPU arrays like `array` may run on TF32 tensor cores (10-bit
    mantissa inputs, float32 accumulation): what PyTorch does by default for cuDNN convolutions, so the
    convolutions use it. A no-op on the CPU, for float64, on GPUs without TF32, or with DLTRAIN_TF32=0."""
    core = getattr(_cupy, "_core", None)
    if (not _tf32_enabled or core is None or not isinstance(array, _cupy.ndarray) or array.dtype != numpy.float32
            or not _has_tf32(array.device.id)):
        yield
        return
    previous = core.get_compute_type(numpy.float32)
    core.set_compute_type(numpy.float32, core._routines_linalg.COMPUTE_TYPE_TF32)
    try:
        yield
    finally:
        core.set_compute_type(numpy.float32, previous)


def _has_tf32(device_id: int) -> bool:
    if device_id not in _tf32_devices:
        _tf32_devices[device_id] = int(_cupy.cuda.Device(device_id).compute_capability) >= 80
    return _tf32_devices[device_id]


def synchronize(device: str) -> None:
    """Wait for queued GPU work (for timing); nothing to do on CPU."""
    if device == "gpu":
        _cupy.cuda.Device().synchronize()


# ---------------------------------------------------------------- dtypes


def default_dtype():
    return _default_dtype


def set_default_dtype(dtype) -> None:
    global _default_dtype
    dtype = numpy.dtype(dtype)
    if dtype not in (numpy.float32, numpy.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dtype}")
    _default_dtype = dtype


@contextlib.contextmanager
def default_dtype_as(dtype):
    """Temporarily build parameters and constants in `dtype` (gradient checks use float64)."""
    previous = _default_dtype
    set_default_dtype(dtype)
    try:
        yield
    finally:
        set_default_dtype(previous)


def is_floating(array) -> bool:
    return array.dtype.kind == "f"


# ---------------------------------------------------------------- randomness


def manual_seed(seed: int) -> None:
    """One seed governs initialisation, shuffling and dropout."""
    global _host_rng
    _host_rng = numpy.random.Generator(numpy.random.PCG64(seed))
    _device_rngs.clear()


def host_rng() -> numpy.random.Generator:
    """The run's generator for initial weights and shuffling (host arrays)."""
    return _host_rng


def _device_rng(device: str):
    if device == "cpu":
        return _host_rng
    if device not in _device_rngs:
        _device_rngs[device] = _load_cupy().random.default_rng(_seed_from_host_state())
    return _device_rngs[device]


def _seed_from_host_state() -> int:
    """A seed for the GPU's generator read off the host generator's state without advancing it: the one
    run seed still decides the GPU's draws, and the host stream (init, shuffling) stays the same as on a CPU."""
    state = _host_rng.bit_generator.state["state"]
    return (state["state"] ^ state["inc"]) % 2**63


def reseed_device_generator(device: str) -> None:
    """Derive the GPU's generator afresh from the host one (nothing to do on the CPU, which uses the host one).

    The trainer does this at every epoch's start: checkpoints store the host generator's state only, so
    a resumed run then draws the same dropout masks as an uninterrupted one."""
    if device != "cpu":
        _device_rngs[device] = _load_cupy().random.default_rng(_seed_from_host_state())


def uniform_like(array, shape=None):
    """Uniform [0, 1) numbers in `array`'s dtype on `array`'s device (dropout masks)."""
    shape = array.shape if shape is None else shape
    dtype = array.dtype if is_floating(array) else _default_dtype
    return _device_rng(device_of(array)).random(shape, dtype=dtype)


def get_rng_state() -> dict:
    """JSON-able state of the host generator (checkpoints store it)."""
    return _host_rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    _host_rng.bit_generator.state = state
    _device_rngs.clear()


# ---------------------------------------------------------------- kernels numpy and cupy spell differently


def scatter_add(target, indices, values) -> None:
    """target[indices] += values, accumulating repeated indices (in place)."""
    xp = array_module(target)
    if xp is numpy:
        numpy.add.at(target, indices, values)
    else:
        import cupyx  # noqa: PLC0415

        cupyx.scatter_add(target, indices, values)


_SQRT_PI = math.sqrt(math.pi)


def erf(array):
    """Error function, accurate to ~1e-15 in float64 (numpy has none built in)."""
    xp = array_module(array)
    if xp is not numpy:
        import cupyx.scipy.special  # noqa: PLC0415

        return cupyx.scipy.special.erf(array)
    x = numpy.asarray(array, dtype=numpy.float64)
    ax = numpy.abs(x)
    small = ax < 2.5
    # |x| < 2.5: erf = 2/sqrt(pi) exp(-x^2) sum 2^n x^(2n+1) / (1*3*...*(2n+1)), all terms positive.
    xs = numpy.where(small, ax, 0.0)
    x2 = xs * xs
    term = xs.copy()
    total = xs.copy()
    for n in range(1, 60):
        term *= 2.0 * x2 / (2 * n + 1)
        total += term
    erf_small = 2.0 / _SQRT_PI * numpy.exp(-x2) * total
    # |x| >= 2.5: erfc from its continued fraction, evaluated bottom-up at a fixed depth.
    xl = numpy.where(small, 2.5, ax)
    frac = xl.copy()
    for k in range(60, 0, -1):
        frac = xl + (k / 2.0) / frac
    erf_large = 1.0 - numpy.exp(-xl * xl) / (_SQRT_PI * frac)
    result = numpy.sign(x) * numpy.where(small, erf_small, erf_large)
    return result.astype(array.dtype if is_floating(numpy.asarray(array)) else numpy.float64, copy=False)


# Last: the reference kernels are written with array_module and erf above.
from . import reference  # noqa: E402
