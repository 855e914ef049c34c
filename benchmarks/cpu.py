"""CPU training speed and memory: `dltrain train` against the same training in PyTorch, several epochs, same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cpu.py --readme   # all: RESULTS.md, docs/speed.md
    python benchmarks/cpu.py --cases mlp_sgd128,fashion_cnn --reps 5 --epochs 4        # a subset: RESULTS.md only
    python benchmarks/cpu.py --cases tiny16 --reps 1 --samples 512 --epochs 2          # smoke test: writes nothing
    python benchmarks/cpu.py --device gpu --cases fashion_cnn,fashion_resnet         # both sides on the GPU: prints

The benchmark runs what ships. The dltrain side of a case is a config (a shipped one from configs/ as it is shipped,
or the benchmark's own) written to a temporary YAML file and trained by the CLI in a child process:
`dltrain train CONFIG --set training.epochs=E --set training.early_stopping=false -q` (E: --epochs, default 3, at
least 2; it is also the schedules' horizon, on both sides). Its times are summary.json's train_epoch_seconds (each
epoch's training loop: shuffle, gather and augment each batch, forward, loss read every step, backward, clipping,
step, the weight average; not validation, test evaluation, checkpoints or plotting) and setup_seconds (Trainer.setup:
data, model, optimizer, the compiled kernels' loading). The PyTorch side, in its own child process, trains the
same model on the same Fashion-MNIST training images (the configs' seed-0 stratified 10% validation split held out,
normalized by the training images' mean and std) for the same E epochs, as a PyTorch user writes it, feature for
feature (the same work per step as dltrain):

- loss: nn.CrossEntropyLoss(label_smoothing=...) (dltrain's smoothing is torch's: (1 - e) -log p[y] + e/C sum -log p);
- optimizer: torch.optim.SGD / Adam / AdamW with the config's options (the same update formulas), weight decay on the
  weights only (dltrain's `decay` flag: matrices and kernels, not biases or batchnorm's scale and shift);
- schedule, set before every step as dltrain sets it: one_cycle as torch's OneCycleLR (the same two cosine phases of
  the rate, and its momentum cycle on SGD's momentum or Adam's beta1, as dltrain's one_cycle sets them), every other
  schedule (constant, exponential, step, cosine, with warmup_epochs, interval and the linear scaling rule) as
  LambdaLR of lr_factor, dltrain's formula; tests/test_benchmark_translation.py checks both step by step;
- training.ema: torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True),
  updated after every optimizer step, started from the initial weights (one update_parameters before training,
  which copies them: dltrain's average starts there too), batchnorm's running statistics averaged as well; validation
  and the test evaluate the average, as dltrain's;
- data.augment, vectorized on the batch as dltrain's: random_crop pads the batch once with the value a raw 0 pixel
  has after normalization (dltrain's fill; reflect and edge padding as F.pad's reflect and replicate) and takes
  each image's window at its own random offset in [0, 2 * padding] by advanced indexing; horizontal_flip (and
  vertical_flip) mirrors the images of a random mask (probability p, 0.5) with torch.where;
- data.test_time_augment (untimed, in every validation and the test): each view of the batch (mirror images, shifts
  by one pixel with that fill) through the network, the class probabilities averaged (log-sum-exp of the
  log-probabilities less log(views), dltrain's average_outputs), the loss taken on that;
- training.grad_clip: nn.utils.clip_grad_norm_; dropout, batchnorm (momentum and eps in torch's meaning), residual
  blocks with dltrain's projection shortcuts, GRU/LSTM returning the last state: torch_network.

Each epoch: a new permutation, each batch gathered by index (and augmented), every step's loss read with
loss.item(); its training loop timed as dltrain times its own, then the validation images evaluated untimed (as
dltrain validates after every epoch); after the last epoch the test images, untimed, so that both peak memories
cover the same work. PyTorch's setup seconds: from after `import torch` to the first step (data read, split and
normalized, model, optimizer, schedule, the average's copy): the span of dltrain's Trainer.setup, which also starts
after its imports. For the two-layer MLPs a hand-written NumPy loop (HandWrittenMLP, the same epochs, plain SGD)
shows what no framework at all costs.

Reported per case: samples/s of the first epoch (one-time costs included, as in a user's first epoch: PyTorch's
lazy initialisation, the first call of each of dltrain's compiled kernels) and the median of the later epochs
(steady state); dltrain / PyTorch on the later epochs and over setup and all E epochs; each side's first epoch
seconds over its median later epoch ("first/later"); the setup seconds; peak resident memory (ru_maxrss: each
(case, framework) runs in its own process, data and imports included) and its ratio; the hardware ceiling (FLOPs of
one training step's matrix products over the measured float32 GEMM rate). The frameworks alternate within each
repetition so that both see the same machine states; each number is the median over the repetitions. 2 threads on
every side (DLTRAIN_THREADS, OMP/OpenBLAS/MKL, torch), float32. The machine's CPU model (and whether it has AVX-512)
and both sides' BLAS are printed and written: targets are stated per CPU kind.

A run writes the top part of RESULTS.md (the other scripts' sections stay); with --readme also the table between
<!-- cpu-table --> and <!-- /cpu-table --> in docs/speed.md. --samples N trains on the first N training images only
(validation and test: N/4; the same .npz files for both sides): a smoke test of the script, whose table is printed
and nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
EPOCHS = 3  # the default of --epochs: what the dltrain side is told with --set, and the schedules' horizon
HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
SPEED_PAGE = HERE.parent / "docs" / "speed.md"  # the speed page of the docs site holds the table
TABLE_MARKERS = ("<!-- cpu-table -->", "<!-- /cpu-table -->")

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
README_NAMES = {"mlp": "MLP 784-1024-10, plain SGD", "tiny": "tiny MLP 784-32-10 (per-step overhead)",
                "plain_cnn": "CNN conv32-pool-conv64-pool-fc128, plain SGD"}
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


def _options_text(options: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items())


def describe_case(case: str) -> str:
    """One line: the model, optimizer, schedule, batch size and every other feature a case trains with."""
    config = case_config(case)
    source, _ = CASES[case]
    model = OWN_MODELS[source] if source in MODELS else \
        f"configs/{source}" + (" with lstm for gru" if case == "fashion_lstm" else "")
    optimizer = dict(config["optimizer"])
    name = optimizer.pop("name")
    schedule = dict(config.get("schedule", {"name": "constant"}))
    schedule_name = schedule.pop("name")
    training, data = config["training"], config["data"]
    loss = loss_options(config)
    parts = [f"{case}: {model}", f"{name} ({_options_text(optimizer)})",
             f"{schedule_name} schedule" + (f" ({_options_text(schedule)})" if schedule else ""),
             f"batch {training['batch_size']}"]
    if loss.get("label_smoothing"):
        parts.append(f"label smoothing {loss['label_smoothing']}")
    if training.get("grad_clip"):
        parts.append(f"grad_clip {training['grad_clip']}")
    if data.get("augment"):
        parts.append("augment " + ", ".join(
            n + (f" ({_options_text(o)})" if o else "") for n, o in map(parse, data["augment"])))
    if ema_decay(config):
        parts.append(f"EMA of the weights, decay {ema_decay(config)}")
    if data.get("test_time_augment"):
        parts.append("test-time views " + ", ".join(data["test_time_augment"]))
    return "; ".join(parts)


def loss_options(config: dict) -> dict:
    """The config's loss as {'name': ..., options}; only cross_entropy is translated."""
    loss = config.get("loss", "cross_entropy")
    loss = {"name": loss} if isinstance(loss, str) else dict(loss)
    if loss["name"] != "cross_entropy":
        raise ValueError(f"the benchmark's PyTorch translation has no loss {loss['name']!r}")
    return loss


