"""dltrain: a NumPy/CuPy deep learning framework and the command-line trainer built on it."""

__version__ = "0.1.0"

import os

# OpenBLAS reads this when NumPy loads it, so it is set before anything imports NumPy (a value set by the user
# wins). After a product its idle threads spin for 2**28 cycles (about 0.1 s) by default, taking a core from the
# compiled kernels that run between a convolution's products (im2col, col2im, batch normalization); 2**21 cycles
# (under a millisecond) still keeps them awake across back-to-back products. One epoch on 2 cores (AMD EPYC):
# fashion_resnet 566 -> 667 samples/s, fashion_cnn 986 -> 1,200; fashion_gru and fashion_mlp within noise.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "21")

from . import functional  # noqa: E402 (installs Tensor's operators)
from .autograd import Tensor, no_grad, tensor  # noqa: E402

__all__ = ["Tensor", "__version__", "functional", "no_grad", "tensor"]
