"""`dltrain serve` under load: requests/s and latency (p50, p99) with 1, 8 and 64 concurrent clients, gathering
concurrent requests into one forward pass (batching) on and off, for the MLP and the CNN configs; beside
`dltrain predict`'s throughput on the 10,000 test images as one .npz (its process start and model load included).

    python benchmarks/serve.py [--configs fashion_mlp,fashion_cnn] [--requests 2000] [--work DIR]

Each config is trained one epoch (the speed of serving does not depend on how well the model learned), then served
on a free port; each client sends one Fashion-MNIST test image per request (JSON, UINT8, as a Triton client would
with binary_data=False) and waits for the answer before sending the next. Batching "on" gathers what arrives while
the model is busy (--max-delay-ms 0, the default), "on, 5 ms" also waits up to 5 ms for more, "off" is
--max-batch-size 1. The clients run on the same machine as the server (they take their share of its cores).
Prints a Markdown table; writes nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: Path, *options) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "dltrain", "serve", str(model), "--port", str(port), *options],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"dltrain serve {model} did not get ready")


def load(url: str, name: str, images: np.ndarray, clients: int, requests: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of `requests` requests from `clients` clients, one image each."""
    import httpx

    bodies = [json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                                      "data": images[i % len(images)].reshape(-1).tolist()}],
                          "outputs": [{"name": "prediction"}]}).encode() for i in range(min(requests, 512))]
    latencies, lock = [], threading.Lock()
    counter = iter(range(requests))

    def client(_):
        with httpx.Client(timeout=120) as session:
            for k in counter:
                start = time.perf_counter()
                answer = session.post(f"{url}/v2/models/{name}/infer", content=bodies[k % len(bodies)],
                                      headers={"content-type": "application/json"})
                took = time.perf_counter() - start
                if answer.status_code != 200:
                    raise SystemExit(f"request failed: {answer.status_code} {answer.text}")
                with lock:
                    latencies.append(took)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return requests / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="fashion_mlp,fashion_cnn")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from dltrain.data.files import read_idx

    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")  # 10,000
    work = args.work or Path(tempfile.mkdtemp(prefix="dltrain-serve-bench-"))
    rows = []
    for config in args.configs.split(","):
        run = work / config
        if not (run / "summary.json").exists():
            subprocess.run([sys.executable, "-m", "dltrain", "train", str(ROOT / "configs" / f"{config}.yaml"),
                            "--run-dir", str(run), "--quiet", "--set", "training.epochs=1", "--set",
                            "data.test_time_augment=[]"], check=True)
        np.savez(work / "images.npz", x=images[:, None])
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dltrain", "predict", str(run), str(work / "images.npz"), "--out",
                        str(work / "predictions.csv")], check=True, env={**os.environ})
        predict_rate = len(images) / (time.perf_counter() - start)
        for batching, options in (("on", ["--max-batch-size", "64", "--max-delay-ms", "0"]),
                                  ("on, 5 ms", ["--max-batch-size", "64", "--max-delay-ms", "5"]),
                                  ("off", ["--max-batch-size", "1"])):
            process, url = serve(run, *options)
            try:
                for clients in (1, 8, 64):
                    rate, p50, p99 = load(url, config, images, clients, args.requests)
                    rows.append((config, batching, clients, rate, p50, p99, predict_rate))
                    print(f"{config} batching {batching}, {clients} clients: {rate:,.0f} requests/s, p50 {p50:.1f} "
                          f"ms, p99 {p99:.1f} ms", flush=True)
            finally:
                process.terminate()
                process.wait(60)
    print("\n| config | batching | clients | requests/s | p50 ms | p99 ms | `dltrain predict` images/s |")
    print("|---|---|---|---|---|---|---|")
    for config, batching, clients, rate, p50, p99, predict_rate in rows:
        print(f"| {config} | {batching} | {clients} | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {predict_rate:,.0f} |")


if __name__ == "__main__":
    main()
