"""GPU training speed: dltrain on CuPy against PyTorch CUDA (eager) and a hand-written CuPy MLP, same run.

    python benchmarks/gpu.py                          # every case, 2 repetitions; writes the "## GPU" section
    python benchmarks/gpu.py --cases mlp128 --reps 3  # a subset

Each (case, framework) runs in its own process; the frameworks alternate within each repetition.
Same models as benchmarks/cpu.py, plain SGD (lr 0.01), float32, the whole training set on the GPU on
every side, batches gathered there by a shuffled index, the loss summed on the device (read once per
epoch). Each process trains WARMUP epochs (kernel compilation, allocator and cuBLAS warm-up: both
sides need 2-3 epochs to reach their steady speed), then times TIMED epochs; the table gives the
median epoch's samples/second. "dltrain unfused" is dltrain with its fused kernels turned off, to
show what they bring. Both sides keep their defaults for TF32: PyTorch's cuDNN convolutions use it,
matrix products do not; dltrain does the same, and "convolutions in float32" shows the CNN without it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cpu import HandWrittenMLP, dltrain_model, load_data, torch_model  # noqa: E402 (the models are shared with the CPU benchmark)
from harness import alternating, arguments, replace_section  # noqa: E402

SAMPLES = int(os.environ.get("GPU_BENCH_SAMPLES", 30000))  # one epoch (fewer: a quicker, rougher run)
WARMUP, TIMED = 2, 3
CASES = {"mlp32": ("mlp", 32), "mlp128": ("mlp", 128), "mlp1024": ("mlp", 1024), "cnn128": ("cnn", 128),
         "gru128": ("gru", 128)}
TARGETS = {"mlp32": 0.9, "mlp128": 1.1, "mlp1024": 1.0, "cnn128": 0.6}  # issue 6: dltrain / PyTorch
UNFUSED_CASES = ("mlp128", "cnn128")
FP32_CASES = ("cnn128",)  # convolutions: dltrain's TF32 default (as PyTorch's cuDNN default) against full float32


def training_data():
    import numpy as np

    x, y = load_data(4096)
    reps = -(-SAMPLES // len(x))
    return np.concatenate([x] * reps)[:SAMPLES], np.concatenate([y] * reps)[:SAMPLES]


def epochs(run_epoch) -> list[float]:
    """Seconds of each timed epoch, after the warm-up ones."""
    for e in range(WARMUP):
        run_epoch(e)
    seconds = []
    for e in range(WARMUP, WARMUP + TIMED):
        start = time.perf_counter()
        run_epoch(e)
        seconds.append(time.perf_counter() - start)
    return seconds


def run_dltrain(model: str, batch: int, fused: bool = True, tf32: bool = True) -> list[float]:
    import cupy

    from dltrain import backend, optim
    from dltrain.autograd import Tensor
    from dltrain.losses import CrossEntropy

    x, y = training_data()
    backend.manual_seed(0)
    net = dltrain_model(model, x.shape[1:]).to("gpu")
    opt = optim.SGD(net.parameters(), lr=0.01)
    loss_fn = CrossEntropy()
    xd, yd = cupy.asarray(x), cupy.asarray(y)
    steps = len(x) // batch

    def run_epoch(e):
        order = cupy.asarray(backend.host_rng().permutation(len(x)))
        total = cupy.zeros((), cupy.float32)
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            loss = loss_fn(net(Tensor(xd[idx])), yd[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.data
        float(total)  # the one read per epoch (waits for the GPU)

    with backend.fused_kernels(fused), backend.tf32_convolutions(tf32):
        return epochs(run_epoch)


def run_torch(model: str, batch: int) -> list[float]:
    import numpy as np
    import torch

    x, y = training_data()
    torch.manual_seed(0)
    device = torch.device("cuda")
    net = torch_model(model).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    xd, yd = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    steps = len(x) // batch
    rng = np.random.default_rng(0)

    def run_epoch(e):
        order = torch.from_numpy(rng.permutation(len(x))).to(device)
        total = torch.zeros((), device=device)
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            loss = loss_fn(net(xd[idx]), yd[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
        float(total)

    return epochs(run_epoch)


def run_cupy(model: str, batch: int) -> list[float]:
    """benchmarks/cpu.py's hand-written MLP, in CuPy."""
    import cupy
    import numpy as np

    x, y = training_data()
    mlp = HandWrittenMLP(cupy, 1024, batch)
    xd, yd = cupy.asarray(x.reshape(len(x), -1)), cupy.asarray(y)
    steps = len(x) // batch
    rng = np.random.default_rng(0)

    def run_epoch(e):
        order = cupy.asarray(rng.permutation(len(x)))
        total = cupy.zeros((), cupy.float32)
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            total += mlp.step(xd[idx], yd[idx], with_loss=True)
        float(total)

    return epochs(run_epoch)


