"""Export trained runs to ONNX and measure how far onnxruntime's outputs are from dltrain's on the test split.

    python benchmarks/onnx_agreement.py runs/fashion_mlp-*/ runs/fashion_cnn-*/ ...
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

import dltrain
from dltrain import no_grad
from dltrain.config import config_from_dict
from dltrain.data import prepare
from dltrain.export.onnx import export_checkpoint
from dltrain.layers import build_model
from dltrain.training.checkpoint import load_checkpoint, resolve_checkpoint
from dltrain.training.model import Model


def agreement(run: str) -> tuple[str, int, float]:
    ckpt = load_checkpoint(resolve_checkpoint(run))
    config = config_from_dict(ckpt.config)
    shape = tuple(ckpt.data["input_shape"])
    raw = prepare(config.data, Model.task_of(config), config.seed, "cpu",
                  stats={"mean": np.zeros((1,) * len(shape)), "std": np.ones((1,) * len(shape))}).test
    network = build_model(config.model, shape)
    network.load_state_dict(ckpt.model)
    network.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_checkpoint(run, Path(tmp) / "model.onnx")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for start in range(0, len(raw), 1000):
            x = np.asarray(raw.x[start:start + 1000], np.float32)
            normalized = ((x - ckpt.normalization["mean"]) / ckpt.normalization["std"]).astype(np.float32)
            with no_grad():
                ours = network(dltrain.tensor(normalized)).numpy()
            theirs = session.run(None, {"input": x})[0]
            worst = max(worst, float(np.abs(ours - theirs).max()))
    return Path(run).name, len(raw), worst


if __name__ == "__main__":
    print("| run | test samples | max abs difference |\n|---|---|---|")
    for run in sys.argv[1:]:
        name, n, worst = agreement(run)
        print(f"| {name} | {n} | {worst:.2e} |")
