"""dltrain's CUDA kernels, compiled from their real source with g++ and run on the CPU.

tests/numpy_kernels.py is a twin of backend/cuda.py written as array code: it checks the code that calls
the kernels, not the kernels. This module runs the kernels themselves on a machine without a GPU:
- `RawModule` compiles the CUDA C++ source with a prelude that gives it threadIdx, blockIdx, blockDim,
  gridDim, __syncthreads, warp shuffles and atomics. Every thread of a block is a fiber; each runs to its
  next barrier, and a barrier is passed once every thread of its warp (shuffles) or block (__syncthreads)
  waits at it, so a barrier that part of them never reaches is reported as the divergence it is, not a hang.
  Kernels without barriers run their threads one after another, without fibers.
- `ElementwiseKernel` and `ReductionKernel` wrap their snippets the way CuPy does (inputs broadcast,
  one local per parameter, `i` the element index, raw parameters indexed by hand) in a loop.
Every array handed to a raw kernel is copied between guard zones filled with NaN bytes, which are
checked after the call: a write outside an array fails the test, a read outside it reads NaN.
Pointer arguments are checked against the kernel's C++ signature (element size), scalars too.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

PRELUDE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <vector>
#include <setjmp.h>
#include <ucontext.h>

using std::exp; using std::log; using std::tanh; using std::sqrt; using std::abs; using std::log1p;
using std::expm1; using std::erf; using std::pow; using std::fabs; using std::floor; using std::ceil;
using std::isnan; using std::isinf; using std::isfinite;
template <typename A, typename B> inline auto max(A a, B b) -> decltype(a + b) { return a > b ? a : b; }
template <typename A, typename B> inline auto min(A a, B b) -> decltype(a + b) { return a < b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static dim3 threadIdx, blockIdx, blockDim, gridDim;
static const int warpSize = 32;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static

namespace emu {
enum State { READY, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };
// A fiber starts on its own stack by setcontext; after that, switches are _setjmp/_longjmp (no signal-mask
// system calls, unlike swapcontext: a block reduction switches hundreds of thousands of times).
struct Fiber { ucontext_t context; jmp_buf jump; State state; bool started; };
static std::vector<Fiber> fibers;
static std::vector<char> stacks;
static jmp_buf scheduler;
static int current = 0;
static const size_t STACK = 128 * 1024;
static unsigned long long shuffle_slots[1024];
static void (*body)(void*) = nullptr;
static void* body_args = nullptr;
static char error[512];
static bool without_fibers = false;

static void entry() {
    body(body_args);
    fibers[current].state = DONE;
    _longjmp(scheduler, 1);
}

static void wait(State state) {
    if (without_fibers) {  // _barrier_free() missed one: stop loudly rather than corrupt the scheduler
        std::fprintf(stderr, "cuda_on_cpu: a barrier in a kernel run without fibers\n");
        std::abort();
    }
    fibers[current].state = state;
    if (!_setjmp(fibers[current].jump)) _longjmp(scheduler, 1);
}

static void set_thread(int t) {
    current = t;
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

static void resume(int t) {
    set_thread(t);
    if (!_setjmp(scheduler)) {
        Fiber& f = fibers[t];
        if (f.started) _longjmp(f.jump, 1);
        f.started = true;
        setcontext(&f.context);
    }
}

static bool diverged(const char* barrier, int waiting, int other) {
    std::snprintf(error, sizeof error, "divergent %s: block (%u, %u, %u) thread %d waits at one, thread %d %s",
                  barrier, blockIdx.x, blockIdx.y, blockIdx.z, waiting, other,
                  fibers[other].state == DONE ? "has returned" : "waits at another barrier");
    return false;
}

// Every ready fiber runs to its next barrier or its end; then the barriers that every thread of their warp
// (shuffles, __syncwarp) or block (__syncthreads) has reached are released. A barrier that part of its warp
// or block never reaches is reported as the divergence it is, instead of hanging.
static bool run_block(int threads) {
    static ucontext_t blank;
    static bool have_blank = getcontext(&blank) == 0;  // one system call, not one per fiber
    (void)have_blank;
    for (int t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        f.context = blank;
        f.context.uc_stack.ss_sp = stacks.data() + (size_t)t * STACK;
        f.context.uc_stack.ss_size = STACK;
        f.context.uc_link = nullptr;  // entry() never returns: it jumps back
        makecontext(&f.context, entry, 0);
        f.state = READY;
        f.started = false;
    }
    for (;;) {
        bool done = true;
        for (int t = 0; t < threads; ++t) {
            if (fibers[t].state == READY) resume(t);
            done = done && fibers[t].state == DONE;
        }
        if (done) return true;
        bool released = false;
        for (int first = 0; first < threads; first += 32) {
            const int last = std::min(first + 32, threads);
            int waiting = -1, other = -1;
            for (int t = first; t < last; ++t) {
                if (fibers[t].state == AT_WARP_BARRIER) waiting = waiting < 0 ? t : waiting;
                else other = other < 0 ? t : other;
            }
            if (waiting < 0) continue;
            if (other >= 0) return diverged("warp shuffle/sync", waiting, other);
            for (int t = first; t < last; ++t) fibers[t].state = READY;
            released = true;
        }
        if (released) continue;
        for (int t = 0; t < threads; ++t) {  // only __syncthreads waits are left
            if (fibers[t].state == DONE) {
                for (int u = 0; u < threads; ++u)
                    if (fibers[u].state == AT_BLOCK_BARRIER) return diverged("__syncthreads", u, t);
            }
        }
        for (int t = 0; t < threads; ++t) fibers[t].state = READY;
    }
}

// A kernel without barriers (`direct`) runs its threads one after another on this stack: no fibers.
static bool launch_grid(void (*kernel_body)(void*), void* args, dim3 grid, dim3 block, bool direct) {
    gridDim = grid;
    blockDim = block;
    const int threads = block.x * block.y * block.z;
    if (threads > 1024) {
        std::snprintf(error, sizeof error, "%d threads per block (at most 1024)", threads);
        return false;
    }
    fibers.resize(threads);
    if (!direct && stacks.size() < (size_t)threads * STACK) stacks.resize((size_t)threads * STACK);
    body = kernel_body;
    body_args = args;
    without_fibers = direct;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
                if (direct) {
                    for (int t = 0; t < threads; ++t) { set_thread(t); body(body_args); }
                } else if (!run_block(threads)) {
                    return false;
                }
            }
    return true;
}

template <typename T> T shuffle(T value, int source_lane) {
    const int warp = current - current % 32;
    std::memcpy(&shuffle_slots[current], &value, sizeof(T));
    wait(AT_WARP_BARRIER);
    T result;
    std::memcpy(&result, &shuffle_slots[warp + (source_lane & 31)], sizeof(T));
    wait(AT_WARP_BARRIER);
    return result;
}

template <typename A> char code() {
    if (std::is_pointer<A>::value) return 'p';
    if (std::is_floating_point<A>::value) return 'f';
    return 'i';
}
template <typename A> int size() {
    if constexpr (std::is_pointer<A>::value) return sizeof(typename std::remove_pointer<A>::type);
    else return sizeof(A);
}

template <typename... A> struct Call {
    void (*kernel)(A...);
    void** args;
    template <size_t... I> void run(std::index_sequence<I...>) {
        kernel(*reinterpret_cast<typename std::decay<A>::type*>(args[I])...);
    }
    static void trampoline(void* self) { static_cast<Call*>(self)->run(std::index_sequence_for<A...>{}); }
};

template <typename... A> const char* launch(void (*kernel)(A...), void** args, unsigned* dims, bool direct) {
    Call<A...> call{kernel, args};
    dim3 grid, block;
    grid.x = dims[0]; grid.y = dims[1]; grid.z = dims[2];
    block.x = dims[3]; block.y = dims[4]; block.z = dims[5];
    return launch_grid(&Call<A...>::trampoline, &call, grid, block, direct) ? nullptr : error;
}

template <typename... A> void signature(void (*)(A...), char* out) {
    int k = 0;
    ((k += std::sprintf(out + k, "%c%d ", code<typename std::decay<A>::type>(),
                        size<typename std::decay<A>::type>())), ...);
}
}  // namespace emu

inline void __syncthreads() { emu::wait(emu::AT_BLOCK_BARRIER); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait(emu::AT_WARP_BARRIER); }
template <typename T> T __shfl_sync(unsigned, T v, int lane, int = 32) { return emu::shuffle(v, lane); }
template <typename T> T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
    return emu::shuffle(v, (emu::current % 32) ^ mask);
}
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
    const int lane = emu::current % 32;
    return emu::shuffle(v, lane + (int)delta < 32 ? lane + (int)delta : lane);
}
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned delta, int = 32) {
    const int lane = emu::current % 32;
    return emu::shuffle(v, lane >= (int)delta ? lane - (int)delta : lane);
}
template <typename T> T atomicAdd(T* address, T value) { T old = *address; *address = old + value; return old; }
template <typename T> T __ldg(const T* p) { return *p; }
"""

