"""Data-parallel scaling from 1 to 2 MPI ranks (one thread each) on configs/fashion_mlp.yaml.

    python benchmarks/mpi_scaling.py          # needs pip install 'dltrain[mpi]'; writes its section of RESULTS.md

Reports seconds per epoch (median over epochs), training samples/s and the share of the step spent
in the gradient Allreduce (measured around the call, so waiting for the slower rank counts too).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import replace_section

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SECTION = "\n## MPI scaling"


def run(ranks: int, epochs: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(BIN / "dltrain"), "train", str(HERE.parent / "configs" / "fashion_mlp.yaml"), "--run-dir",
                   f"{tmp}/run", "--quiet", "--set", f"training.epochs={epochs}",
                   "--set", "training.early_stopping=false"]
        if ranks > 1:
            command = [shutil.which("mpiexec", path=str(BIN)) or "mpiexec", "-n", str(ranks), *command]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, env=env, capture_output=True)
        summary = json.loads(Path(f"{tmp}/run/summary.json").read_text())
        lines = Path(f"{tmp}/run/metrics.csv").read_text().splitlines()[1:]
        seconds = [float(line.split(",")[-1]) for line in lines]
    allreduce = summary.get("allreduce_seconds", 0.0)
    return {"ranks": ranks, "epoch_seconds": statistics.median(seconds),
            "samples_per_second": summary["train_samples_per_second"],
            "allreduce_share": allreduce / sum(seconds)}


def main() -> None:
    results = [run(1), run(2)]
    base = results[0]["samples_per_second"]
    lines = [SECTION.strip(), "",
             f"configs/fashion_mlp.yaml (784-1024-10, global batch 128, 54,000 training images), one thread per rank, "
             f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}. Command: `python benchmarks/mpi_scaling.py`.", "",
             "| ranks | seconds per epoch | samples/s | speed-up | Allreduce share of the step |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['ranks']} | {r['epoch_seconds']:.2f} | {r['samples_per_second']:,.0f} | "
                     f"{r['samples_per_second'] / base:.2f} | {r['allreduce_share']:.0%} |")
    replace_section(HERE / "RESULTS.md", "MPI scaling", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
