"""dltrain: a NumPy/CuPy deep learning framework and the command-line trainer built on it."""

__version__ = "0.1.0"

from . import functional  # noqa: E402 (installs Tensor's operators)
from .autograd import Tensor, no_grad, tensor  # noqa: E402

__all__ = ["Tensor", "__version__", "functional", "no_grad", "tensor"]