CACHE = Path(os.environ.get("DLTRAIN_EMULATOR_CACHE", Path(tempfile.gettempdir()) / "dltrain-cuda-on-cpu"))
GUARD_BYTES = 256
CTYPE = {"float32": "float", "float64": "double", "int64": "long long", "int32": "int", "uint8": "unsigned char",
         "bool": "bool", "int8": "signed char", "uint32": "unsigned int", "uint64": "unsigned long long",
         "float16": None}


class KernelError(RuntimeError):
    """What a GPU would do wrong with this call: divergence, a write outside an array, a wrong argument."""


def compile_library(source: str) -> ctypes.CDLL:
    """g++ -O1 -shared, cached by the source's hash."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    CACHE.mkdir(parents=True, exist_ok=True)
    library = CACHE / f"{digest}.so"
    if not library.exists():
        code = CACHE / f"{digest}.cpp"
        code.write_text(source)
        partial = CACHE / f"{digest}.{os.getpid()}.so"
        # (no _FORTIFY_SOURCE: its longjmp check refuses the jumps between fiber stacks)
        result = subprocess.run(["g++", "-std=c++17", "-O1", "-U_FORTIFY_SOURCE", "-fno-strict-aliasing", "-shared",
                                 "-fPIC", "-w", "-o", str(partial), str(code)], capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelError(f"g++ could not compile the kernel source:\n{result.stderr[-4000:]}")
        partial.replace(library)
    return ctypes.CDLL(str(library))


def _host(array) -> np.ndarray:
    return array.view(np.ndarray) if isinstance(array, np.ndarray) else array


class _Guarded:
    """A copy of `array` between NaN-filled guard zones; `finish()` checks the guards and copies back."""

    def __init__(self, array: np.ndarray):
        self.array = array
        host = _host(array)
        nbytes = host.nbytes
        self.buffer = np.full(nbytes + 2 * GUARD_BYTES, 0xFF, dtype=np.uint8)  # 0xFF.. is a NaN in floats
        self.guard = self.buffer[:GUARD_BYTES].copy()
        # CUDA sees raw memory: the kernel reads the bytes as laid out, strides and all
        base = host if host.flags.c_contiguous else None
        if base is None:  # a view the caller laid out on purpose (strided rows): keep its whole extent
            lo, hi = np.lib.array_utils.byte_bounds(host)
            raw = np.frombuffer((ctypes.c_char * (hi - lo)).from_address(lo), dtype=np.uint8)
            self.offset = host.__array_interface__["data"][0] - lo
            self.buffer = np.full(hi - lo + 2 * GUARD_BYTES, 0xFF, dtype=np.uint8)
            self.buffer[GUARD_BYTES:GUARD_BYTES + hi - lo] = raw
            self.extent = (lo, hi)
        else:
            self.offset = 0
            self.buffer[GUARD_BYTES:GUARD_BYTES + nbytes] = host.reshape(-1).view(np.uint8)
            self.extent = None
        self.pointer = self.buffer.ctypes.data + GUARD_BYTES + self.offset

    def finish(self, name: str) -> None:
        size = len(self.buffer) - 2 * GUARD_BYTES
        if not (np.array_equal(self.buffer[:GUARD_BYTES], self.guard)
                and np.array_equal(self.buffer[GUARD_BYTES + size:], self.guard)):
            raise KernelError(f"{name} wrote outside an array of shape {self.array.shape}")
        inside = self.buffer[GUARD_BYTES:GUARD_BYTES + size]
        if self.extent is None:
            _host(self.array).reshape(-1).view(np.uint8)[...] = inside
        else:
            lo, hi = self.extent
            np.frombuffer((ctypes.c_char * (hi - lo)).from_address(lo), dtype=np.uint8)[...] = inside


_SCALAR_CODES = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8", np.dtype(np.int32): "i4",
                 np.dtype(np.int64): "i8", np.dtype(np.uint32): "i4", np.dtype(np.uint64): "i8",
                 np.dtype(np.uint8): "i1", np.dtype(np.int8): "i1", np.dtype(np.bool_): "i1"}


def _layout(array) -> tuple:
    """Where an array's values lie: two arguments with the same layout are the same memory to a kernel."""
    return array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str