def ema_decay(config: dict) -> float | None:
    """training.ema's decay when the average is on (a mapping turns it on), else None."""
    ema = config.get("training", {}).get("ema")
    if not ema or (isinstance(ema, dict) and not ema.get("enabled", True)):
        return None
    return float(ema.get("decay", 0.999)) if isinstance(ema, dict) else 0.999


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


def lr_factor(schedule: dict, epochs: int, steps_per_epoch: int, batch_size: int | None = None):
    """dltrain's learning-rate schedule (dltrain/optim/schedules.py) as a function of the global step, a factor of
    the optimizer's base rate, for torch's LambdaLR stepped after every step: the linear warmup over warmup_epochs
    (counted in steps, from warmup_start_factor), then the schedule's curve at the epochs since warmup ended, whole
    epochs (interval 'epoch', the default) or fractional ('step'); times batch_size / base_batch_size with the linear
    scaling rule. one_cycle sets the rate itself: torch_schedule gives it OneCycleLR."""
    options = dict(schedule)
    name, interval = options.pop("name"), options.pop("interval", "epoch")
    if name == "one_cycle":
        raise ValueError("one_cycle is not a factor of the base rate: torch_schedule translates it to OneCycleLR")
    warmup, start = options.pop("warmup_epochs", 0.0), options.pop("warmup_start_factor", 0.0)
    base_batch = options.pop("base_batch_size", None)
    scale = batch_size / base_batch if base_batch and batch_size else 1.0
    gamma = options.pop("gamma", 0.1 if name == "step" else 0.98)
    step_size, low = options.pop("step_size", 10), options.pop("min_factor", 0.0)
    _none_left(options)
    steps = max(1, steps_per_epoch)
    curves = {
        "constant": lambda e: 1.0,
        "exponential": lambda e: gamma ** e,
        "step": lambda e: gamma ** math.floor(e / step_size),
        "cosine": lambda e: low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(e / max(epochs - warmup, 1e-12), 1.0))),
    }
    curve = curves[name]

    def factor(global_step: int) -> float:
        epoch, step = divmod(global_step, steps)
        fine = epoch + step / steps
        if fine < warmup:
            return scale * (start + (1 - start) * fine / warmup)
        t = fine if interval == "step" else float(epoch)
        return scale * curve(max(0.0, t - warmup))

    return factor


