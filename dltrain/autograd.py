"""Reverse-mode automatic differentiation, define-by-run.

A Tensor wraps an array. An op that makes a Tensor from others records, on its result, the
inputs (`parents`) and a `backward` closure written next to the op's forward (see
dltrain/functional). `Tensor.backward()` sorts the graph topologically with an explicit stack
(no recursion, so a 10,000-op chain is fine), sweeps it once in reverse, sums the gradients of
values used several times, and then drops the graph so memory does not grow across steps.
"""

from __future__ import annotations

import contextlib

from . import backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Run without recording the graph (inference, metric computation)."""
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


class Tensor:
    """An array plus what autodiff needs: `.data`, `.grad`, `.requires_grad`, `.backward()`."""

    __slots__ = ("data", "grad", "requires_grad", "parents", "backward_fn", "op", "name", "retains_grad",
                 "padding_mask", "__weakref__")
    __array_priority__ = 1000  # numpy_array + tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self.parents: tuple[Tensor, ...] = ()
        self.backward_fn = None
        self.op = None  # name of the op that made it; None for a leaf
        self.name = name
        self.retains_grad = False
        # Sequences: a boolean (batch, time) array, True at padded positions (torch's key_padding_mask). Layers
        # carry it from input to output (layers/module.py: carry_padding_mask); ops leave it alone.
        self.padding_mask = None

    # ------------------------------------------------------------ array-like surface

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def is_leaf(self) -> bool:
        return self.backward_fn is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self.op}" if self.op else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad}{op})"

    def numpy(self):
        """The value as a host NumPy array (a copy when it lives on the GPU)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        """The same array (and padding mask), cut from the graph."""
        out = Tensor(self.data)
        out.padding_mask = self.padding_mask
        return out

    def retain_grad(self) -> Tensor:
        """Keep `.grad` on this intermediate value after backward (leaves always keep theirs)."""
        self.retains_grad = True
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # ------------------------------------------------------------ backward

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad` that requires it."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no parameter or "
                               "input with requires_grad=True led to it, or it was made under no_grad)")
        xp = backend.array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a single value, got shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.data.dtype)
            if grad.shape != self.data.shape:
                raise RuntimeError(f"backward() gradient shape {grad.shape} does not match tensor shape {self.shape}")

        order = _topological_order(self)
        grads = {id(self): grad}
        owned: set[int] = set()  # nodes whose gradient buffer was made here (safe to add into in place)
        given_to_leaves: set[int] = set()  # arrays already stored in a leaf's .grad (copy on reuse)
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node.backward_fn is None or node.retains_grad:
                if id(g) in given_to_leaves:
                    g = g.copy()
                given_to_leaves.add(id(g))
                node.grad = g if node.grad is None else node.grad + g
                if node.backward_fn is None:
                    continue
            for parent, parent_grad in zip(node.parents, node.backward_fn(g)):
                if parent_grad is None or not parent.requires_grad:
                    continue
                key = id(parent)
                previous = grads.get(key)
                if isinstance(parent_grad, SliceGrad):
                    # A gradient for part of the parent (x[i]) is added into one buffer, not into a
                    # fresh full-size array per slice: slicing a sequence step by step stays linear.
                    if key not in owned:
                        previous = parent_grad.zeros() if previous is None else previous.copy()
                        owned.add(key)
                    parent_grad.add_into(previous)
                    grads[key] = previous
                elif previous is None:
                    grads[key] = parent_grad
                else:
                    grads[key] = previous + parent_grad
                    owned.add(key)
        if not retain_graph:
            for node in order:
                node.parents = ()
                node.backward_fn = None


class SliceGrad:
    """The gradient of x[index]: `values` belong at `index` of an array shaped like x, zeros elsewhere."""

    __slots__ = ("index", "values", "like", "basic")

    def __init__(self, index, values, like, basic: bool):
        self.index, self.values, self.like, self.basic = index, values, like, basic

    def zeros(self):
        return backend.array_module(self.like).zeros(self.like.shape, dtype=self.values.dtype)

    def add_into(self, buffer) -> None:
        if self.basic:  # slices select each element once: plain in-place add
            buffer[self.index] += self.values
        else:  # integer arrays may repeat an index: every occurrence must add
            backend.scatter_add(buffer, self.index, self.values)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Nodes that need a gradient, each after all of its parents (iterative depth-first search)."""
    order: list[Tensor] = []
    visited: set[int] = {id(root)}
    stack: list[tuple[Tensor, int]] = [(root, 0)]
    while stack:
        node, next_parent = stack[-1]
        if next_parent < len(node.parents):
            stack[-1] = (node, next_parent + 1)
            parent = node.parents[next_parent]
            if parent.requires_grad and id(parent) not in visited:
                visited.add(id(parent))
                stack.append((parent, 0))
        else:
            stack.pop()
            order.append(node)
    return order


# ---------------------------------------------------------------- helpers for ops


def tensor(data, requires_grad: bool = False, dtype=None, device: str | None = None) -> Tensor:
    """Build a Tensor from an array, a list or a number. As torch.tensor: an array keeps its dtype (float64 stays
    float64); Python floats and lists of them take the default dtype."""
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.xp_for(device) if device else backend.array_module(data)
    array = xp.asarray(data, dtype=dtype)
    has_dtype = hasattr(data, "dtype")  # NumPy or CuPy arrays and NumPy scalars
    if dtype is None and not has_dtype and array.dtype.kind == "f" and array.dtype != backend.default_dtype():
        array = array.astype(backend.default_dtype())
    if requires_grad and array.dtype.kind != "f":
        raise TypeError(f"only floating-point tensors can require grad, got dtype {array.dtype}")
    return Tensor(array, requires_grad=requires_grad)


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """Tensors pass through; numbers and arrays become constants (dtype and device of `like`)."""
    if isinstance(value, Tensor):
        return value
    if like is not None:
        xp = backend.array_module(like.data)
        dtype = like.data.dtype if like.data.dtype.kind == "f" else None
        return Tensor(xp.asarray(value, dtype=dtype))
    return tensor(value)


def make_result(data, parents: tuple[Tensor, ...], backward_fn, op: str) -> Tensor:
    """The output of an op; the graph is recorded only if some input needs a gradient."""
    out = Tensor(data)
    if _grad_enabled:
        for parent in parents:
            if parent.requires_grad:
                out.requires_grad = True
                out.parents = parents
                out.backward_fn = backward_fn
                out.op = op
                break
    return out


def unbroadcast(grad, shape: tuple[int, ...]):
    """Sum a broadcast gradient back to the input's `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad
