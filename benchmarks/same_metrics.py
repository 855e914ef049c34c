"""Run every shipped config and keep what it measured, to show a change to training left the numbers alone.

    python benchmarks/same_metrics.py save DIR [--epochs N] [--configs fashion_gru,wordlists_gru]
                                                               # metrics.csv (and gradients.csv) of each config
    python benchmarks/same_metrics.py compare OLD NEW          # bit-for-bit, time columns aside; where not, the
                                                               # largest relative difference of each number column

Fashion-MNIST configs run --set training.epochs=N (default 2); the small generated ones run as shipped.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEPT = ("metrics.csv", "gradients.csv")
TIMED = ("seconds", "time", "samples_per_second")  # columns that differ between any two runs


def save(out: Path, epochs: int, only: list[str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        if only and config.stem not in only:
            continue
        overrides = ["--set", f"training.epochs={epochs}"] if "fashion" in config.name else []
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            subprocess.run([sys.executable, "-m", "dltrain", "train", str(config), "--run-dir", str(run), "--quiet",
                            *overrides], check=True, stdout=subprocess.DEVNULL)
            for name in KEPT:
                if (run / name).exists():
                    shutil.copy(run / name, out / f"{config.stem}.{name}")
        print(f"{config.stem}: saved", flush=True)


def untimed_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return [{k: v for k, v in row.items() if not any(t in k for t in TIMED)} for row in csv.DictReader(f)]


def compare(old: Path, new: Path) -> int:
    different = 0
    for before in sorted(old.glob("*.csv")):
        after = new / before.name
        same = after.exists() and untimed_rows(before) == untimed_rows(after)
        different += not same
        print(f"{before.name}: {'same' if same else 'DIFFERENT'}" + ("" if same or not after.exists() else
                                                                     f" ({largest_differences(before, after)})"))
    return 1 if different else 0


def largest_differences(before: Path, after: Path) -> str:
    """The largest relative difference of each column of numbers between two files of the same rows."""
    old, new = untimed_rows(before), untimed_rows(after)
    if len(old) != len(new):
        return f"{len(old)} rows against {len(new)}"
    worst = {}
    for a, b in zip(old, new):
        for key in a:
            try:
                x, y = float(a[key]), float(b[key])
            except (TypeError, ValueError):
                continue
            worst[key] = max(worst.get(key, 0.0), abs(x - y) / max(abs(x), abs(y), 1e-30))
    return ", ".join(f"{key} {value:.1e}" for key, value in worst.items() if key != "epoch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    saving = sub.add_parser("save")
    saving.add_argument("out", type=Path)
    saving.add_argument("--epochs", type=int, default=2)
    saving.add_argument("--configs", help="comma-separated config names (default: every shipped config)")
    comparing = sub.add_parser("compare")
    comparing.add_argument("old", type=Path)
    comparing.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "save":
        save(args.out, args.epochs, args.configs.split(",") if args.configs else None)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