RUNNERS = {"dltrain": run_dltrain, "torch": run_torch, "cupy": run_cupy,
           "dltrain-unfused": lambda model, batch: run_dltrain(model, batch, fused=False),
           "dltrain-fp32": lambda model, batch: run_dltrain(model, batch, tf32=False)}


def worker(framework: str, case: str) -> None:
    model, batch = CASES[case]
    seconds = RUNNERS[framework](model, batch)
    samples = (SAMPLES // batch) * batch
    print(json.dumps({"samples_per_second": samples / statistics.median(seconds),
                      "epoch_seconds": [round(s, 4) for s in seconds]}))


def measure(framework: str, case: str) -> dict | None:
    """One worker process; None (and its error printed) when it fails, so the other cases still run."""
    out = subprocess.run([sys.executable, __file__, "--worker", framework, case], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{framework} {case} failed:\n{out.stderr[-3000:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_speed(runs: list) -> float | None:
    values = [r["samples_per_second"] for r in runs if r is not None]
    return statistics.median(values) if values else None


def gpu_name() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def main() -> None:
    args = arguments(__doc__, CASES, reps=2)
    if args.worker:
        worker(*args.worker)
        return
    results = {}
    for case in args.cases.split(","):
        frameworks = ["dltrain", "torch"] + (["cupy"] if CASES[case][0] == "mlp" else [])
        frameworks += ["dltrain-unfused"] if case in UNFUSED_CASES else []
        frameworks += ["dltrain-fp32"] if case in FP32_CASES else []
        runs = results[case] = alternating(case, frameworks, args.reps, measure)
        print(case, {f: median_speed(v) for f, v in runs.items()}, flush=True)
    write_section(Path(args.out), results, args)


def write_section(path: Path, results: dict, args) -> None:
    """Replace (or add) the '## GPU' section of RESULTS.md; the other sections stay as they are."""
    import cupy

    lines = [
        "## GPU: dltrain (CuPy) against PyTorch CUDA eager",
        "",
        f"Device: {gpu_name()}; CuPy {cupy.__version__}; date {time.strftime('%Y-%m-%d')}; {args.reps} repetitions; "
        f"{WARMUP} warm-up + {TIMED} timed epochs of {SAMPLES} samples per process; medians.",
        "",
        "Command: `python benchmarks/gpu.py` (or `bash benchmarks/gpu_check.sh`, which also runs the GPU tests)",
        "",
        "| case | dltrain samples/s | PyTorch samples/s | dltrain / PyTorch | target | CuPy by hand | "
        "dltrain / by hand | dltrain unfused | dltrain, convolutions in float32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    def cell(value):
        return "failed" if value is None else f"{value:,.0f}"

    def ratio_of(a, b):
        return None if a is None or b is None else a / b

    for case, runs in results.items():
        speed = {f: median_speed(v) for f, v in runs.items()}
        ratio = ratio_of(speed["dltrain"], speed["torch"])
        target = TARGETS.get(case)
        verdict = "" if target is None or ratio is None else f">= {target} ({'met' if ratio >= target else 'missed'})"
        by_hand = ("", "")
        if "cupy" in speed:
            versus = ratio_of(speed["dltrain"], speed["cupy"])
            by_hand = (cell(speed["cupy"]), "" if versus is None else f"{versus:.2f}")
        unfused = cell(speed["dltrain-unfused"]) if "dltrain-unfused" in speed else ""
        fp32 = cell(speed["dltrain-fp32"]) if "dltrain-fp32" in speed else ""
        ratio_text = "" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {case} | {cell(speed['dltrain'])} | {cell(speed['torch'])} | {ratio_text} | {verdict} | "
                     f"{by_hand[0]} | {by_hand[1]} | {unfused} | {fp32} |")
    lines += ["", "Every repetition, samples/s:", ""]
    for case, runs in results.items():
        for framework, values in runs.items():
            lines.append(f"- {case} {framework}: " + ", ".join(
                "failed" if r is None else f"{r['samples_per_second']:,.0f}" for r in values))
    replace_section(path, "GPU", "\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
