"""GPU kernel launches per training step, counted without a GPU.

    python benchmarks/gpu_launches.py                       # the CNN, GRU and MLP configs, fused and plain
    python benchmarks/gpu_launches.py configs/fashion_cnn.yaml --detail

A small model's GPU step is bound by launches (each costs the host several microseconds), so their
number is the first measure of the GPU code. The step runs on the stand-in GPU of the tests
(tests/fake_cupy.py) with the real CUDA kernels compiled for the CPU (tests/cuda_on_cpu.py; needs g++),
and every array operation that would launch a kernel on CuPy is counted: ufuncs and reductions,
matrix products, copies (ascontiguousarray, astype, reshapes of non-contiguous arrays, fancy
indexing, assignments), zero-filled allocations and the fused kernels; views and empty allocations are
free. "plain" is the same step with the fused kernels off (DLTRAIN_FUSED_KERNELS=0). Batch 128, one step
after two warm-up steps.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import conftest  # noqa: E402 (the stand-in GPU and the kernels compiled for the CPU)
import cuda_on_cpu  # noqa: E402
import fake_cupy  # noqa: E402

from dltrain import backend  # noqa: E402
from dltrain.autograd import Tensor  # noqa: E402
from dltrain.config import load_config  # noqa: E402
from dltrain.training import rundir as files  # noqa: E402
from dltrain.training.reporting import SilentReporter  # noqa: E402
from dltrain.training.trainer import Trainer  # noqa: E402

CONFIGS = ["configs/fashion_mlp.yaml", "configs/fashion_cnn.yaml", "configs/fashion_gru.yaml"]
VIEWS = {"reshape", "transpose", "swapaxes", "broadcast_to", "expand_dims", "squeeze", "moveaxis", "ravel",
         "shape", "ndim", "result_type", "may_share_memory", "shares_memory", "empty", "empty_like"}


class Counter:
    """Counts launches by kind and by the dltrain line that caused them, while `on`."""

    def __init__(self):
        self.counts = collections.Counter()
        self.on = False

    def add(self, kind: str) -> None:
        if not self.on:
            return
        where = "?"
        for frame in reversed(traceback.extract_stack()[:-2]):
            if "/dltrain/" in frame.filename and "/tests/" not in frame.filename:
                where = f"{frame.filename.split('/dltrain/')[-1]}:{frame.lineno}"
                break
        self.counts[(kind, where)] += 1

    def quiet(self, call):
        """Run `call` uncounted (a fused kernel counts once, not its inner array operations)."""
        was, self.on = self.on, False
        try:
            return call()
        finally:
            self.on = was


def instrument(fake, counter: Counter) -> None:
    array = fake_cupy.DeviceArray
    ufunc, function = array.__array_ufunc__, array.__array_function__
    getitem, setitem, astype, reshape = array.__getitem__, array.__setitem__, array.astype, array.reshape

    def counted_ufunc(self, u, method, *args, **kwargs):
        counter.add(f"{u.__name__}.{method}")
        return counter.quiet(lambda: ufunc(self, u, method, *args, **kwargs))

    def counted_function(self, f, types, args, kwargs):
        if f.__name__ not in VIEWS:
            counter.add(f.__name__)
        return counter.quiet(lambda: function(self, f, types, args, kwargs))

    def counted_getitem(self, index):
        if any(isinstance(i, np.ndarray) for i in (index if isinstance(index, tuple) else (index,))):
            counter.add("gather (fancy index)")
        return getitem(self, index)

    def counted_setitem(self, index, value):
        counter.add("assignment")
        return counter.quiet(lambda: setitem(self, index, value))

    def counted_astype(self, dtype, *args, copy=True, **kwargs):
        if copy or np.dtype(dtype) != self.dtype:
            counter.add("astype")
        return astype(self, dtype, *args, copy=copy, **kwargs)

    def counted_reshape(self, *shape, **kwargs):
        result = reshape(self, *shape, **kwargs)
        if not np.shares_memory(result.view(np.ndarray), self.view(np.ndarray)):
            counter.add("copy (reshape)")
        return result

    array.__array_ufunc__, array.__array_function__ = counted_ufunc, counted_function
    array.__getitem__, array.__setitem__, array.astype, array.reshape = (
        counted_getitem, counted_setitem, counted_astype, counted_reshape)
    for cls in (cuda_on_cpu.ElementwiseKernel, cuda_on_cpu.ReductionKernel, cuda_on_cpu.RawKernel):
        def call(self, *args, _inner=cls.__call__, **kwargs):
            counter.add(f"fused {self.name}")
            return counter.quiet(lambda: _inner(self, *args, **kwargs))

        cls.__call__ = call
    module_function = fake.__getattr__  # xp.matmul, xp.maximum, ...: NumPy's, run on the stand-in arrays

    def counted_module_function(name):
        found = module_function(name)
        if not callable(found) or isinstance(found, type) or name in VIEWS:
            return found

        def call(*args, **kwargs):
            counter.add(name)
            return counter.quiet(lambda: found(*args, **kwargs))

        return call

    fake.__getattr__ = counted_module_function
    for name in ("zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "concatenate", "stack", "pad",
                 "arange", "ascontiguousarray", "asarray"):
        inner = getattr(fake, name)

        def create(*args, _inner=inner, _name=name, **kwargs):
            source = args[0] if args else None
            if _name in ("ascontiguousarray", "asarray") and isinstance(source, fake_cupy.DeviceArray):
                # CuPy hands back the array itself when it already has the layout and dtype asked for
                dtype = kwargs.get("dtype", args[1] if len(args) > 1 else None)
                wanted_layout = source.flags.c_contiguous or _name == "asarray"
                if wanted_layout and (dtype is None or np.dtype(dtype) == source.dtype):
                    return counter.quiet(lambda: _inner(*args, **kwargs))
            counter.add(_name if isinstance(source, fake_cupy.DeviceArray) or _name not in (
                "ascontiguousarray", "asarray") else "upload from the host")
            return counter.quiet(lambda: _inner(*args, **kwargs))

        setattr(fake, name, create)


def images(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(600) % 10
    x = rng.normal(size=(600, 1, 28, 28)).astype(np.float32)
    np.savez(path, x=x[:500], y=y[:500], x_test=x[500:], y_test=y[500:])
    return path


def launches_per_step(config: str, data: Path, counter: Counter, fused: bool) -> collections.Counter:
    cfg = load_config(ROOT / config, [f"data={{name: npz, path: '{data}'}}", "training.batch_size=128"])
    with tempfile.TemporaryDirectory() as tmp, backend.fused_kernels(fused):
        trainer = Trainer(cfg, files.RunDir(Path(tmp) / "run"), "gpu", SilentReporter())
        trainer.setup()
        model, optimizer, train = trainer.model, trainer.optimizer, trainer.splits.train
        model.network.train()
        order = backend.to_device(np.arange(len(train)), "gpu")
        for step in range(3):
            counter.counts.clear()
            counter.on = step == 2
            idx = order[step * 128:(step + 1) * 128]
            loss = model.loss(model.outputs(Tensor(train.x[idx])), train.y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            counter.on = False
    return collections.Counter(counter.counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=CONFIGS)
    parser.add_argument("--detail", action="store_true", help="list the launches of the fused step by source line")
    args = parser.parse_args()
    fake, kernels = conftest.emulated_cuda()
    backend._cupy, backend._cupy_error = fake, None
    sys.modules.update(fake_cupy.cupyx_modules())
    backend.fused = lambda a: (kernels if backend.fused_enabled() and isinstance(a, fake.ndarray)
                               and kernels.supports(a.dtype) else None)
    counter = Counter()
    instrument(fake, counter)
    with tempfile.TemporaryDirectory() as tmp:
        data = images(Path(tmp) / "images.npz")
        print("| config | launches per step, fused | plain (DLTRAIN_FUSED_KERNELS=0) |")
        print("|---|---|---|")
        for config in args.configs:
            fused = launches_per_step(config, data, counter, True)
            plain = launches_per_step(config, data, counter, False)
            print(f"| {Path(config).stem} | {sum(fused.values())} | {sum(plain.values())} |")
            if args.detail:
                for (kind, where), n in sorted(fused.items(), key=lambda item: item[0][1]):
                    print(f"    {n:4d}  {kind:42s} {where}")


if __name__ == "__main__":
    main()