def torch_schedule(optimizer, schedule: dict, epochs: int, steps_per_epoch: int, batch_size: int | None = None):
    """dltrain's schedule on a torch optimizer, to be stepped after every optimizer step (so that step k of the
    run trains with dltrain's lr(epoch, step) and momentum(epoch, step)). one_cycle: torch's OneCycleLR, the same
    formula as dltrain's (phases ending at pct_start * total - 1 and total - 1, cosine annealing of the rate from
    max_lr / div_factor up to max_lr and down to that / final_div_factor, and of the momentum the other way, on SGD's
    momentum or Adam's beta1; dltrain's one_cycle ignores warmup and interval, and leaves plain SGD plain). Every
    other schedule: LambdaLR of lr_factor."""
    import torch

    options = dict(schedule)
    if options.get("name") != "one_cycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, epochs, steps_per_epoch, batch_size))
    options.pop("name")
    for ignored in ("warmup_epochs", "warmup_start_factor", "interval"):  # dltrain's OneCycle.lr does not read them
        options.pop(ignored, None)
    base_batch = options.pop("base_batch_size", None)
    scale = batch_size / base_batch if base_batch and batch_size else 1.0
    group = optimizer.param_groups[0]
    max_lr = (options.pop("max_lr", None) or group["lr"]) * scale
    cycle = options.pop("cycle_momentum", True) and ("betas" in group or group.get("momentum", 0) > 0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=epochs * max(1, steps_per_epoch), pct_start=options.pop("pct_start", 0.3),
        anneal_strategy="cos", cycle_momentum=cycle, base_momentum=options.pop("base_momentum", 0.85),
        max_momentum=options.pop("max_momentum", 0.95), div_factor=options.pop("div_factor", 25.0),
        final_div_factor=options.pop("final_div_factor", 1e4), three_phase=False, **_none_left(options))


def _none_left(options: dict) -> dict:
    if options:
        raise ValueError(f"the benchmark's PyTorch translation has no options {sorted(options)}")
    return options


def torch_loss(config: dict, train_labels, classes: int):
    """nn.CrossEntropyLoss with the config's label_smoothing and class_weights ('balanced': n / (classes x count),
    over the training labels)."""
    import torch
    from torch import nn

    options = loss_options(config)
    options.pop("name")
    smoothing, weights = options.pop("label_smoothing", 0.0), options.pop("class_weights", None)
    _none_left(options)
    if weights == "balanced":
        counts = torch.bincount(train_labels, minlength=classes).double()
        weights = [len(train_labels) / (len(counts) * c) if c else 0.0 for c in counts.tolist()]
    return nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights, dtype=torch.float32,
                                                                                device=train_labels.device),
                               label_smoothing=smoothing)


