"""The BLAS products of one training step at batch 128, timed with the shapes dltrain uses (2 threads), to give
their share of a step (`dltrain profile CONFIG` gives the whole step).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/gemm_share.py
"""

import time

import numpy as np
from threadpoolctl import threadpool_limits

BATCH = 128


def product_ms(shapes, reps=30) -> float:
    """Median milliseconds of all products of `shapes` ((m, k), (k, n)) one after the other."""
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal(a).astype(np.float32), rng.standard_normal(b).astype(np.float32)) for a, b in shapes]
    for a, b in pairs:
        a @ b
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for a, b in pairs:
            a @ b
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def recurrent(gates: int, hidden: int = 128, steps: int = 28, features: int = 28):
    """Input projection, one product per step each way, and the weight gradients over all steps."""
    n, width = BATCH, gates * hidden
    return ([((n * steps, features), (features, width))] + [((n, hidden), (hidden, width))] * steps
            + [((n, width), (width, hidden))] * (steps - 1)
            + [((width, n * steps), (n * steps, hidden)), ((width, n * steps), (n * steps, features))])


CASES = {
    "fashion_cnn / cnn_sgd128": [
        ((32, 9), (9, BATCH * 784)), ((32, BATCH * 784), (BATCH * 784, 9)),  # conv1: forward, weight gradient
        ((64, 288), (288, BATCH * 196)), ((64, BATCH * 196), (BATCH * 196, 288)),  # conv2: forward, weights,
        ((288, 64), (64, BATCH * 196)),  # input gradient
        ((BATCH, 3136), (3136, 128)), ((128, BATCH), (BATCH, 3136)), ((BATCH, 128), (128, 3136)),  # dense 128
        ((BATCH, 128), (128, 10)), ((10, BATCH), (BATCH, 128)), ((BATCH, 10), (10, 128))],
    "mlp 784-1024-10": [((BATCH, 784), (784, 1024)), ((1024, BATCH), (BATCH, 784)), ((BATCH, 1024), (1024, 10)),
                        ((10, BATCH), (BATCH, 1024)), ((BATCH, 10), (10, 1024))],
    "lstm 128 (28 steps)": recurrent(4),
    "gru 128 (28 steps)": recurrent(3),
}

if __name__ == "__main__":
    threadpool_limits(2, user_api="blas")
    for name, shapes in CASES.items():
        print(f"{name}: BLAS products of one step {product_ms(shapes):.2f} ms")
