"""CPU training speed and memory: dltrain against PyTorch (and a hand-written NumPy MLP), same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cpu.py            # all cases, RESULTS.md
    python benchmarks/cpu.py --cases mlp128,cnn128 --reps 3                          # a subset

Each (case, framework) runs in its own process, so peak resident memory is that framework's
alone; the frameworks alternate within each repetition so that both see the same machine state.
Same model, data (Fashion-MNIST when installed, else random data of its shape), batch size, plain
SGD, number of steps and threads (2) on both sides, float32. Reported: median training
samples/second, dltrain / PyTorch, peak RSS, and the hardware ceiling (FLOPs of one training step
divided by the measured float32 GEMM rate).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
HERE = Path(__file__).resolve().parent

# name -> (model, batch size, steps timed per repetition)
CASES = {
    "mlp32": ("mlp", 32, 300),
    "mlp128": ("mlp", 128, 150),
    "mlp512": ("mlp", 512, 50),
    "cnn128": ("cnn", 128, 12),
    "gru128": ("gru", 128, 15),
    "tiny16": ("tiny", 16, 1500),
}


def load_data(n: int = 4096):
    """Fashion-MNIST images and labels (the first n), scaled; random data of the same shape without it."""
    import numpy as np

    try:
        from dltrain.data.datasets import fashion_mnist

        raw = fashion_mnist(download=False)
        x = raw.x_train[:n].astype(np.float32) / 255.0
        y = raw.y_train[:n].astype(np.int64)
    except Exception:  # noqa: BLE001 (no data installed: throughput does not depend on the values)
        rng = np.random.default_rng(0)
        x = rng.random((n, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, n)
    return (x - x.mean()) / x.std(), y


# ---------------------------------------------------------------- FLOPs of one training step


def step_flops(model: str, batch: int) -> float:
    """FLOPs of the matrix products of one step: forward, weight gradients, and input gradients for
    every layer but the first (the data needs no gradient). Elementwise work is left out."""
    if model in ("mlp", "tiny"):
        hidden = 1024 if model == "mlp" else 32
        first, rest = 784 * hidden, hidden * 10
    elif model == "cnn":
        first, rest = 28 * 28 * 32 * 9, 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 * 10
    else:  # gru: the input projection, then 28 hidden-state products and the head
        first, rest = 28 * 28 * 384, 28 * 128 * 384 + 128 * 10
    return 2 * batch * (2 * first + 3 * rest)


def gemm_rate() -> float:
    """Measured float32 GEMM FLOP/s (1024^3 products, best of 10)."""
    import numpy as np

    a = np.random.rand(1024, 1024).astype(np.float32)
    b = np.random.rand(1024, 1024).astype(np.float32)
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 1024 ** 3 / best


# ---------------------------------------------------------------- the models, in both frameworks


def dltrain_model(model: str, input_shape):
    """The benchmark's model as a dltrain network: the MLPs by hand, the others from the shipped configs."""
    from dltrain.config import load_config
    from dltrain.layers import build_model

    if model in ("mlp", "tiny"):
        hidden = 1024 if model == "mlp" else 32
        specs = ["flatten", {"linear": {"units": hidden}}, "relu", {"linear": {"units": 10}}]
    else:
        specs = load_config(HERE.parent / "configs" / f"fashion_{model}.yaml").model
    return build_model(specs, input_shape)


def torch_model(model: str):
    """The same network in PyTorch (configs/fashion_cnn.yaml and fashion_gru.yaml, layer for layer)."""
    from torch import nn

    if model in ("mlp", "tiny"):
        hidden = 1024 if model == "mlp" else 32
        return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    if model == "cnn":
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))

    class GRUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(28, 128, batch_first=True)
            self.head = nn.Linear(128, 10)

        def forward(self, images):
            _, h = self.gru(images.reshape(-1, 28, 28))
            return self.head(h[0])

    return GRUNet()


# ---------------------------------------------------------------- workers (one process each)


def run_dltrain(model: str, batch: int, steps: int, x, y) -> float:
    import dltrain
    import dltrain.functional as F
    from dltrain import backend, optim

    backend.manual_seed(0)
    net = dltrain_model(model, x.shape[1:])
    opt = optim.SGD(net.parameters(), lr=0.01)

    def step(i):
        start = (i * batch) % (len(x) - batch)
        opt.zero_grad()
        loss = F.cross_entropy(net(dltrain.tensor(x[start:start + batch])), y[start:start + batch])
        loss.backward()
        opt.step()
        return loss

    return _timed(step, steps)


