"""A stand-in for CuPy on machines without a GPU: NumPy arrays that refuse to meet host arrays.

CuPy raises when a GPU array is combined with a NumPy array (`gpu + host`, `cupy.concatenate([gpu,
host])`, a host index array): every such place in dltrain is a bug that only a GPU would show. Here a
"device" array is a NumPy subclass that raises the same way, so the GPU code paths of the trainer,
evaluation, data and optimizers run on the CPU and such mixing fails in CI. The fused CUDA kernels are
backend/cuda.py's own, compiled for the CPU by tests/cuda_on_cpu.py. What it cannot catch:
`numpy.asarray(device_array)` (a subclass converts silently), races between GPU threads, and speed.
"""

from __future__ import annotations

import types

import numpy as np


class MixedDevicesError(TypeError):
    pass


class DeviceArray(np.ndarray):
    """A NumPy array playing a CuPy array."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host(inputs, f"{ufunc.__name__}.{method}")
        if out is not None:
            _refuse_host(out, f"{ufunc.__name__}.{method} out=")
            kwargs["out"] = tuple(_host_view(o) for o in out)
        result = getattr(ufunc, method)(*[_host_view(i) for i in inputs], **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host(args, func.__name__)
        _refuse_host(tuple(kwargs.values()), func.__name__)
        return _device(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, index):
        _refuse_host(index if isinstance(index, tuple) else (index,), "indexing")
        host, index = _host_view(self), _unwrap(index)
        result = host[index]
        if isinstance(result, np.generic):  # CuPy gives a 0-d view of the element, not a copy
            result = host[(index if isinstance(index, tuple) else (index,)) + (Ellipsis,)]
        return _device(result)

    def __setitem__(self, index, value):
        _refuse_host(index if isinstance(index, tuple) else (index,), "indexing")
        _refuse_host((value,), "assignment")
        _host_view(self)[_unwrap(index)] = _unwrap(value)

    def __float__(self):
        return float(_host_view(self))

    def __int__(self):
        return int(_host_view(self))

    def __bool__(self):
        return bool(_host_view(self))

    def item(self, *args):
        return _host_view(self).item(*args)

    def tolist(self):
        raise MixedDevicesError("tolist() of a GPU array: use backend.to_numpy first")

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    @property
    def data(self):
        """As CuPy's: a memory pointer whose .ptr is the buffer's address (what NCCL calls take)."""
        return types.SimpleNamespace(ptr=self.ctypes.data)


def _host_view(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _unwrap(value):
    if isinstance(value, DeviceArray):
        return value.view(np.ndarray)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _device(result):
    if isinstance(result, np.ndarray):
        return result if isinstance(result, DeviceArray) else result.view(DeviceArray)
    if isinstance(result, np.generic):  # CuPy's reductions give 0-d arrays, not scalars
        return np.asarray(result).view(DeviceArray)
    if isinstance(result, tuple):
        return tuple(_device(r) for r in result)
    if isinstance(result, list):
        return [_device(r) for r in result]
    return result


def _refuse_host(values, where: str) -> None:
    for value in values:
        if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
            raise MixedDevicesError(f"{where}: a host (NumPy) array of shape {value.shape} met a GPU array")
        if isinstance(value, (list, tuple)):
            _refuse_host(value, where)


def asarray(a, dtype=None, order=None):
    if isinstance(a, DeviceArray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return np.array(a, dtype=dtype, order=order or "K", copy=True).view(DeviceArray)


def asnumpy(a):
    return np.array(_host_view(a), copy=True)


def _creation(name):
    make = getattr(np, name)

    def create(*args, **kwargs):
        _refuse_host(args, name)
        return _device(make(*_unwrap(args), **_unwrap(kwargs)))

    create.__name__ = name
    return create


class _Generator:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def random(self, shape, dtype=np.float64):
        return self.rng.random(shape, dtype=dtype).view(DeviceArray)


class _Device:
    compute_capability = "90"  # as an H100's: TF32 tensor cores

    def synchronize(self):
        pass

    def use(self):
        pass


class _Stream:
    ptr = 0

    def synchronize(self):
        pass


def module():
    """A module object with the part of CuPy's API that dltrain uses."""
    cupy = types.ModuleType("fake_cupy")

    def fallback(name):
        attribute = getattr(np, name)
        if callable(attribute) and not isinstance(attribute, type):
            return _creation(name)
        return attribute

    cupy.__getattr__ = fallback
    cupy.ndarray = DeviceArray
    cupy.asarray = asarray
    cupy.ascontiguousarray = lambda a, dtype=None: asarray(np.ascontiguousarray(_host_view(a), dtype=dtype))
    cupy.asnumpy = asnumpy
    cupy.random = types.SimpleNamespace(default_rng=_Generator)
    properties = {"name": b"Stand-in GPU", "totalGlobalMem": 80 * 2**30}
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda index: properties),
        Device=lambda index=0: _Device(), get_current_stream=lambda: _Stream())
    compute_types = {}  # CuPy's per-dtype cuBLAS compute type (1 default, 7 TF32), as cupy._core keeps it
    cupy._core = types.SimpleNamespace(
        get_compute_type=lambda dtype: compute_types.get(np.dtype(dtype), 1),
        set_compute_type=lambda dtype, kind: compute_types.__setitem__(np.dtype(dtype), kind),
        _routines_linalg=types.SimpleNamespace(COMPUTE_TYPE_DEFAULT=1, COMPUTE_TYPE_TF32=7))
    cupy.__version__ = "stand-in"
    cupy.lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(
        as_strided=lambda a, shape, strides: np.lib.stride_tricks.as_strided(
            _host_view(a), shape=shape, strides=strides).view(DeviceArray)))
    for name in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool_", "dtype", "inf", "nan",
                 "newaxis", "pi"):
        setattr(cupy, name, getattr(np, name))
    return cupy


def cupyx_modules():
    """cupyx, cupyx.scipy and cupyx.scipy.special (scatter_add and erf), for sys.modules."""
    cupyx = types.ModuleType("cupyx")

    def scatter_add(target, indices, values):
        _refuse_host((target, values), "scatter_add")
        np.add.at(_host_view(target), _unwrap(indices), _unwrap(values))

    cupyx.scatter_add = scatter_add
    scipy = types.ModuleType("cupyx.scipy")
    special = types.ModuleType("cupyx.scipy.special")

    def erf(a):
        from dltrain import backend

        return asarray(backend.erf(asnumpy(a)))

    special.erf = erf
    cupyx.scipy, scipy.special = scipy, special
    return {"cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.special": special}
