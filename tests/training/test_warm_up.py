"""The kernels' first calls happen in setup, not in epoch 1 (Trainer._warm_up), and the run is the same as without."""

import json
import random
import subprocess
import sys

import numpy as np

from dltrain.config import validate
from dltrain.training import rundir as files
from dltrain.training.checkpoint import load_checkpoint
from dltrain.training.run import run_training
from dltrain.training.trainer import Trainer

# Every kind of state a warm-up could disturb: batchnorm's running statistics, dropout's and the augmentations'
# random draws, Adam's moments, the average of the weights, and an epoch whose last batch is smaller.
CNN = {
    "seed": 5,
    "model": [{"conv2d": {"filters": 4, "kernel_size": 3, "padding": "same"}}, "batchnorm", "relu",
              {"max_pool2d": {"kernel_size": 2}}, "flatten", {"dropout": {"rate": 0.3}}, {"linear": {"units": 3}}],
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 2, "batch_size": 16, "grad_clip": 1.0, "ema": {"decay": 0.9}, "early_stopping": False},
}
RECURRENT = {
    "seed": 5,
    "model": [{"reshape": {"shape": [8, 8]}}, {"lstm": {"units": 6, "return_sequences": True}}, {"gru": {"units": 5}},
              {"linear": {"units": 3}}],
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 1, "batch_size": 16, "early_stopping": False},
}


def images(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, x=rng.integers(0, 256, (90, 1, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, 90))
    return {"name": "npz", "path": str(path), "val_fraction": 0.2}


def test_a_run_is_the_same_with_or_without_the_warm_up(tmp_path, monkeypatch):
    values = {**CNN, "data": {**images(tmp_path), "augment": [{"random_crop": {"padding": 1}}, "horizontal_flip"]}}
    run_training(validate(values, {}, "test"), run_dir=tmp_path / "warm", plot=False)
    monkeypatch.setattr(Trainer, "_warm_up", lambda self: None)
    run_training(validate(values, {}, "test"), run_dir=tmp_path / "cold", plot=False)

    def metrics(run):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in files.RunDir(run).read_metrics()]

    assert metrics(tmp_path / "warm") == metrics(tmp_path / "cold")
    warm, cold = (load_checkpoint(tmp_path / run / files.LAST) for run in ("warm", "cold"))
    for part in ("model", "training", "optimizer", "state"):
        assert_same(getattr(warm, part), getattr(cold, part), part)


def assert_same(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


# In a fresh process (another test's calls would have loaded the kernels already): count the compiled functions
# Numba loads or compiles between the start of epoch 1 and its end.
COUNT_LOADS = """
import json, sys
from numba.core.dispatcher import Dispatcher
from dltrain.config import validate
from dltrain.training.callbacks import Callback
from dltrain.training.run import run_training

loaded, inside = [], [False]
original = Dispatcher._compile_for_args

def counting(self, *args, **kwargs):
    if inside[0]:
        loaded.append(self.py_func.__qualname__)
    return original(self, *args, **kwargs)

Dispatcher._compile_for_args = counting

class Epoch(Callback):
    def on_epoch_begin(self, trainer, epoch):
        inside[0] = True

    def on_epoch_end(self, trainer, epoch, logs):
        inside[0] = False

summary = run_training(validate(json.loads(sys.argv[1]), {}, "test"), run_dir=sys.argv[2], callbacks=[Epoch()],
                       plot=False)
print(json.dumps({"loaded": loaded, "setup_seconds": summary["setup_seconds"],
                  "train_epoch_seconds": summary["train_epoch_seconds"]}))
"""


def loads_inside_epochs(values, run_dir):
    out = subprocess.run([sys.executable, "-c", COUNT_LOADS, json.dumps(values), str(run_dir)], capture_output=True,
                         text=True, env={"DLTRAIN_FUSED_KERNELS": "1", **_environment()})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _environment():
    import os

    return {k: v for k, v in os.environ.items() if k != "DLTRAIN_FUSED_KERNELS"}


def test_epoch_one_calls_no_kernel_for_the_first_time(tmp_path):
    values = {**CNN, "data": {**images(tmp_path), "augment": ["horizontal_flip"]}}
    result = loads_inside_epochs(values, tmp_path / "cnn")
    assert result["loaded"] == []
    assert result["setup_seconds"] > 0 and len(result["train_epoch_seconds"]) == 2


def test_recurrent_layers_call_no_kernel_for_the_first_time_in_epoch_one(tmp_path):
    result = loads_inside_epochs({**RECURRENT, "data": images(tmp_path)}, tmp_path / "rnn")
    assert result["loaded"] == []


class DrawsFromNumpysGenerator:
    """A user's layer that draws from NumPy's global generator and counts its training batches."""

    def __init__(self):
        from dltrain.layers import Module

        class Draws(Module):
            batches = 0

            def forward(self, x):
                if self.training:
                    Draws.batches += 1
                    np.random.random()
                    random.random()
                return x

        self.layer = Draws


def test_the_warm_up_puts_back_numpys_and_pythons_generators_and_copies_the_loss(tmp_path, monkeypatch):
    from dltrain.registry import layers

    draws = DrawsFromNumpysGenerator().layer
    monkeypatch.setitem(layers._entries, "draws_from_numpy", draws)
    values = {**CNN, "model": ["draws_from_numpy", *CNN["model"]], "data": images(tmp_path)}
    np.random.seed(1)
    random.seed(1)
    before = np.random.get_state()[1].copy(), random.getstate()
    trainer = Trainer(validate(values, {}, "test"), files.RunDir(tmp_path / "run", writable=False), "cpu")
    trainer.setup()
    assert draws.batches == 2  # the warm-up trained on the full batch and the last one: it ran
    np.testing.assert_array_equal(np.random.get_state()[1], before[0])
    assert random.getstate() == before[1]