class RawKernel:
    def __init__(self, library, index: int, name: str):
        self.name = name
        self._launch = getattr(library, f"launch_{index}")
        self._launch.restype = ctypes.c_char_p
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint)]
        describe = getattr(library, f"signature_{index}")
        text = ctypes.create_string_buffer(1024)
        describe(text)
        self.signature = text.value.decode().split()

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        if len(args) != len(self.signature):
            raise KernelError(f"{self.name} takes {len(self.signature)} arguments, got {len(args)}")
        # Each array is handed over as one copy: the same array twice shares it, as on a GPU; two different views
        # of one buffer would drift apart, so they are refused.
        arrays = [(k, a) for k, a in enumerate(args) if isinstance(a, np.ndarray)]
        for position, (k, a) in enumerate(arrays):
            for j, b in arrays[:position]:
                if _layout(a) != _layout(b) and np.shares_memory(_host(a), _host(b)):
                    raise KernelError(f"{self.name} arguments {j} and {k} share memory, which this CPU runner "
                                      f"cannot give a kernel")
        boxes = {}
        keep, pointers, guarded = [], [], []
        for position, (value, expected) in enumerate(zip(args, self.signature, strict=True)):
            where = f"{self.name} argument {position}"
            if isinstance(value, np.ndarray):
                if expected[0] != "p" or int(expected[1:]) != value.itemsize:
                    raise KernelError(f"{where}: the kernel takes {expected}, got an array of {value.dtype}")
                box = boxes.get(_layout(value))
                if box is None:
                    box = boxes[_layout(value)] = _Guarded(value)
                    guarded.append(box)
                slot = ctypes.c_void_p(box.pointer)
            elif isinstance(value, np.generic):
                code = _SCALAR_CODES.get(value.dtype)
                if code != expected:
                    raise KernelError(f"{where}: the kernel takes {expected}, got {value.dtype} {value}")
                slot = np.array(value)  # its bytes, as the kernel parameter's type
            else:
                raise KernelError(f"{where}: pass arrays or NumPy-typed scalars (CuPy guesses a Python "
                                  f"{type(value).__name__}'s type), got {value!r}")
            keep.append(slot)
            pointers.append(ctypes.addressof(slot) if isinstance(slot, ctypes.c_void_p) else slot.ctypes.data)
        dims = (tuple(grid) + (1, 1, 1))[:3] + (tuple(block) + (1, 1, 1))[:3]
        error = self._launch((ctypes.c_void_p * len(pointers))(*pointers), (ctypes.c_uint * 6)(*dims))
        if error:
            raise KernelError(f"{self.name}: {error.decode()}")
        for box in guarded:
            box.finish(self.name)


