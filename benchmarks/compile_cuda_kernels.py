"""Compile every CUDA kernel of dltrain/backend/cuda.py with NVRTC, no GPU needed.

    python benchmarks/compile_cuda_kernels.py

Needs CuPy's NVRTC library (pip install cupy-cuda13x "nvidia-cuda-nvrtc==13.0.*", the CUDA 13.0 NVRTC of
CuPy 14.2 as on the GPU machines; CUDA 12's works too); a machine without a
GPU or driver is fine. Catches syntax and type errors in the kernels before a GPU session.
The elementwise snippets are wrapped the way CuPy wraps them (each parameter a local of type T).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from cupy_backends.cuda.libs import nvrtc

SOURCE = Path(__file__).resolve().parent.parent / "dltrain" / "backend" / "cuda.py"
CTYPES = {"T": None, "int64": "long long", "int32": "int", "bool": "bool"}


def compile_source(code: str, name: str) -> str | None:
    """None when NVRTC compiles `code`, else its log."""
    program = nvrtc.createProgram(code, f"{name}.cu", [], [])
    try:
        nvrtc.compileProgram(program, ["--std=c++17", "-arch=compute_90"])
    except Exception:  # noqa: BLE001 (NVRTC's own error type; the log says what failed)
        return nvrtc.getProgramLog(program)
    return None


def kernel_calls(tree, kind: str):
    """The literal arguments of every cupy.<kind>(...) call."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == kind:
            yield tuple(ast.literal_eval(arg) for arg in node.args)


def elementwise_kernels(tree):
    """(in_params, out_params, operation, name) of every cupy.ElementwiseKernel(...) call."""
    for args in kernel_calls(tree, "ElementwiseKernel"):
        yield args[:4]


def reduction_kernels(tree):
    """As ElementwiseKernels: the map expression sees the inputs; the reduction sees a and b (the reduce
    type, T here); the post-map sees a and the outputs. Wrapped as one body that uses all three."""
    for in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name in kernel_calls(
            tree, "ReductionKernel"):
        body = (f"T a = (T)({identity}); T b = ({map_expr}); a = ({reduce_expr}); {post_map_expr}")
        yield in_params, out_params, body, name


def wrap(in_params: str, out_params: str, operation: str, ctype: str) -> str:
    lines = [f"typedef {ctype} T;", 'extern "C" __global__ void k(long long n) {', "  long long i = 0;"]
    for param in [p.strip() for p in (in_params + "," + out_params).split(",") if p.strip()]:
        words = param.split()
        raw = words[0] == "raw"
        dtype, name = words[-2], words[-1]
        ctype_of = ctype if dtype == "T" else CTYPES[dtype]
        lines.append(f"  {ctype_of}* {name}_ptr = 0;" if raw else f"  {ctype_of} {name} = 0;")
        if raw:
            lines.append(f"  {ctype_of}* {name} = {name}_ptr;")
    lines += ["  {", operation + ";", "  }", "}"]  # CuPy appends the semicolon too
    return "\n".join(lines)


def instantiate(raw: str, kernel: str, ctype: str) -> str:
    """An explicit instantiation, as CuPy's name_expressions make NVRTC emit."""
    params = re.search(kernel + r"\(([^)]*)\)", raw).group(1)
    params = re.sub(r"\bT\b", ctype, params)
    return f"template __global__ void {kernel}<{ctype}>({params});"


def main() -> int:
    text = SOURCE.read_text()
    tree = ast.parse(text)
    failures = 0
    for in_params, out_params, operation, name in [*elementwise_kernels(tree), *reduction_kernels(tree)]:
        for ctype in ("float", "double"):
            log = compile_source(wrap(in_params, out_params, operation, ctype), name)
            print(f"{name}<{ctype}>: {'ok' if log is None else 'FAILED'}")
            if log:
                print(log)
                failures += 1
    raw = ast.literal_eval(next(n.value for n in tree.body if isinstance(n, ast.Assign)
                                and getattr(n.targets[0], "id", "") == "_SOURCE"))
    kernels = sorted(set(re.findall(r"__global__ void (\w+)", raw)))
    instantiations = "\n".join(instantiate(raw, kernel, ctype) for kernel in kernels for ctype in ("float", "double"))
    log = compile_source(raw + "\n" + instantiations, "raw_module")
    print(f"raw kernels {', '.join(kernels)} (float, double): {'ok' if log is None else 'FAILED'}")
    if log:
        print(log)
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