def torch_shift(x, dy, dx, pad: int, fill: float, mode: str = "constant"):
    """Each image of the batch (N, C, H, W) cropped from the batch padded once by `pad` (with `fill`, or reflected,
    or the edge repeated), its window's corner at its own (dy, dx) in [0, 2 * pad]: dltrain's _shift."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=fill) if mode == "constant" else \
        F.pad(x, (pad, pad, pad, pad), mode={"reflect": "reflect", "edge": "replicate"}[mode])
    at = x.device
    rows = (dy[:, None] + torch.arange(h, device=at))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=at))[:, None, None, :]  # (N, 1, 1, W)
    return padded[torch.arange(n, device=at)[:, None, None, None], torch.arange(c, device=at)[None, :, None, None],
                  rows, cols]


def torch_augment(specs: list, fill: float):
    """data.augment in PyTorch, vectorized on the batch as dltrain/data/augment.py is: a function of the images
    (N, C, H, W), or None without augmentation."""
    import torch

    def crop(x, pad: int, mode: str):
        dy = torch.randint(0, 2 * pad + 1, (len(x),), device=x.device)  # each window's corner: [0, 2 * pad]
        dx = torch.randint(0, 2 * pad + 1, (len(x),), device=x.device)
        return torch_shift(x, dy, dx, pad, fill, mode)

    def flip(x, p: float, dim: int):
        return torch.where((torch.rand(len(x), device=x.device) < p)[:, None, None, None], x.flip(dim), x)

    steps = []
    for spec in specs or []:
        name, opts = parse(spec)
        opts = dict(opts)
        if name == "random_crop":
            pad, mode = opts.pop("padding", 4), opts.pop("padding_mode", "constant")
            steps.append(lambda x, pad=pad, mode=mode: crop(x, pad, mode))
        elif name == "random_translate":
            pad = opts.pop("max_pixels", 2)
            steps.append(lambda x, pad=pad: crop(x, pad, "constant"))
        elif name in ("horizontal_flip", "vertical_flip"):
            p, dim = opts.pop("p", 0.5), -1 if name == "horizontal_flip" else -2
            steps.append(lambda x, p=p, dim=dim: flip(x, p, dim))
        else:
            raise ValueError(f"the benchmark's PyTorch translation has no augmentation {name!r}")
        _none_left(opts)
    if not steps:
        return None

    def augment(x):
        for step in steps:
            x = step(x)
        return x

    return augment


def torch_views(names: list, fill: float) -> list:
    """data.test_time_augment's views of a batch (dltrain/training/model.py's TEST_TIME_VIEWS), as contiguous
    tensors: mirror images, and shifts by one pixel whose uncovered row or column holds `fill`."""
    import torch.nn.functional as F

    def shifted(x, down: int, right: int):
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), value=fill)
        return padded[..., 1 - down:1 - down + h, 1 - right:1 - right + w].contiguous()

    views = {"horizontal_flip": lambda x: x.flip(-1), "vertical_flip": lambda x: x.flip(-2),
             "shift_up": lambda x: shifted(x, -1, 0), "shift_down": lambda x: shifted(x, 1, 0),
             "shift_left": lambda x: shifted(x, 0, -1), "shift_right": lambda x: shifted(x, 0, 1)}
    return [views[name] for name in dict.fromkeys(names or [])]


def torch_average(stacked):
    """Logits (views, N, classes) of one batch seen several ways -> (N, classes): the log of the mean class
    probabilities, combined in log space (dltrain's average_outputs), which the loss and argmax take as logits."""
    import torch

    return torch.logsumexp(torch.log_softmax(stacked, -1), 0) - math.log(len(stacked))


def torch_evaluate(net, x, y, loss_fn, batch: int, views: list) -> tuple[float, float]:
    """(mean loss, accuracy) of a split in eval mode without gradients, batch by batch; with test-time views the
    class probabilities of the batch and of each view averaged (in log space, as dltrain's average_outputs)."""
    import torch

    was_training = net.training
    net.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            xb, yb = x[start:start + batch], y[start:start + batch]
            out = net(xb)
            if views:
                out = torch_average(torch.stack([out] + [net(view(xb)) for view in views]))
            loss_sum += loss_fn(out, yb).item() * len(yb)
            correct += int((out.argmax(dim=1) == yb).sum())
    net.train(was_training)
    return loss_sum / len(x), correct / len(x)


def torch_ema(net, decay: float):
    """training.ema in PyTorch: an AveragedModel of the weights and buffers (batchnorm's statistics, as dltrain's
    average), started from the initial weights as dltrain's: its first update_parameters copies them."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(net)
    return ema


def torch_backends() -> str:
    """PyTorch's BLAS and convolution libraries, and the CPU code path it runs."""
    import torch

    shown = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", shown)
    onednn = re.search(r"MKL-DNN v([\w.]+)", shown)
    parts = [f"BLAS {blas.group(1) if blas else 'unknown'}" + (f" {mkl.group(1)}" if mkl and blas and
                                                                  blas.group(1) == "mkl" else "")]
    if onednn:
        parts.append(f"oneDNN {onednn.group(1)}")
    try:
        parts.append(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    except AttributeError:
        pass
    return ", ".join(parts)


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

    mean, std = pixel_statistics(splits)
    out = {}
    for name, (x, y) in splits.items():
        x = x.astype(np.float32)
        x -= np.float32(mean)
        x /= np.float32(std)
        out[name] = (x, y)
    return out


def pixel_statistics(splits: dict) -> tuple[float, float]:
    """The training images' mean and standard deviation over all pixels (float64)."""
    import numpy as np

    counts = np.bincount(splits["train"][0].ravel(), minlength=256).astype(np.float64)
    values = np.arange(len(counts), dtype=np.float64)
    mean = (counts * values).sum() / counts.sum()
    return mean, math.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())


def blank_pixel(splits: dict) -> float:
    """What a raw 0 pixel is after normalization: the fill of augmentation's padding and of the shifted test-time
    views (dltrain's blank_value)."""
    mean, std = pixel_statistics(splits)
    return -mean / std


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

# The dltrain side: the CLI, in-process (so ru_maxrss is the run's), then summary.json's times and metrics.csv's
# losses (to show that both sides learn).
DLTRAIN_WRAPPER = """
import csv, json, resource, sys
from pathlib import Path
from dltrain.cli import main
config, run_dir, epochs, device = sys.argv[1:5]
sys.argv = ["dltrain", "train", config, "--set", "training.epochs=" + epochs, "--set", "training.early_stopping=false",
            "--run-dir", run_dir, "--device", device, "-q"]
try:
    main()
except SystemExit as done:
    if done.code:
        raise
summary = json.loads((Path(run_dir) / "summary.json").read_text())
with open(Path(run_dir) / "metrics.csv", newline="") as rows:
    metrics = list(csv.DictReader(rows))
print(json.dumps({"epoch_seconds": summary["train_epoch_seconds"], "setup_seconds": summary["setup_seconds"],
                  "samples_per_second": summary["train_samples_per_second"],
                  "train_loss": [float(row["train_loss"]) for row in metrics],
                  "val_accuracy": [float(row["val_accuracy"]) for row in metrics],
                  "test_accuracy": summary.get("test_accuracy"),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

TRAINING_KEYS = {"epochs", "batch_size", "grad_clip", "ema", "early_stopping", "eval_batch_size", "shuffle",
                 "accumulate_steps"}  # what the PyTorch translation reads; any other key stops it


def run_torch(case: str, samples: int | None, epochs: int, device: str = "cpu") -> dict:
    """The case for `epochs` epochs in PyTorch, as a PyTorch user writes it, each epoch's training loop timed;
    validation after every epoch and the test at the end, untimed. On device 'gpu' the data, model and every
    batch live on the GPU (dltrain's --device gpu keeps its data there too)."""
    import torch
    from torch import nn

    import dltrain.data.datasets  # noqa: F401 (the data's reader: its import is not PyTorch's setup)
    import dltrain.data.splits  # noqa: F401

    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    config = case_config(case)
    training, data_options = config["training"], config["data"]
    unknown = set(training) - TRAINING_KEYS
    if unknown or training.get("accumulate_steps", 1) != 1 or not training.get("shuffle", True):
        raise ValueError(f"the benchmark's PyTorch translation has no training options {sorted(unknown)} "
                         "(nor accumulate_steps or shuffle: false)")
    batch, clip = training["batch_size"], training.get("grad_clip")
    eval_batch = training.get("eval_batch_size", 1024)
    specs = config["model"]
    if parse(specs[-1])[0] == "softmax":  # dltrain trains a final softmax through cross_entropy on its logits
        specs = specs[:-1]
    splits = fashion_splits(config.get("seed", 0), data_options.get("val_fraction", 0.1), samples)
    fill = blank_pixel(splits)
    at = torch.device("cuda" if device == "gpu" else "cpu")
    data = {name: (torch.from_numpy(x).to(at), torch.from_numpy(y.astype("int64")).to(at))
            for name, (x, y) in normalized(splits).items()}
    del splits
    x, y = data["train"]
    n = len(x)
    steps = math.ceil(n / batch)
    net = torch_network(specs, tuple(x.shape[1:])).to(at)
    opt = torch_optimizer(net.parameters(), config.get("optimizer", {"name": "adam"}))
    schedule = torch_schedule(opt, config.get("schedule", {"name": "constant"}), epochs, steps, batch)
    loss_fn = torch_loss(config, y, matmul_macs(specs, tuple(x.shape[1:]))[2][0])
    augment = torch_augment(data_options.get("augment"), fill)
    views = torch_views(data_options.get("test_time_augment"), fill)
    decay = ema_decay(config)
    ema = torch_ema(net, decay) if decay else None
    evaluated = ema.module if ema else net  # validation and the test see the average, as dltrain's
    setup_seconds = time.perf_counter() - started

    epoch_seconds, train_loss, val_accuracy = [], [], []
    for _ in range(epochs):
        net.train()
        start = time.perf_counter()
        order = torch.randperm(n, device=at)
        loss_sum, correct = 0.0, 0
        for step in range(steps):
            idx = order[step * batch:(step + 1) * batch]
            xb, yb = x[idx], y[idx]
            if augment:
                xb = augment(xb)
            out = net(xb)
            loss = loss_fn(out, yb)
            value = loss.item()
            opt.zero_grad()
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
            if ema:
                ema.update_parameters(net)
            schedule.step()
            loss_sum += value * len(idx)
            correct += int((out.argmax(dim=1) == yb).sum())  # (reads the GPU: the epoch's work is done)
        epoch_seconds.append(time.perf_counter() - start)
        train_loss.append(loss_sum / n)
        val_accuracy.append(torch_evaluate(evaluated, *data["val"], loss_fn, eval_batch, views)[1])
    test_accuracy = torch_evaluate(evaluated, *data["test"], loss_fn, eval_batch, views)[1]
    return {"epoch_seconds": epoch_seconds, "setup_seconds": setup_seconds, "train_samples": n, "steps": steps,
            "train_loss": train_loss, "val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
            "version": torch.__version__, "backends": torch_backends()}


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


def run_numpy(case: str, samples: int | None, epochs: int) -> dict:
    """The epochs of an MLP case by hand: the same shuffled gather and loss read every step, SGD at the case's rate."""
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
    epoch_seconds, train_loss = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(len(x))
        loss_sum = 0.0
        for step in range(math.ceil(len(x) / batch)):
            idx = order[step * batch:(step + 1) * batch]
            loss_sum += float(mlp.step(flat[idx], y[idx], with_loss=True)) * len(idx)
        epoch_seconds.append(time.perf_counter() - start)
        train_loss.append(loss_sum / len(x))
    return {"epoch_seconds": epoch_seconds, "train_loss": train_loss}


def worker(framework: str, case: str, samples: int | None, epochs: int, device: str = "cpu") -> None:
    import resource

    result = run_torch(case, samples, epochs, device) if framework == "torch" else run_numpy(case, samples, epochs)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# ---------------------------------------------------------------- the machine


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def blas_kernel() -> str:
    """NumPy's BLAS (dltrain's): library, version and the kernels it chose for this CPU."""
    try:
        import numpy  # noqa: F401 (loaded, so that threadpoolctl finds its BLAS)
        from threadpoolctl import threadpool_info

        return ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                         for i in threadpool_info() if i.get("user_api") == "blas")
    except ImportError:
        return "unknown (pip install threadpoolctl)"


def cpu_kind() -> dict:
    """The CPU model (/proc/cpuinfo's 'model name') and its vector extensions (its 'flags'): targets are stated per
    CPU kind, and AVX-512 (avx512f) decides which BLAS and oneDNN kernels run."""
    model, flags = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and flags is None:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "avx512": None if flags is None else "avx512f" in flags,
            "avx2": None if flags is None else "avx2" in flags,
            "amx": None if flags is None else "amx_tile" in flags}