BARRIERS = re.compile(r"__syncthreads|__syncwarp|__shfl")


def _barrier_free(code: str, name_expression: str) -> bool:
    """True when the kernel's body reaches no barrier or shuffle, itself or through the __device__ functions
    it calls (then its threads can run one after another, without fibers: much faster)."""
    devices = {name: body for name, body in _bodies(code, r"__device__[^;{]*?\b(\w+)\s*\(")}
    blocking = {name for name, body in devices.items() if BARRIERS.search(body)}
    while True:  # functions that call blocking functions block too
        more = {name for name, body in devices.items() if name not in blocking and _calls(body, blocking)}
        if not more:
            break
        blocking |= more
    base = name_expression.split("<")[0].strip()
    bodies = [body for _, body in _bodies(code, rf"__global__[^;{{]*?\b({re.escape(base)})\s*\(")]
    return bool(bodies) and not any(BARRIERS.search(body) or _calls(body, blocking) for body in bodies)


def _calls(body: str, names) -> bool:
    return any(re.search(rf"\b{re.escape(name)}\s*[(<]", body) for name in names)


def _bodies(code: str, header: str):
    """(name, brace-matched body) of the functions whose headers match `header` (the name its group 1)."""
    for match in re.finditer(header, code):
        start = code.find("{", match.end())
        depth = 0
        for end in range(start, len(code)):
            depth += {"{": 1, "}": -1}.get(code[end], 0)
            if depth == 0:
                yield match.group(1), code[start:end + 1]
                break


class RawModule:
    """cupy.RawModule(code=..., name_expressions=[...]) compiled for the CPU."""

    def __init__(self, code: str, options=(), name_expressions=(), **_):
        self.names = list(name_expressions)
        glue = [f'extern "C" const char* launch_{k}(void** args, unsigned* dims) {{ return emu::launch(&{name}, '
                f'args, dims, {"true" if _barrier_free(code, name) else "false"}); }}\n'
                f'extern "C" void signature_{k}(char* out) {{ emu::signature(&{name}, out); }}'
                for k, name in enumerate(self.names)]
        self.library = compile_library(PRELUDE + code + "\n" + "\n".join(glue) + "\n")

    def get_function(self, name: str) -> RawKernel:
        return RawKernel(self.library, self.names.index(name), name)


