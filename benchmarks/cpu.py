"""CPU training speed and memory: `dltrain train` against an equivalent PyTorch script, whole epochs, same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cpu.py        # every case, 3 reps, RESULTS.md
    python benchmarks/cpu.py --cases mlp_sgd128,fashion_cnn --reps 5             # a subset
    python benchmarks/cpu.py --cases tiny16 --reps 1 --samples 2048              # smoke test: writes no results

What users run, measured as they run it. The dltrain side of a case is a config (a shipped one from
configs/, or the benchmark's own) written to a temporary YAML file and trained by the CLI in a child
process: `dltrain train CONFIG --set training.epochs=1 --set training.early_stopping=false -q`. Its
speed is summary.json's train_samples_per_second: training samples over the seconds of the epoch's
training loop (shuffle, gather each batch, forward, loss read every step, backward, clipping, step;
not validation, test evaluation, checkpoints or plotting). The PyTorch side, in its own child process,
trains the same model on the same 54,000 Fashion-MNIST training images (the configs' seed-0 stratified
10% validation split held out, normalized by the training images' mean and std) with the same loss,
optimizer (weight decay on weights only, as dltrain), learning-rate schedule, gradient clipping and
batch size, a new permutation every epoch, each batch gathered by index and every step's loss read
with loss.item(); it times the same loop of one epoch, then evaluates the validation and test images
as dltrain does (untimed, so that both peak memories cover the same work). For the two-layer MLPs a
hand-written NumPy loop (HandWrittenMLP, the same epoch) shows what no framework at all costs.
One-time costs inside the epoch count, as in a user's first epoch (PyTorch's lazy initialisation, the
first call of each compiled dltrain kernel); dltrain loads its Numba kernels before the epoch, in setup,
as PyTorch's import happens before its loop.

Each (case, framework) runs in its own process, so peak resident memory (ru_maxrss) is that process's
alone, data and imports included; the frameworks alternate within each repetition so that both see
the same machine states. 2 threads on every side (DLTRAIN_THREADS, OMP/OpenBLAS/MKL, torch), float32.
Reported: median samples/second, dltrain / PyTorch, peak RSS, and the hardware ceiling (FLOPs of one
training step's matrix products divided by the measured float32 GEMM rate).

--samples N trains on the first N training images only (validation and test: N/4): for smoke tests of
the script itself. Such a run prints its table but never writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
EPOCHS = 1  # what the dltrain side is told with --set, and the schedules' horizon on the PyTorch side
HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"

# The benchmark's own models (dltrain layer specs); "cnn" and "gru" (gpu.py) are the shipped configs' models.
MODELS = {
    "mlp": ["flatten", {"linear": {"units": 1024}}, "relu", {"linear": {"units": 10}}],
    "tiny": ["flatten", {"linear": {"units": 32}}, "relu", {"linear": {"units": 10}}],
    "plain_cnn": [{"conv2d": {"filters": 32, "kernel_size": 3, "padding": "same"}}, "relu",
                  {"max_pool2d": {"kernel_size": 2}},
                  {"conv2d": {"filters": 64, "kernel_size": 3, "padding": "same"}}, "relu",
                  {"max_pool2d": {"kernel_size": 2}},
                  "flatten", {"linear": {"units": 128}}, "relu", {"linear": {"units": 10}}],
}

# name -> (one of MODELS, trained with plain SGD at lr 0.05 and a constant rate, batch size) or
#         (a shipped config, trained as it is, None: its own batch size)
CASES = {
    "mlp_sgd32": ("mlp", 32),
    "mlp_sgd128": ("mlp", 128),
    "mlp_sgd512": ("mlp", 512),
    "cnn_sgd128": ("plain_cnn", 128),
    "fashion_mlp": ("fashion_mlp.yaml", None),
    "fashion_cnn": ("fashion_cnn.yaml", None),
    "fashion_gru": ("fashion_gru.yaml", None),
    "fashion_lstm": ("fashion_gru.yaml", None),  # with its gru layer replaced by an lstm of the same units
    "fashion_resnet": ("fashion_resnet.yaml", None),
    "tiny16": ("tiny", 16),
}
OWN_MODELS = {"mlp": "flatten, linear 1024, relu, linear 10", "tiny": "flatten, linear 32, relu, linear 10",
              "plain_cnn": "conv2d 32 3x3 same, relu, max_pool 2, conv2d 64 3x3 same, relu, max_pool 2, flatten, "
                           "linear 128, relu, linear 10"}
HAND_WRITTEN = ("mlp", "tiny")  # the models HandWrittenMLP also trains


def case_config(case: str) -> dict:
    """The dltrain config of a case, as plain values: what the dltrain side trains and the PyTorch side copies."""
    import yaml

    source, batch = CASES[case]
    if source in MODELS:
        return {"seed": 0, "data": {"name": "fashion-mnist", "val_fraction": 0.1}, "model": MODELS[source],
                "loss": "cross_entropy", "optimizer": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"},
                "training": {"batch_size": batch}}
    config = yaml.safe_load((CONFIGS / source).read_text())
    if case == "fashion_lstm":
        config["model"] = [{"lstm": spec["gru"]} if isinstance(spec, dict) and "gru" in spec else spec
                           for spec in config["model"]]
    return config


def describe_case(case: str) -> str:
    """One line: the model, optimizer, schedule, batch size (and clipping) of a case."""
    config = case_config(case)
    source, _ = CASES[case]
    model = OWN_MODELS[source] if source in MODELS else \
        f"configs/{source}" + (" with lstm for gru" if case == "fashion_lstm" else "")
    optimizer = dict(config["optimizer"])
    name = optimizer.pop("name")
    training = config["training"]
    return (f"{case}: {model}; {name} ({', '.join(f'{k} {v}' for k, v in optimizer.items())}), "
            f"{config.get('schedule', {}).get('name', 'constant')} schedule; batch {training['batch_size']}"
            + (f", grad_clip {training['grad_clip']}" if training.get("grad_clip") else ""))


# ---------------------------------------------------------------- layer specs: shapes and FLOPs


def parse(spec) -> tuple[str, dict | list]:
    """A config's layer entry ('relu' or {'linear': {'units': 10}}) as (name, options)."""
    if isinstance(spec, str):
        return spec, {}
    (name, options), = spec.items()
    return name, options if options is not None else {}


