"""Export trained runs to ONNX and measure how far onnxruntime's outputs are from dltrain's on the test split.

    python benchmarks/onnx_agreement.py runs/fashion_mlp-*/ runs/fashion_cnn-*/ ...
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

from dltrain import no_grad
from dltrain.config import config_from_dict
from dltrain.export.onnx import export_checkpoint
from dltrain.training.checkpoint import load_checkpoint, resolve_checkpoint
from dltrain.training.model import build_for


def agreement(run: str) -> tuple[str, int, float]:
    """The largest absolute difference between dltrain's network outputs and the exported graph's on the test
    split: the graph takes raw inputs (it normalizes them, and computes a text model's padding mask itself)."""
    ckpt = load_checkpoint(resolve_checkpoint(run))
    built = build_for(config_from_dict(ckpt.config), "cpu", ckpt)  # a text model tokenizes with its checkpoint's
    model = built.model
    model.network.load_state_dict(ckpt.model)
    model.network.eval()
    test = built.splits.test
    mean, std = (np.asarray(ckpt.normalization[key], np.float32) for key in ("mean", "std"))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_checkpoint(run, Path(tmp) / "model.onnx")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for start in range(0, len(test), 1000):
            normalized = np.asarray(test.x[start:start + 1000], np.float32)
            with no_grad():
                ours = model.network(model.input_tensor(normalized)).numpy()
            raw = (normalized * std + mean).astype(np.float32)  # what a user hands the graph
            theirs = session.run(None, {"input": raw})[0]
            worst = max(worst, float(np.abs(ours - theirs).max()))
    return Path(run).name, len(test), worst


if __name__ == "__main__":
    print("| run | test samples | max abs difference |\n|---|---|---|")
    for run in sys.argv[1:]:
        name, n, worst = agreement(run)
        print(f"| {name} | {n} | {worst:.2e} |")