# ---------------------------------------------------------------- elementwise and reduction kernels


def _parse(params: str):
    """'T x, raw int64 labels' -> [(raw, type, name)]"""
    parsed = []
    for param in (p.strip() for p in params.split(",")):
        if not param:
            continue
        words = param.split()
        parsed.append((words[0] == "raw", words[-2], words[-1]))
    return parsed


def _resolve_type(params, values):
    """The dtype that `T` stands for: the first array bound to a T parameter (then NumPy scalars)."""
    for want_array in (True, False):
        for (_, type_name, _), value in zip(params, values, strict=False):
            if type_name == "T" and value is not None and isinstance(value, np.ndarray if want_array else np.generic):
                return np.dtype(value.dtype)
    raise KernelError("cannot tell what T is: no array or typed scalar is bound to a T parameter")


def _dtype(type_name: str, t: np.dtype) -> np.dtype:
    return t if type_name == "T" else np.dtype(type_name)


class _SnippetKernel:
    def __init__(self, in_params, out_params, name):
        self.inputs, self.outputs, self.name = _parse(in_params), _parse(out_params), name
        self._compiled = {}

    def _library(self, t: np.dtype, kinds: tuple[str, ...]):
        key = (t.str, kinds)
        if key not in self._compiled:
            source = PRELUDE + f"typedef {CTYPE[t.name]} T;\n" + self._source(kinds)
            library = compile_library(source)
            library.run.argtypes = [ctypes.c_longlong, ctypes.c_longlong, ctypes.POINTER(ctypes.c_void_p)]
            self._compiled[key] = library
        return self._compiled[key]

    def _bind(self, args):
        params = self.inputs + self.outputs
        if not len(self.inputs) <= len(args) <= len(params):
            raise KernelError(f"{self.name} takes {len(self.inputs)} inputs and up to {len(self.outputs)} "
                              f"outputs, got {len(args)} arguments")
        values = list(args) + [None] * (len(params) - len(args))
        return params, values, _resolve_type(params, values)

    def _declaration(self, k: int, param, kind: str, t) -> str:
        """One parameter as CuPy's wrapper declares it: inputs are const values, outputs references,
        raw parameters pointers (indexed by hand), scalars values."""
        raw, type_name, name = param
        ctype = "T" if type_name == "T" else CTYPE[type_name]
        if raw:
            return f"{ctype}* {name} = ({ctype}*)args[{k}];"
        if kind == "s":
            return f"const {ctype} {name} = *({ctype}*)args[{k}];"
        if k >= len(self.inputs):
            return f"{ctype}& {name} = (({ctype}*)args[{k}])[i];"
        return f"const {ctype} {name} = (({ctype}*)args[{k}])[i];"


