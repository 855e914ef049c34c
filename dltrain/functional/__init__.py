"""Differentiable ops, named as torch.nn.functional names them.

Each family lives in its own file with every op's forward next to its backward. Importing this
package also gives Tensor its operators and methods (x + y, x @ w, x.sum(axis=0), x.T, ...).
"""

from ..autograd import Tensor
from .activation import gelu, leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from .arithmetic import abs, add, clip, div, exp, log, matmul, maximum, minimum, mul, neg, pow, sqrt, sub, where
from .attention import scaled_dot_product_attention
from .conv import avg_pool2d, conv2d, global_avg_pool, max_pool2d
from .dropout import dropout
from .linear import embedding, linear
from .loss import binary_cross_entropy_with_logits, cross_entropy, mse_loss
from .normalization import batch_norm, layer_norm
from .recurrent import gru, lstm, rnn
from .reduction import max, mean, sum
from .shape import concatenate, flatten, getitem, reshape, stack, transpose

__all__ = [
    "abs", "add", "avg_pool2d", "batch_norm", "binary_cross_entropy_with_logits", "clip", "concatenate", "conv2d",
    "cross_entropy", "div", "dropout", "embedding", "exp", "flatten", "gelu", "getitem", "global_avg_pool", "gru",
    "layer_norm", "leaky_relu", "linear", "log", "log_softmax", "lstm", "matmul", "max", "max_pool2d", "maximum",
    "mean", "minimum", "mse_loss", "mul", "neg", "pow", "relu", "reshape", "rnn", "scaled_dot_product_attention",
    "sigmoid", "softmax", "sqrt", "stack", "sub", "sum", "tanh", "transpose", "where",
]


def _reshape_method(self, *shape):
    return reshape(self, shape[0] if len(shape) == 1 else shape)


def _transpose_method(self, *axes):
    return transpose(self, (axes[0] if len(axes) == 1 else axes) if axes else None)


def _install_tensor_methods() -> None:
    """Operators and NumPy-style methods on Tensor, all routed through the ops above."""
    methods = {
        "__add__": add, "__radd__": lambda s, o: add(o, s),
        "__sub__": sub, "__rsub__": lambda s, o: sub(o, s),
        "__mul__": mul, "__rmul__": lambda s, o: mul(o, s),
        "__truediv__": div, "__rtruediv__": lambda s, o: div(o, s),
        "__pow__": pow, "__rpow__": lambda s, o: pow(o, s),
        "__matmul__": matmul, "__rmatmul__": lambda s, o: matmul(o, s),
        "__neg__": neg, "__abs__": abs, "__getitem__": getitem,
        "exp": exp, "log": log, "sqrt": sqrt, "abs": abs, "relu": relu, "tanh": tanh, "sigmoid": sigmoid,
        "sum": sum, "mean": mean, "max": max, "clip": clip, "flatten": flatten,
        "reshape": _reshape_method, "transpose": _transpose_method,
        "T": property(lambda s: transpose(s)),
    }
    for name, fn in methods.items():
        setattr(Tensor, name, fn)


_install_tensor_methods()
