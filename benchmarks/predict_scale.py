"""Decode and predict at scale: folders of 10,000 and 100,000 small PNGs (Fashion-MNIST test images, repeated).

    python benchmarks/predict_scale.py [--work DIR] [--sizes 10000 100000]

For each size: writes the folder (10 class subfolders), trains a small CNN one epoch on it with an empty image
cache (decoding included) and again with the cache filled, then `dltrain predict` on the whole folder to a file;
each command's wall time and peak RSS (/usr/bin/time). Also one epoch of the same model on the built-in
fashion-mnist (IDX, normalized up front) against an image folder of all 60,000 training images (uint8,
memory-mapped, normalized per batch), for what the image path saves in memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FASHION = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
MODEL = """\
seed: 0
data: {data}
model:
  - conv2d: {{filters: 16, kernel_size: 3, padding: 1}}
  - relu
  - max_pool2d
  - flatten
  - linear: {{units: 10}}
optimizer: {{name: adam, lr: 0.002}}
training: {{epochs: 1, batch_size: 128}}
"""


def write_folder(folder: Path, images, labels, count: int) -> None:
    from PIL import Image

    for name in NAMES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        k = i % len(images)
        Image.fromarray(images[k]).save(folder / NAMES[labels[k]] / f"{i:06d}.png")


def timed(args: list, env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one command."""
    result = subprocess.run(["/usr/bin/time", "-f", "%e %M", *map(str, args)], capture_output=True, text=True,
                            env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    seconds, kb = result.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kb) / 1024


def main() -> None:
    from dltrain.data.files import read_idx

    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dltrain-predict-"))
    dltrain = [sys.executable, "-m", "dltrain"]
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    test_x, test_y = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    print("| images | write PNGs s | train 1 epoch, decoding s / MB | again, cached s / MB | predict s / MB | "
          "predictions/s |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        folder = work / f"images{size}"
        start = time.perf_counter()
        write_folder(folder, test_x, test_y, size)
        written = time.perf_counter() - start
        config = work / f"folder{size}.yaml"
        config.write_text(MODEL.format(data=f"{{name: image_folder, path: {folder}, image_size: [28, 28], "
                                            f"channels: 1}}"))
        shutil.rmtree(work / "cache", ignore_errors=True)
        first = timed([*dltrain, "train", config, "--run-dir", work / f"run{size}a", "-q"], env)
        again = timed([*dltrain, "train", config, "--run-dir", work / f"run{size}b", "-q"], env)
        predict = timed([*dltrain, "predict", work / f"run{size}a", folder, "--out", work / f"p{size}.csv"], env)
        rows = sum(1 for _ in open(work / f"p{size}.csv")) - 1
        assert rows == size, rows
        print(f"| {size:,} | {written:.1f} | {first[0]:.1f} / {first[1]:.0f} | {again[0]:.1f} / {again[1]:.0f} | "
              f"{predict[0]:.1f} / {predict[1]:.0f} | {size / predict[0]:,.0f} |", flush=True)
        shutil.rmtree(folder)

    # the whole training set: IDX (float32 in memory) against an image folder (uint8 memory map)
    train_x, train_y = (read_idx(FASHION / "train-images-idx3-ubyte.gz"),
                        read_idx(FASHION / "train-labels-idx1-ubyte.gz"))
    folder = work / "train60000"
    write_folder(folder, train_x, train_y, len(train_x))
    idx_config, folder_config = work / "idx.yaml", work / "folder60000.yaml"
    idx_config.write_text(MODEL.format(data="{name: fashion-mnist}"))
    folder_config.write_text(MODEL.format(data=f"{{name: image_folder, path: {folder}, image_size: [28, 28], "
                                               f"channels: 1}}"))
    timed([*dltrain, "check", folder_config], env)  # decode once: the comparison is of training
    idx = timed([*dltrain, "train", idx_config, "--run-dir", work / "run-idx", "-q"], env)
    images = timed([*dltrain, "train", folder_config, "--run-dir", work / "run-folder", "-q"], env)
    print(f"\none epoch on Fashion-MNIST's 60,000 training images: IDX {idx[0]:.1f} s, peak {idx[1]:.0f} MB; "
          f"image folder (cached) {images[0]:.1f} s, peak {images[1]:.0f} MB")
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