def run_torch(model: str, batch: int, steps: int, x, y) -> float:
    import torch
    from torch import nn

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    net = torch_model(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()

    def step(i):
        start = (i * batch) % (len(x) - batch)
        opt.zero_grad()
        loss = loss_fn(net(xt[start:start + batch]), yt[start:start + batch])
        loss.backward()
        opt.step()
        return loss

    return _timed(step, steps)


class HandWrittenMLP:
    """The 784-hidden-10 MLP by hand, in NumPy or CuPy (`xp`): forward, hand-derived backward, in-place
    SGD. No framework: the reference for what a framework's overhead costs (gpu.py uses it with CuPy)."""

    def __init__(self, xp, hidden: int, batch: int, lr: float = 0.01):
        import numpy as np

        rng = np.random.default_rng(0)
        self.xp = xp
        self.w1 = xp.asarray((rng.standard_normal((784, hidden)) * np.sqrt(2 / 784)).astype(np.float32))
        self.b1 = xp.zeros(hidden, np.float32)
        self.w2 = xp.asarray((rng.standard_normal((hidden, 10)) * np.sqrt(2 / hidden)).astype(np.float32))
        self.b2 = xp.zeros(10, np.float32)
        self.lr = np.float32(lr)
        self.rows = xp.arange(batch)

    def step(self, xb, yb, with_loss: bool = False):
        """One SGD step on flattened images xb and labels yb; the batch's mean loss if asked for (on xp's device)."""
        xp, lr = self.xp, self.lr
        h = xb @ self.w1
        h += self.b1
        xp.maximum(h, 0, out=h)
        z = h @ self.w2
        z += self.b2
        z -= z.max(axis=1, keepdims=True)
        xp.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        loss = -xp.log(z[self.rows, yb]).mean() if with_loss else None
        z[self.rows, yb] -= 1
        z /= len(yb)
        dh = z @ self.w2.T
        dh *= h > 0
        xp.subtract(self.w2, lr * (h.T @ z), out=self.w2)
        xp.subtract(self.b2, lr * z.sum(axis=0), out=self.b2)
        xp.subtract(self.w1, lr * (xb.T @ dh), out=self.w1)
        xp.subtract(self.b1, lr * dh.sum(axis=0), out=self.b1)
        return loss


def run_numpy(model: str, batch: int, steps: int, x, y) -> float:
    import numpy as np

    mlp = HandWrittenMLP(np, 1024 if model == "mlp" else 32, batch)
    flat = x.reshape(len(x), -1)

    def step(i):
        start = (i * batch) % (len(x) - batch)
        mlp.step(flat[start:start + batch], y[start:start + batch])

    return _timed(step, steps)


def _timed(step, steps: int) -> float:
    for i in range(max(3, steps // 10)):  # warm-up: allocations, caches, thread pools
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return time.perf_counter() - start


def worker(framework: str, case: str) -> None:
    import resource

    model, batch, steps = CASES[case]
    x, y = load_data()
    runner = {"dltrain": run_dltrain, "torch": run_torch, "numpy": run_numpy}[framework]
    seconds = runner(model, batch, steps, x, y)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"samples_per_second": batch * steps / seconds, "peak_mb": peak_mb}))


def blas_kernel() -> str:
    try:
        from threadpoolctl import threadpool_info

        return ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                         for i in threadpool_info() if i.get("user_api") == "blas")
    except ImportError:
        return "unknown (pip install threadpoolctl)"


# ---------------------------------------------------------------- orchestration


def measure(framework: str, case: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "OPENBLAS_NUM_THREADS": str(THREADS),
           "MKL_NUM_THREADS": str(THREADS)}
    out = subprocess.run([sys.executable, __file__, "--worker", framework, case], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from harness import alternating, arguments  # (benchmarks/ is on sys.path when this script runs)

    args = arguments(__doc__, CASES, reps=3)
    if args.worker:
        worker(*args.worker)
        return
    cases = args.cases.split(",")
    rate = gemm_rate()
    results = {}
    for case in cases:
        frameworks = ["dltrain", "torch"] + (["numpy"] if CASES[case][0] == "mlp" else [])
        runs = results[case] = alternating(case, frameworks, args.reps, measure)
        print(case, {f: round(statistics.median(r["samples_per_second"] for r in v)) for f, v in runs.items()},
              flush=True)
    write_results(Path(args.out), results, rate, args)


def write_results(path: Path, results: dict, rate: float, args) -> None:
    import platform

    lines = [
        "# CPU benchmark: dltrain against PyTorch",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {THREADS} threads per side; "
        f"BLAS: {blas_kernel()}; float32 GEMM {rate / 1e9:.1f} GFLOP/s (measured).",
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
        f"date {time.strftime('%Y-%m-%d')}, {args.reps} repetitions, medians.",
        "",
        "Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cpu.py`",
        "",
        "| case | batch | dltrain samples/s | PyTorch samples/s | ratio | NumPy by hand | dltrain / NumPy "
        "| ceiling samples/s | dltrain peak MB | PyTorch peak MB | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, runs in results.items():
        model, batch, _ = CASES[case]
        speed = {f: statistics.median(r["samples_per_second"] for r in v) for f, v in runs.items()}
        memory = {f: statistics.median(r["peak_mb"] for r in v) for f, v in runs.items()}
        ceiling = rate / step_flops(model, batch) * batch
        numpy_cells = (f"{speed['numpy']:,.0f}", f"{speed['dltrain'] / speed['numpy']:.2f}") if "numpy" in speed \
            else ("", "")
        lines.append(f"| {case} | {batch} | {speed['dltrain']:,.0f} | {speed['torch']:,.0f} | "
                     f"{speed['dltrain'] / speed['torch']:.2f} | {numpy_cells[0]} | {numpy_cells[1]} | "
                     f"{ceiling:,.0f} | {memory['dltrain']:.0f} | {memory['torch']:.0f} | "
                     f"{memory['dltrain'] / memory['torch']:.2f} |")
    lines += [
        "",
        "ratio = dltrain / PyTorch samples/s; ceiling = measured GEMM FLOP/s / FLOPs of one step's matrix "
        "products (forward, weight gradients, input gradients except the first layer's); peak MB = the "
        "process's maximum resident set (data included, the same on both sides).",
        "",
        "Every repetition, samples/s (to show the spread; the table gives medians):",
        "",
    ]
    for case, runs in results.items():
        for framework, values in runs.items():
            lines.append(f"- {case} {framework}: " + ", ".join(f"{r['samples_per_second']:,.0f}" for r in values))
    from harness import replace_section

    replace_section(path, None, "\n".join(lines) + "\n")  # the sections of mpi_scaling.py and gpu.py stay
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