def cpu_line(kind: dict) -> str:
    """'AMD EPYC, AVX-512 (avx512f): yes, AVX2: yes, AMX: no'."""
    def said(value):
        return "unknown" if value is None else ("yes" if value else "no")

    return f"{kind['model']}, AVX-512 (avx512f): {said(kind['avx512'])}, AVX2: {said(kind['avx2'])}, " \
           f"AMX: {said(kind['amx'])}"


# ---------------------------------------------------------------- orchestration


def own_options() -> argparse.Namespace:
    """--samples, --epochs and --readme, taken off the command line (harness.arguments reads the options every
    script shares)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--readme", action="store_true")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    known, sys.argv[1:] = parser.parse_known_args()
    if known.samples is not None and known.samples < 1:
        raise SystemExit("--samples: a positive number of training samples")
    if known.epochs < 2:
        raise SystemExit("--epochs: at least 2 (the first epoch, and later ones to take the median of)")
    return known


def write_case_config(case: str, folder: Path, smoke_data: dict | None) -> Path:
    """The case's config as a YAML file in `folder`; for a smoke test its data are the .npz files made for it (its
    augmentation and test-time views kept)."""
    import yaml

    config = case_config(case)
    if smoke_data:
        kept = {key: config["data"][key] for key in ("augment", "test_time_augment") if key in config["data"]}
        config["data"] = {"name": "npz", "normalize": "global", **smoke_data, **kept}
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


def measure(framework: str, case: str, config: Path, folder: Path, opts: argparse.Namespace) -> dict:
    """One child process: the dltrain CLI on the case's config, or this script's worker for the others."""
    env = {**os.environ, "DLTRAIN_THREADS": str(THREADS), "OMP_NUM_THREADS": str(THREADS),
           "OPENBLAS_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    if framework == "dltrain":
        run_dir = Path(tempfile.mkdtemp(prefix=f"run-{case}-", dir=folder))
        command = [sys.executable, "-c", DLTRAIN_WRAPPER, str(config), str(run_dir), str(opts.epochs), opts.device]
    else:
        command = [sys.executable, __file__, "--worker", framework, case, "--epochs", str(opts.epochs),
                   "--device", opts.device] + \
            (["--samples", str(opts.samples)] if opts.samples else [])
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{framework} {case} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if len(result["epoch_seconds"]) != opts.epochs:
        raise SystemExit(f"{framework} {case}: {len(result['epoch_seconds'])} epochs timed, not {opts.epochs}")
    return result


def epoch_figures(result: dict, n: int) -> dict:
    """One process's speeds from its epochs' seconds: the first epoch's samples/s, the median later epoch's, all
    epochs' together, and the first epoch's seconds over the median later epoch's."""
    seconds = result["epoch_seconds"]
    later = statistics.median(seconds[1:])
    # "all": setup and every epoch, so that one-time costs count wherever a framework pays them (dltrain in its
    # setup's warm-up, PyTorch lazily in its first epoch)
    return {"first": n / seconds[0], "later": n / later,
            "all": len(seconds) * n / (sum(seconds) + result.get("setup_seconds", 0.0)),
            "first_over_later": seconds[0] / later}


