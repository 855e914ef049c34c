"""Fashion-MNIST as users keep images: DIR/train/<class>/*.png and DIR/test/<class>/*.png.

    python benchmarks/make_image_folder.py DIR [--train-per-class N] [--test-per-class M]

Takes the first N training and M test images of each class from the installed IDX files
(/usr/share/datasets/fashion-mnist, or --idx DIR), for trying `data: {name: image_folder}` and `dltrain predict`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def main() -> None:
    import numpy as np
    from PIL import Image

    from dltrain.data.files import read_idx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--idx", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args()
    for split, stem, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = read_idx(args.idx / f"{stem}-images-idx3-ubyte.gz")
        labels = read_idx(args.idx / f"{stem}-labels-idx1-ubyte.gz")
        for label, name in enumerate(NAMES):
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == label)[:per_class]:
                Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    print(f"{args.out}: train/ and test/, {len(NAMES)} class folders each")


if __name__ == "__main__":
    main()