def output_shape(name: str, opts, shape: tuple) -> tuple:
    """The per-sample output shape of one layer (the layers the benchmark's configs use)."""
    if name in ("relu", "dropout", "softmax", "batchnorm"):
        return shape
    if name == "flatten":
        return (math.prod(shape),)
    if name in ("linear", "gru", "lstm"):
        if opts.get("return_sequences"):
            raise ValueError("the benchmark times recurrent layers without return_sequences")
        return (opts["units"],)
    if name == "reshape":
        return tuple(opts["shape"])
    if name == "global_avg_pool":
        return shape[:1]
    if name == "residual":
        for spec in opts:
            shape = output_shape(*parse(spec), shape)
        return shape
    if name in ("conv2d", "max_pool2d"):
        k = opts.get("kernel_size", 3 if name == "conv2d" else 2)
        stride = opts.get("stride") or (1 if name == "conv2d" else k)  # a resolved config's max_pool2d: None
        pad = opts.get("padding", 0)
        if opts.get("dilation", 1) != 1:
            raise ValueError("the benchmark times convolutions without dilation")
        pad = (k - 1) // 2 if pad == "same" else pad
        channels = opts["filters"] if name == "conv2d" else shape[0]
        return (channels, *((s + 2 * pad - k) // stride + 1 for s in shape[1:]))
    raise ValueError(f"the benchmark cannot translate layer {name!r}")


def matmul_macs(specs, shape: tuple, first: bool = True) -> tuple[float, float, tuple, bool]:
    """Multiply-adds per sample of the layers' matrix products: (those of the first layer with weights, whose
    input needs no gradient; all the others), the output shape, and whether no layer with weights came yet."""
    head = rest = 0.0
    for spec in specs:
        name, opts = parse(spec)
        out = output_shape(name, opts, shape)
        if name == "residual":
            h, r, _, inner_first = matmul_macs(opts, shape, first)
            head, rest = head + h, rest + r + (math.prod(out) * shape[0] if out != shape else 0)  # the projection
            first = inner_first
        elif name in ("linear", "conv2d", "gru", "lstm"):
            if name == "linear":
                macs, recurrent = shape[0] * out[0], 0
            elif name == "conv2d":
                macs, recurrent = math.prod(out) * shape[0] * opts.get("kernel_size", 3) ** 2, 0
            else:  # the input projection of every step, and the hidden-state products
                gates = (3 if name == "gru" else 4) * out[0]
                macs, recurrent = shape[0] * shape[1] * gates, shape[0] * out[0] * gates
            head, rest = (head + macs, rest + recurrent) if first else (head, rest + macs + recurrent)
            first = False
        shape = out
    return head, rest, shape, first


def step_flops(specs, batch: int, input_shape=(1, 28, 28)) -> float:
    """FLOPs of the matrix products of one step: forward, weight gradients, and input gradients for
    every layer but the first (the data needs no gradient). Elementwise work is left out."""
    first, rest, _, _ = matmul_macs(specs, tuple(input_shape))
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


def model_specs(model: str) -> list:
    """The layer specs of one of MODELS, or of the shipped config configs/fashion_{model}.yaml."""
    from dltrain.config import load_config

    return MODELS[model] if model in MODELS else load_config(CONFIGS / f"fashion_{model}.yaml").model


def dltrain_model(model: str, input_shape):
    """A model as a dltrain network (gpu.py trains these by hand)."""
    from dltrain.layers import build_model

    return build_model(model_specs(model), input_shape)


def torch_model(model: str):
    """The same network in PyTorch (gpu.py)."""
    return torch_network(model_specs(model), (1, 28, 28))


def torch_network(specs, shape: tuple):
    """dltrain layer specs as a torch.nn.Sequential, layer for layer: 'same' padding as (k - 1) // 2, batchnorm
    with momentum 0.1 and eps 1e-5 (dltrain's defaults, torch's meaning), recurrent layers batch_first with the
    last hidden state as output, residual blocks with dltrain's shortcut: the identity when the block keeps the
    shape, else a bias-free 1x1 convolution (stride: the downsampling) or a bias-free linear map."""
    import torch
    from torch import nn

    class Reshape(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = tuple(shape)

        def forward(self, x):
            return x.reshape(len(x), *self.shape)

    class LastState(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            _, state = self.rnn(x)
            return (state[0] if isinstance(state, tuple) else state)[0]  # LSTM: (h, c); (layers, batch, units)

    class Residual(nn.Module):
        def __init__(self, body, projection):
            super().__init__()
            self.body, self.projection = body, projection

        def forward(self, x):
            return self.body(x) + (x if self.projection is None else self.projection(x))

    class GlobalAvgPool(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    def layer(name, opts, shape, out):
        if name == "residual":
            projection = None
            if out != shape and len(shape) == 3:
                projection = nn.Conv2d(shape[0], out[0], 1, stride=-(-shape[1] // out[1]), bias=False)
            elif out != shape:
                projection = nn.Linear(shape[0], out[0], bias=False)
            return Residual(build(opts, shape), projection)
        if name == "linear":
            return nn.Linear(shape[0], out[0], bias=opts.get("bias", True))
        if name == "conv2d":
            k, pad = opts.get("kernel_size", 3), opts.get("padding", 0)
            return nn.Conv2d(shape[0], out[0], k, stride=opts.get("stride", 1), padding=(k - 1) // 2 if pad == "same"
                             else pad, bias=opts.get("bias", True))
        if name == "batchnorm":
            norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            return norm(shape[0], momentum=opts.get("momentum", 0.1), eps=opts.get("eps", 1e-5),
                        affine=opts.get("affine", True))
        if name in ("gru", "lstm"):
            return LastState((nn.GRU if name == "gru" else nn.LSTM)(shape[1], out[0], batch_first=True))
        simple = {"flatten": nn.Flatten, "relu": nn.ReLU, "global_avg_pool": GlobalAvgPool,
                  "softmax": lambda: nn.Softmax(dim=-1), "dropout": lambda: nn.Dropout(opts.get("rate", 0.5)),
                  "reshape": lambda: Reshape(opts["shape"]),
                  "max_pool2d": lambda: nn.MaxPool2d(opts.get("kernel_size", 2), opts.get("stride") or None,
                                                     opts.get("padding", 0))}
        return simple[name]()

    def build(specs, shape):
        modules = []
        for spec in specs:
            name, opts = parse(spec)
            out = output_shape(name, opts, shape)
            modules.append(layer(name, opts, shape, out))
            shape = out
        return nn.Sequential(*modules)

    torch.manual_seed(0)
    return build(specs, tuple(shape))


def torch_optimizer(params, options: dict):
    """dltrain's optimizer in torch.optim: SGD (momentum, Nesterov), Adam or AdamW with the same formulas;
    weight decay on the weights only (dltrain's `decay` flag: matrices and kernels, not biases or batchnorm's
    scale and shift), or on everything with decay_all."""
    import torch

    options = dict(options)
    name, decay_all = options.pop("name"), options.pop("decay_all", False)
    decay = options.pop("weight_decay", 0.01 if name == "adamw" else 0.0)
    params = list(params)
    decayed = [p for p in params if decay_all or p.ndim > 1]
    groups = [{"params": decayed, "weight_decay": decay},
              {"params": [p for p in params if not (decay_all or p.ndim > 1)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]] if decay else [{"params": params, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=options.pop("lr", 0.1), momentum=options.pop("momentum", 0.0),
                               nesterov=options.pop("nesterov", False), **_none_left(options))
    betas = (options.pop("beta1", 0.9), options.pop("beta2", 0.999))
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return kind(groups, lr=options.pop("lr", 0.001), betas=betas, eps=options.pop("eps", 1e-8), **_none_left(options))


def lr_factor(schedule: dict, epochs: int, steps_per_epoch: int):
    """dltrain's learning-rate schedule as a function of the global step (for torch's LambdaLR, stepped every
    step): the factor of the epoch (interval 'epoch', the default) or of the fractional epoch ('step')."""
    options = dict(schedule)
    name, interval = options.pop("name"), options.pop("interval", "epoch")
    gamma = options.pop("gamma", 0.1 if name == "step" else 0.98)
    step_size, low = options.pop("step_size", 10), options.pop("min_factor", 0.0)
    _none_left(options)  # no warmup or linear scaling in the benchmark's configs

    def factor(global_step: int) -> float:
        epoch, step = divmod(global_step, steps_per_epoch)
        t = epoch + step / steps_per_epoch if interval == "step" else float(epoch)
        if name == "exponential":
            return gamma ** t
        if name == "step":
            return gamma ** math.floor(t / step_size)
        if name == "cosine":
            return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(t / epochs, 1.0)))
        return 1.0

    return factor


def _none_left(options: dict) -> dict:
    if options:
        raise ValueError(f"the benchmark's PyTorch translation has no options {sorted(options)}")
    return options


# ---------------------------------------------------------------- data


def fashion_splits(seed: int = 0, val_fraction: float = 0.1, samples: int | None = None) -> dict:
    """Fashion-MNIST split as the trainer splits it: {'train', 'val', 'test': (uint8 images, labels)}, the
    validation images held out of the training ones per class by the config's seed. With `samples`, the first
    that many training images and a quarter as many validation and test ones."""
    import numpy as np

    from dltrain.data.datasets import fashion_mnist
    from dltrain.data.splits import stratified_split

    raw = fashion_mnist(download=False)
    train, val = stratified_split(raw.y_train, val_fraction, np.random.default_rng([seed, 2]), True)
    splits = {"train": (raw.x_train[train], raw.y_train[train]), "val": (raw.x_train[val], raw.y_train[val]),
              "test": (raw.x_test, raw.y_test)}
    if samples:
        splits = {name: (x[:n], y[:n]) for name, (x, y) in splits.items()
                  for n in [samples if name == "train" else max(1, samples // 4)]}
    return splits


def normalized(splits: dict) -> dict:
    """float32 images less the training images' mean, over their standard deviation (dltrain's 'global'
    normalization, statistics in float64 from the histogram of the uint8 values: no float64 copy of the data)."""
    import numpy as np

    counts = np.bincount(splits["train"][0].ravel(), minlength=256).astype(np.float64)
    values = np.arange(len(counts), dtype=np.float64)
    mean = (counts * values).sum() / counts.sum()
    std = math.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    out = {}
    for name, (x, y) in splits.items():
        x = x.astype(np.float32)
        x -= np.float32(mean)
        x /= np.float32(std)
        out[name] = (x, y)
    return out


def load_data(n: int = 4096):
    """Fashion-MNIST images and labels (the first n), scaled; random data of the same shape without it (gpu.py)."""
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


# ---------------------------------------------------------------- workers (one process each)

# The dltrain side: the CLI, in-process (so ru_maxrss is the run's), then summary.json's speed.
DLTRAIN_WRAPPER = """
import json, resource, sys
from pathlib import Path
from dltrain.cli import main
config, run_dir, epochs = sys.argv[1:4]
sys.argv = ["dltrain", "train", config, "--set", "training.epochs=" + epochs, "--set", "training.early_stopping=false",
            "--run-dir", run_dir, "-q"]
try:
    main()
except SystemExit as done:
    if done.code:
        raise
summary = json.loads((Path(run_dir) / "summary.json").read_text())
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"samples_per_second": summary["train_samples_per_second"], "peak_mb": peak_mb}))
"""


def run_torch(case: str, samples: int | None) -> dict:
    """One epoch of the case in PyTorch, as a PyTorch user writes it; then validation and test, untimed."""
    import torch
    from torch import nn

    torch.set_num_threads(THREADS)
    config = case_config(case)
    training = config["training"]
    batch, clip = training["batch_size"], training.get("grad_clip")
    if config.get("loss", "cross_entropy") not in ("cross_entropy", {"name": "cross_entropy"}):
        raise ValueError(f"the benchmark's PyTorch translation has no loss {config['loss']}")
    specs = config["model"]
    if parse(specs[-1])[0] == "softmax":  # dltrain trains a final softmax through cross_entropy on its logits
        specs = specs[:-1]
    data = {name: (torch.from_numpy(x), torch.from_numpy(y)) for name, (x, y) in normalized(fashion_splits(
        config.get("seed", 0), config["data"].get("val_fraction", 0.1), samples)).items()}
    x, y = data["train"]
    n = len(x)
    steps = math.ceil(n / batch)
    net = torch_network(specs, tuple(x.shape[1:]))
    opt = torch_optimizer(net.parameters(), config.get("optimizer", {"name": "adam"}))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config.get("schedule", {"name": "constant"}),
                                                                 EPOCHS, steps))
    loss_fn = nn.CrossEntropyLoss()

    net.train()
    start = time.perf_counter()
    order = torch.randperm(n)
    loss_sum, correct = 0.0, 0
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        xb, yb = x[idx], y[idx]
        out = net(xb)
        loss = loss_fn(out, yb)
        value = loss.item()
        opt.zero_grad()
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        schedule.step()
        loss_sum += value * len(idx)
        correct += int((out.argmax(dim=1) == yb).sum())
    seconds = time.perf_counter() - start

    net.eval()
    eval_batch = training.get("eval_batch_size", 1024)
    with torch.no_grad():
        for name in ("val", "test"):
            xe, ye = data[name]
            for s in range(0, len(xe), eval_batch):
                loss_fn(net(xe[s:s + eval_batch]), ye[s:s + eval_batch]).item()
    return {"samples_per_second": n / seconds, "version": torch.__version__,
            "train_loss": loss_sum / n, "train_accuracy": correct / n}


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
        rows = self.rows if len(yb) == len(self.rows) else xp.arange(len(yb))  # an epoch's last, smaller batch
        h = xb @ self.w1
        h += self.b1
        xp.maximum(h, 0, out=h)
        z = h @ self.w2
        z += self.b2
        z -= z.max(axis=1, keepdims=True)
        xp.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        loss = -xp.log(z[rows, yb]).mean() if with_loss else None
        z[rows, yb] -= 1
        z /= len(yb)
        dh = z @ self.w2.T
        dh *= h > 0
        xp.subtract(self.w2, lr * (h.T @ z), out=self.w2)
        xp.subtract(self.b2, lr * z.sum(axis=0), out=self.b2)
        xp.subtract(self.w1, lr * (xb.T @ dh), out=self.w1)
        xp.subtract(self.b1, lr * dh.sum(axis=0), out=self.b1)
        return loss


def run_numpy(case: str, samples: int | None) -> dict:
    """One epoch of an MLP case by hand: the same shuffled gather and loss read every step, SGD at lr 0.05."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    threadpool_limits(THREADS, user_api="blas")
    config = case_config(case)
    batch = config["training"]["batch_size"]
    x, y = normalized(fashion_splits(samples=samples))["train"]
    flat = x.reshape(len(x), -1)
    hidden = parse(config["model"][1])[1]["units"]
    mlp = HandWrittenMLP(np, hidden, batch, lr=config["optimizer"]["lr"])
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    order = rng.permutation(len(x))
    for step in range(math.ceil(len(x) / batch)):
        idx = order[step * batch:(step + 1) * batch]
        float(mlp.step(flat[idx], y[idx], with_loss=True))
    return {"samples_per_second": len(x) / (time.perf_counter() - start)}


def worker(framework: str, case: str, samples: int | None) -> None:
    import resource

    result = {"torch": run_torch, "numpy": run_numpy}[framework](case, samples)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def blas_kernel() -> str:
    try:
        from threadpoolctl import threadpool_info

        return ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                         for i in threadpool_info() if i.get("user_api") == "blas")
    except ImportError:
        return "unknown (pip install threadpoolctl)"


# ---------------------------------------------------------------- orchestration


def samples_option() -> int | None:
    """--samples N, taken off the command line (harness.arguments reads the options every script shares)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--samples", type=int)
    known, sys.argv[1:] = parser.parse_known_args()
    if known.samples is not None and known.samples < 1:
        raise SystemExit("--samples: a positive number of training samples")
    return known.samples


def write_case_config(case: str, folder: Path, smoke_data: dict | None) -> Path:
    """The case's config as a YAML file in `folder`; for a smoke test its data are the .npz files made for it."""
    import yaml

    config = case_config(case)
    if smoke_data:
        config["data"] = {"name": "npz", "normalize": "global", **smoke_data}
    path = folder / f"{case}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_smoke_data(folder: Path, samples: int) -> dict:
    """The smoke test's few samples (the same as the PyTorch side's) as .npz files, the `data:` keys to read them."""
    import numpy as np

    splits = fashion_splits(samples=samples)
    (x, y), (xv, yv), (xt, yt) = splits["train"], splits["val"], splits["test"]
    np.savez(folder / "train.npz", x=x, y=y, x_test=xt, y_test=yt)
    np.savez(folder / "val.npz", x=xv, y=yv)
    return {"path": str(folder / "train.npz"), "val_path": str(folder / "val.npz")}


def measure(framework: str, case: str, config: Path, folder: Path, samples: int | None) -> dict:
    """One child process: the dltrain CLI on the case's config, or this script's worker for the others."""
    env = {**os.environ, "DLTRAIN_THREADS": str(THREADS), "OMP_NUM_THREADS": str(THREADS),
           "OPENBLAS_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    if framework == "dltrain":
        run_dir = Path(tempfile.mkdtemp(prefix=f"run-{case}-", dir=folder))
        command = [sys.executable, "-c", DLTRAIN_WRAPPER, str(config), str(run_dir), str(EPOCHS)]
    else:
        command = [sys.executable, __file__, "--worker", framework, case] + \
            (["--samples", str(samples)] if samples else [])
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{framework} {case} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from harness import alternating, arguments  # (benchmarks/ is on sys.path when this script runs)

    samples = samples_option()
    args = arguments(__doc__, CASES, reps=3)
    if args.worker:
        worker(*args.worker, samples)
        return
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; the cases: {', '.join(CASES)}")
    if samples:
        print(f"WARNING: --samples {samples}: a smoke test on {samples} training samples, not the benchmark; "
              "its numbers are not comparable and RESULTS.md is not written", flush=True)
    rate = gemm_rate()
    results = {}
    with tempfile.TemporaryDirectory(prefix="dltrain-cpu-bench-") as tmp:
        folder = Path(tmp)
        smoke_data = write_smoke_data(folder, samples) if samples else None
        for case in cases:
            config = write_case_config(case, folder, smoke_data)
            frameworks = ["dltrain", "torch"] + (["numpy"] if CASES[case][0] in HAND_WRITTEN else [])
            runs = results[case] = alternating(
                case, frameworks, args.reps, lambda f, c, config=config: measure(f, c, config, folder, samples))
            print(case, {f: round(statistics.median(r["samples_per_second"] for r in v)) for f, v in runs.items()},
                  flush=True)
    text = results_section(results, rate, args)
    if samples:
        print("\n" + text + f"\nWARNING: --samples {samples} (smoke test): {args.out} not written")
        return
    from harness import replace_section

    replace_section(Path(args.out), None, text)  # the sections of mpi_scaling.py and gpu.py stay
    print(f"wrote {args.out}")


def results_section(results: dict, rate: float, args) -> str:
    """The top part of RESULTS.md: the machine, the table of medians, what each case is, every repetition."""
    import platform

    torch_version = next((r.get("version") for runs in results.values() for r in runs["torch"]), "?")
    lines = [
        "# CPU benchmark: `dltrain train` against PyTorch, one epoch",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {THREADS} threads per side; "
        f"BLAS: {blas_kernel()}; float32 GEMM {rate / 1e9:.1f} GFLOP/s (measured); PyTorch {torch_version}.",
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
        config = case_config(case)
        batch = config["training"]["batch_size"]
        speed = {f: statistics.median(r["samples_per_second"] for r in v) for f, v in runs.items()}
        memory = {f: statistics.median(r["peak_mb"] for r in v) for f, v in runs.items()}
        ceiling = rate / step_flops(config["model"], batch) * batch
        numpy_cells = (f"{speed['numpy']:,.0f}", f"{speed['dltrain'] / speed['numpy']:.2f}") if "numpy" in speed \
            else ("", "")
        lines.append(f"| {case} | {batch} | {speed['dltrain']:,.0f} | {speed['torch']:,.0f} | "
                     f"{speed['dltrain'] / speed['torch']:.2f} | {numpy_cells[0]} | {numpy_cells[1]} | "
                     f"{ceiling:,.0f} | {memory['dltrain']:.0f} | {memory['torch']:.0f} | "
                     f"{memory['dltrain'] / memory['torch']:.2f} |")
    lines += [
        "",
        "samples/s: training images over the seconds of one epoch's training loop (dltrain: summary.json's "
        "train_samples_per_second of `dltrain train CONFIG --set training.epochs=1 --set "
        "training.early_stopping=false -q`; PyTorch: the same loop, timed the same way); ratio = dltrain / PyTorch; "
        "ceiling = measured GEMM FLOP/s / FLOPs of one step's matrix products (forward, weight gradients, input "
        "gradients except the first layer's); peak MB = the process's maximum resident set (data, imports, "
        "validation and test evaluation included; dltrain's also its checkpoints and curves.png).",
        "",
        "The cases (54,000 Fashion-MNIST training images, one epoch; the same on both sides):",
        "",
        *[f"- {describe_case(case)}" for case in results],
        "",
        "Every repetition, samples/s (to show the spread; the table gives medians):",
        "",
    ]
    for case, runs in results.items():
        for framework, values in runs.items():
            lines.append(f"- {case} {framework}: " + ", ".join(f"{r['samples_per_second']:,.0f}" for r in values))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