def summarize(runs: dict, n: int) -> dict:
    """{framework: {figure: median over the repetitions}} for the speeds, setup seconds and peak memory."""
    summary = {}
    for framework, results in runs.items():
        figures = [epoch_figures(r, n) for r in results]
        summary[framework] = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
        summary[framework]["peak_mb"] = statistics.median(r["peak_mb"] for r in results)
        if all("setup_seconds" in r for r in results):
            summary[framework]["setup_seconds"] = statistics.median(r["setup_seconds"] for r in results)
    return summary


def main() -> None:
    from harness import alternating, arguments  # (benchmarks/ is on sys.path when this script runs)

    opts = own_options()
    args = arguments(__doc__, CASES, reps=3)
    if args.worker:
        worker(*args.worker, opts.samples, opts.epochs, opts.device)
        return
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; the cases: {', '.join(CASES)}")
    if opts.samples:
        print(f"WARNING: --samples {opts.samples}: a smoke test on {opts.samples} training samples, not the "
              "benchmark; its numbers are not comparable and nothing is written", flush=True)
    kind = cpu_kind()
    print(f"CPU: {cpu_line(kind)}; {os.cpu_count()} cores, {THREADS} threads per side", flush=True)
    print(f"dltrain's BLAS (NumPy): {blas_kernel()}", flush=True)
    rate = gemm_rate()
    results, samples = {}, {}
    with tempfile.TemporaryDirectory(prefix="dltrain-cpu-bench-") as tmp:
        folder = Path(tmp)
        smoke_data = write_smoke_data(folder, opts.samples) if opts.samples else None
        for case in cases:
            config = write_case_config(case, folder, smoke_data)
            frameworks = ["dltrain", "torch"] + (["numpy"] if CASES[case][0] in HAND_WRITTEN and
                                                 opts.device == "cpu" else [])
            runs = results[case] = alternating(
                case, frameworks, args.reps, lambda f, c, config=config: measure(f, c, config, folder, opts))
            n = samples[case] = runs["torch"][0]["train_samples"]
            check_same_samples(case, runs["dltrain"], n)
            figures = summarize(runs, n)
            print(f"{case}: " + "; ".join(
                f"{f} {s['first']:,.0f} first, {s['later']:,.0f} later samples/s" for f, s in figures.items())
                + f"; ratio later {figures['dltrain']['later'] / figures['torch']['later']:.2f}", flush=True)
    torch_info = next(r for runs in results.values() for r in runs["torch"])
    machine = {"cpu": kind, "cores": os.cpu_count(), "blas": blas_kernel(), "gemm": rate,
               "torch": torch_info["version"], "torch_backends": torch_info["backends"],
               "date": time.strftime("%Y-%m-%d"), "reps": args.reps, "epochs": opts.epochs}
    text = results_section(results, samples, machine, command_line(args, opts))
    if opts.device == "gpu":  # the section is the CPU's: print the GPU's figures, write nothing
        print("\n" + text + f"\n--device gpu ({gpu_name()}): both sides trained on the GPU; the machine line above is "
              f"the host's; {args.out} and docs/speed.md not written")
        return
    if opts.samples:
        print("\n" + text + f"\nWARNING: --samples {opts.samples} (smoke test): {args.out}"
              + (" and docs/speed.md" if opts.readme else "") + " not written")
        return
    from harness import replace_section

    replace_section(Path(args.out), None, text)  # the sections of mpi_scaling.py, gpu.py and text.py stay
    print(f"wrote {args.out}")
    if opts.readme:
        replace_readme_table(SPEED_PAGE, readme_block(results, samples, machine))
        print(f"wrote the table of {SPEED_PAGE}")