class ElementwiseKernel(_SnippetKernel):
    """cupy.ElementwiseKernel(in_params, out_params, operation, name) run as a loop over the elements."""

    def __init__(self, in_params, out_params, operation, name="kernel", **_):
        super().__init__(in_params, out_params, name)
        self.operation = operation

    def _source(self, kinds):
        params = self.inputs + self.outputs
        lines = ['extern "C" void run(long long n, long long, void** args) {',
                 "  struct { long long n; long long size() const { return n; } } _ind{n};",
                 "  for (long long i = 0; i < n; ++i) {"]
        lines += [f"    {self._declaration(k, p, kinds[k], None)}" for k, p in enumerate(params)]
        lines += [f"    {{ {self.operation}; }}", "  }", "}"]
        return "\n".join(lines) + "\n"

    def __call__(self, *args, size=None):
        params, values, t = self._bind(args)
        arrays = [v for (raw, _, _), v in zip(params, values, strict=True) if not raw and isinstance(v, np.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else (size,)
        from fake_cupy import DeviceArray  # the result is a stand-in GPU array

        slots, kinds, results, write_back = [], [], [], []
        for k, (param, value) in enumerate(zip(params, values, strict=True)):
            raw, type_name, name = param
            dtype = _dtype(type_name, t)
            output = k >= len(self.inputs)
            if output and value is None:
                value = np.empty(shape, dtype=dtype).view(DeviceArray)
            if output:
                results.append(value)
                if not raw and (value.shape != shape or value.dtype != dtype):
                    raise KernelError(f"{self.name}: output {name} must be {dtype} of shape {shape}, "
                                      f"got {value.dtype} {value.shape}")
            if raw:
                data = np.ascontiguousarray(_host(value), dtype=dtype)
                kinds.append("r")
            elif isinstance(value, np.ndarray):
                data = np.ascontiguousarray(np.broadcast_to(_host(value).astype(dtype, copy=False), shape))
                kinds.append("a")
            else:
                data = np.array(value, dtype=dtype)
                kinds.append("s")
            if output and data is not _host(value) and not np.shares_memory(data, _host(value)):
                write_back.append((value, data))
            elif output:
                data = _host(value)
            slots.append(data)
        library = self._library(t, tuple(kinds))
        pointers = (ctypes.c_void_p * len(slots))(*(s.ctypes.data for s in slots))
        library.run(int(np.prod(shape)), 0, pointers)
        for target, data in write_back:
            _host(target)[...] = data
        return results[0] if len(results) == 1 else tuple(results)


class ReductionKernel(_SnippetKernel):
    """cupy.ReductionKernel(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name)."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name="reduce", **_):
        super().__init__(in_params, out_params, name)
        self.map_expr, self.reduce_expr, self.post_map_expr, self.identity = (
            map_expr, reduce_expr, post_map_expr, identity)

    def _source(self, kinds):
        n_in = len(self.inputs)
        # As CuPy: the map sees the inputs, the reduction only a and b, the post-map a and the outputs.
        lines = ['extern "C" void run(long long outputs, long long length, void** args) {',
                 f"  auto reduce = [](const T a, const T b) -> T {{ return ({self.reduce_expr}); }};",
                 "  for (long long o = 0; o < outputs; ++o) {",
                 f"    T accumulated = (T)({self.identity});",
                 "    for (long long j = 0; j < length; ++j) {",
                 "      const long long i = o * length + j;",
                 "      const T mapped = [&]() -> T {"]
        lines += [f"        {self._declaration(k, p, kinds[k], None)}" for k, p in enumerate(self.inputs)]
        lines += [f"        return ({self.map_expr});", "      }();",
                  "      accumulated = reduce(accumulated, mapped);", "    }",
                  "    { const long long i = o; const T a = accumulated;"]
        lines += [f"      {self._declaration(n_in + k, p, kinds[n_in + k], None)}" for k, p in enumerate(self.outputs)]
        lines += [f"      {self.post_map_expr};", "    }", "  }", "}"]
        return "\n".join(lines) + "\n"

    def __call__(self, *args, axis=None, keepdims=False):
        params, values, t = self._bind(args)
        inputs = values[:len(self.inputs)]
        arrays = [v for v in inputs if isinstance(v, np.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        axes = tuple(range(len(shape))) if axis is None else tuple(
            a % len(shape) for a in ((axis,) if np.isscalar(axis) else axis))
        kept = tuple(a for a in range(len(shape)) if a not in axes)
        out_shape = tuple(shape[a] for a in kept)
        length = int(np.prod([shape[a] for a in axes]))
        from fake_cupy import DeviceArray

        slots, kinds = [], []
        for (_, type_name, _), value in zip(self.inputs, inputs, strict=True):
            dtype = _dtype(type_name, t)
            if isinstance(value, np.ndarray):
                full = np.broadcast_to(_host(value).astype(dtype, copy=False), shape)
                slots.append(np.ascontiguousarray(full.transpose(kept + axes)))
                kinds.append("a")
            else:
                slots.append(np.array(value, dtype=dtype))
                kinds.append("s")
        (_, out_type, _), = self.outputs
        result = np.empty(out_shape, dtype=_dtype(out_type, t))
        slots.append(result)
        kinds.append("a")
        library = self._library(t, tuple(kinds))
        pointers = (ctypes.c_void_p * len(slots))(*(s.ctypes.data for s in slots))
        library.run(int(np.prod(out_shape)), length, pointers)
        if keepdims:
            result = result.reshape(tuple(1 if a in axes else shape[a] for a in range(len(shape))))
        return result.view(DeviceArray)


def install(cupy_module) -> None:
    """Give a tests/fake_cupy.py module the kernel classes of this emulator."""
    cupy_module.RawModule = RawModule
    cupy_module.ElementwiseKernel = ElementwiseKernel
    cupy_module.ReductionKernel = ReductionKernel


__all__ = ["ElementwiseKernel", "KernelError", "RawModule", "ReductionKernel", "install"]
