"""Finite-difference gradient checks (float64, central differences) for ops and layers.

    check_gradients(lambda x, w: F.linear(x, w), [x_array, w_array])

runs `fn` on tensors built from the arrays, back-propagates a random output gradient `r`, and
compares every input's gradient with (f(x + h e_i) - f(x - h e_i)) / 2h of sum(r * f(x)).
"""

from __future__ import annotations

from . import backend
from .autograd import Tensor

np = backend.np

# Central differences in float64 with h = 1e-6: truncation error ~ h^2 |f'''| ~ 1e-12 and
# rounding ~ 1e-16 / h ~ 1e-10, so 1e-6 leaves room for sums over many elements while a
# wrong formula is off by far more (1e-2 and up).
STEP = 1e-6
ATOL = 1e-6
RTOL = 1e-5


def numerical_gradient(objective, array, step: float = STEP):
    """d objective() / d array by central differences, perturbing `array` in place one element at a time."""
    grad = np.zeros(array.shape, dtype=np.float64)
    flat_array = array.reshape(-1)  # a view: writes reach `array`
    flat_grad = grad.reshape(-1)
    for i in range(flat_array.size):
        original = flat_array[i].item()  # a copy: CuPy's flat_array[i] is a view, which the next line would change
        flat_array[i] = original + step
        plus = objective()
        flat_array[i] = original - step
        minus = objective()
        flat_array[i] = original
        flat_grad[i] = (plus - minus) / (2 * step)
    return grad


def _compare(label: str, analytic, numeric, atol: float, rtol: float) -> None:
    if analytic is None:
        raise AssertionError(f"{label}: no gradient reached it (numerical max {np.abs(numeric).max():.3g})")
    analytic = backend.to_numpy(analytic)
    if analytic.shape != numeric.shape:
        raise AssertionError(f"{label}: gradient shape {analytic.shape} != shape {numeric.shape}")
    if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
        worst = np.abs(analytic - numeric).max()
        raise AssertionError(f"{label}: autodiff and finite differences differ by up to {worst:.3g}\n"
                             f"autodiff:\n{analytic}\nnumerical:\n{numeric}")


def _weighted_sum(out, upstream) -> float:
    return float((np.asarray(backend.to_numpy(out.data), dtype=np.float64) * upstream).sum())


def check_gradients(fn, arrays, wrt=None, seed: int = 0, atol: float = ATOL, rtol: float = RTOL,
                    device: str = "cpu") -> None:
    """Assert that autodiff and finite differences agree for `fn(*tensors)` at `arrays`.

    `wrt` lists the indices of the inputs to check (default: every floating-point input);
    the others enter as constants (integer labels, masks). The tensors live on `device`.
    """
    arrays = [np.array(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
              for a in arrays]
    if wrt is None:
        wrt = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    with backend.default_dtype_as(np.float64):
        tensors = [Tensor(backend.to_device(a.copy(), device), requires_grad=(i in wrt))
                   for i, a in enumerate(arrays)]
        out = fn(*tensors)
        upstream = np.random.default_rng(seed).standard_normal(out.shape)
        out.backward(backend.to_device(upstream, device))

        def objective():
            return _weighted_sum(fn(*[Tensor(backend.to_device(a, device)) for a in arrays]), upstream)

        for i in wrt:
            _compare(f"input {i}", tensors[i].grad, numerical_gradient(objective, arrays[i]), atol, rtol)


def check_layer(layer, input_array, seed: int = 0, atol: float = ATOL, rtol: float = RTOL,
                device: str = "cpu", padding_mask=None) -> None:
    """Build `layer` in float64 for the input's per-sample shape; check d/d input and every parameter.

    The engine is reseeded before every forward pass, so dropout draws the same mask each time. `padding_mask`
    (boolean (batch, time), True at padded positions) travels with the input as a batch's mask does.
    """
    with backend.default_dtype_as(np.float64):
        x_array = np.array(input_array, dtype=np.float64)
        if not layer.built:
            layer.build(x_array.shape[1:])
        layer.to(device)

        mask = None if padding_mask is None else backend.to_device(np.asarray(padding_mask, dtype=bool), device)

        def forward(x):
            backend.manual_seed(seed)
            x.padding_mask = mask
            return layer(x)

        x = Tensor(backend.to_device(x_array.copy(), device), requires_grad=True)
        out = forward(x)
        upstream = np.random.default_rng(seed).standard_normal(out.shape)
        layer.zero_grad()
        out.backward(backend.to_device(upstream, device))

        def objective():
            return _weighted_sum(forward(Tensor(backend.to_device(x_array, device))), upstream)

        _compare(f"{layer.path} input", x.grad, numerical_gradient(objective, x_array), atol, rtol)
        for name, param in layer.named_parameters():
            numeric = numerical_gradient(objective, param.data)
            _compare(f"{layer.path} parameter {name}", param.grad, numeric, atol, rtol)