def check_same_samples(case: str, results: list, n: int) -> None:
    """Stop unless dltrain trained on as many samples per epoch as PyTorch: its summary's samples/s times its epochs'
    seconds (rounded to milliseconds, so checked only where they add up to a second or more)."""
    for result in results:
        seconds = sum(result["epoch_seconds"])
        trained = result["samples_per_second"] * seconds / len(result["epoch_seconds"])
        if seconds >= 1 and abs(trained / n - 1) > 0.02:
            raise SystemExit(f"{case}: dltrain trained about {trained:,.0f} samples an epoch, PyTorch {n:,}")


def command_line(args, opts) -> str:
    """The command that makes these results (the options that differ from the defaults)."""
    extra = [f"--cases {args.cases}"] if args.cases != ",".join(CASES) else []
    extra += [f"--reps {args.reps}"] if args.reps != 3 else []
    extra += [f"--epochs {opts.epochs}"] if opts.epochs != EPOCHS else []
    extra += [f"--samples {opts.samples}"] if opts.samples else []
    extra += ["--readme"] if opts.readme else []
    return " ".join(["env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cpu.py", *extra])


# ---------------------------------------------------------------- RESULTS.md and docs/speed.md


def machine_line(machine: dict) -> str:
    return (f"CPU: {cpu_line(machine['cpu'])}; {machine['cores']} cores, {THREADS} threads per side. "
            f"BLAS: dltrain (NumPy) {machine['blas']}; PyTorch {machine['torch']}: {machine['torch_backends']}. "
            f"float32 GEMM {machine['gemm'] / 1e9:.1f} GFLOP/s (NumPy, measured).")


def results_section(results: dict, samples: dict, machine: dict, command: str) -> str:
    """The top part of RESULTS.md: the machine, the table of medians, how each case is translated, every
    repetition, and the losses that show both sides learning."""
    epochs = machine["epochs"]
    lines = [
        f"# CPU benchmark: `dltrain train` against PyTorch, {epochs} epochs per process",
        "",
        machine_line(machine),
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, date {machine['date']}, "
        f"{plural(machine['reps'], 'repetition')}, medians.",
        "",
        f"Command: `{command}`",
        "",
        "| case | batch | dltrain 1st epoch | dltrain later | PyTorch 1st epoch | PyTorch later | ratio later "
        f"| ratio all {epochs} epochs | first/later dltrain | first/later PyTorch | setup s dltrain "
        "| setup s PyTorch | NumPy by hand later | dltrain / NumPy | ceiling | dltrain peak MB | PyTorch peak MB "
        "| memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, runs in results.items():
        config = case_config(case)
        batch = config["training"]["batch_size"]
        s = summarize(runs, samples[case])
        d, t = s["dltrain"], s["torch"]
        ceiling = machine["gemm"] / step_flops(config["model"], batch) * batch
        numpy_cells = (f"{s['numpy']['later']:,.0f}", f"{d['later'] / s['numpy']['later']:.2f}") if "numpy" in s \
            else ("", "")
        lines.append(f"| {case} | {batch} | {d['first']:,.0f} | {d['later']:,.0f} | {t['first']:,.0f} | "
                     f"{t['later']:,.0f} | {d['later'] / t['later']:.2f} | {d['all'] / t['all']:.2f} | "
                     f"{d['first_over_later']:.2f} | {t['first_over_later']:.2f} | {d['setup_seconds']:.1f} | "
                     f"{t['setup_seconds']:.1f} | {numpy_cells[0]} | {numpy_cells[1]} | {ceiling:,.0f} | "
                     f"{d['peak_mb']:.0f} | {t['peak_mb']:.0f} | {d['peak_mb'] / t['peak_mb']:.2f} |")
    lines += [
        "",
        f"samples/s: training images over the seconds of one epoch's training loop; \"1st epoch\": the first of the "
        f"{epochs} (one-time costs included), \"later\": {later_epochs(epochs)}. dltrain: summary.json's "
        f"train_epoch_seconds of `dltrain train CONFIG --set training.epochs={epochs} --set "
        "training.early_stopping=false -q`; PyTorch: the same loop, timed the same way. ratio later = dltrain / "
        f"PyTorch on the later epochs (steady state); ratio all {epochs} epochs = the same over the setup's and all "
        "the epochs' seconds (one-time costs count wherever they are paid). first/later = the first epoch's seconds "
        "over the median later epoch's. setup s: dltrain's setup_seconds (Trainer.setup: data, model, optimizer, "
        "the warm-up that makes the kernels' first calls), PyTorch's from after `import torch` to its first step "
        "(data, model, optimizer, schedule, the average's copy). "
        "ceiling = measured GEMM FLOP/s / FLOPs of one step's matrix products (forward, weight gradients, input "
        "gradients except the first layer's). peak MB = the process's maximum resident set (data, imports, every "
        "validation and the test evaluation, test-time views included; dltrain's also its checkpoints and "
        "curves.png).",
        "",
        "How PyTorch trains each feature of a config (benchmarks/cpu.py's docstring says more): label_smoothing: "
        "nn.CrossEntropyLoss(label_smoothing); one_cycle: OneCycleLR, its momentum cycle on Adam's beta1; other "
        "schedules (cosine with warmup_epochs and min_factor, exponential): LambdaLR of dltrain's formula, stepped "
        "every step; training.ema: AveragedModel with get_ema_multi_avg_fn(decay) and use_buffers=True, updated after "
        "every step, validated and tested; random_crop: one F.pad of the batch with a raw 0's normalized value, each "
        "image's window at its own random offset by advanced indexing; horizontal_flip: torch.where on a random mask; "
        "test_time_augment: the views' class probabilities averaged in every validation and the test (untimed); "
        "grad_clip: clip_grad_norm_.",
        "",
        f"The cases ({samples_line(samples)} training images, {epochs} epochs; the same on both sides):",
        "",
        *[f"- {describe_case(case)}" for case in results],
        "",
        "Every repetition, samples/s of each epoch (to show the spread; the table gives medians):",
        "",
    ]
    for case, runs in results.items():
        for framework, values in runs.items():
            lines.append(f"- {case} {framework}: " + "; ".join(
                " / ".join(f"{samples[case] / sec:,.0f}" for sec in r["epoch_seconds"]) for r in values))
    lines += ["", "Training loss of each epoch (first repetition) and the last validation accuracy, to show that both "
              "sides learn (the same data, model, optimizer and schedule; each its own initial weights and random "
              "draws, and with training.ema the validated average trails the trained weights):", ""]
    for case, runs in results.items():
        parts = []
        for framework, values in runs.items():
            r = values[0]
            accuracy = f", val accuracy {r['val_accuracy'][-1]:.3f}" if r.get("val_accuracy") else ""
            parts.append(f"{framework} " + " / ".join(f"{v:.3f}" for v in r["train_loss"]) + accuracy)
        lines.append(f"- {case}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def later_epochs(epochs: int) -> str:
    return "epoch 2" if epochs == 2 else f"the median of epochs 2 to {epochs}"


def samples_line(samples: dict) -> str:
    counts = sorted(set(samples.values()))
    return " or ".join(f"{c:,}" for c in counts)


def readme_name(case: str) -> str:
    source, _ = CASES[case]
    if source in MODELS:
        return README_NAMES[source]
    if case == "fashion_lstm":
        return "`fashion_gru` with an LSTM"
    return f"`{Path(source).stem}` as shipped"


def readme_block(results: dict, samples: dict, machine: dict) -> str:
    """docs/speed.md's table and the line before it that says where and how it was measured."""
    epochs = machine["epochs"]
    lines = [
        f"Latest run, {machine['date']}: {machine_line(machine)} {epochs} epochs per process, "
        f"{plural(machine['reps'], 'repetition')}, medians; samples/s of the later epochs ({later_epochs(epochs)}: "
        f"steady state), dltrain / PyTorch on those and over setup and all {epochs} epochs, "
        "each side's first epoch seconds over its later ones, dltrain's setup seconds (`benchmarks/RESULTS.md` has "
        "the first epochs' speeds, both setups, the peak memory and every repetition):",
        "",
        f"| case | batch | dltrain | PyTorch | ratio | ratio all {epochs} epochs | first/later dltrain / PyTorch "
        "| dltrain setup s | peak memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, runs in results.items():
        s = summarize(runs, samples[case])
        d, t = s["dltrain"], s["torch"]
        lines.append(f"| {readme_name(case)} | {case_config(case)['training']['batch_size']} | {d['later']:,.0f} | "
                     f"{t['later']:,.0f} | {d['later'] / t['later']:.2f} | {d['all'] / t['all']:.2f} | "
                     f"{d['first_over_later']:.2f} / {t['first_over_later']:.2f} | {d['setup_seconds']:.1f} | "
                     f"{d['peak_mb'] / t['peak_mb']:.2f} |")
    return "\n".join(lines) + "\n"


def replace_readme_table(path: Path, block: str) -> None:
    """Put `block` between docs/speed.md's <!-- cpu-table --> and <!-- /cpu-table --> markers."""
    text = path.read_text()
    start, end = TABLE_MARKERS
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{path}: expected one {start} ... {end} pair around the CPU table")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    path.write_text(f"{head}{start}\n\n{block.strip()}\n\n{end}{tail}")


if __name__ == "__main__":
    main()
