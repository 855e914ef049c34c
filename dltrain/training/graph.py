"""The autodiff graph of one forward (and backward) pass, as the tutorial draws it (slides 26-45).

`record` runs a model on one small batch layer by layer, remembering which layer made which op,
optionally back-propagates with every gradient kept, and returns the graph; `to_dot` writes it in
Graphviz's language: one box per layer by default, one node per op with `ops=True`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import backend
from ..autograd import Tensor


@dataclass
class Node:
    id: int
    label: str  # op name, or 'input' / a parameter's name for leaves
    shape: tuple
    group: str  # the layer (or 'loss', 'input') it belongs to
    kind: str  # 'op', 'parameter', 'input'
    grad_norm: float | None = None


@dataclass
class Graph:
    nodes: dict = field(default_factory=dict)  # id -> Node, in creation order
    edges: list = field(default_factory=list)  # (parent id, child id), each pair once
    groups: list = field(default_factory=list)  # layer paths in order

    def add_from(self, root: Tensor, group: str, names: dict) -> None:
        """Every node reachable from `root` not seen yet belongs to `group`."""
        stack, found = [root], []
        while stack:
            tensor = stack.pop()
            if id(tensor) in self.nodes or any(t is tensor for t in found):
                continue
            found.append(tensor)
            stack.extend(tensor.parents)
        for tensor in reversed(found):
            if tensor.op is not None:
                kind, label = "op", tensor.op
            elif id(tensor) in names:
                kind, label = "parameter", names[id(tensor)]
            else:
                kind, label = "input", "input"
            self.nodes[id(tensor)] = Node(id(tensor), label, tuple(tensor.shape), group, kind)
            for parent in tensor.parents:
                edge = (id(parent), id(tensor))
                if edge not in self.edges:
                    self.edges.append(edge)
        if group not in self.groups:
            self.groups.append(group)


def graph_of(output: Tensor, backward: bool = False) -> Graph:
    """The graph of any expression (e.g. exp(x * x) + x * x): every op once, however often it is used."""
    graph = Graph()
    keep = _all_tensors(output)
    graph.add_from(output, "expression", {})
    if backward:
        _backward_norms(graph, output, keep)
    return graph


def _all_tensors(root: Tensor) -> list:
    seen, stack, result = set(), [root], []
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        result.append(tensor)
        stack.extend(tensor.parents)
    return result


def _backward_norms(graph: Graph, loss: Tensor, tensors: list) -> None:
    for tensor in tensors:
        if tensor.requires_grad:
            tensor.retain_grad()
    loss.backward(retain_graph=True)
    for tensor in tensors:
        if tensor.grad is not None and id(tensor) in graph.nodes:
            grad = backend.to_numpy(tensor.grad)
            graph.nodes[id(tensor)].grad_norm = float(math.sqrt(float((grad.astype("float64") ** 2).sum())))


def record(model, x, y, backward: bool = False) -> Graph:
    """One pass of a training Model (dltrain.training.trainer.Model) on inputs x and targets y."""
    names = {id(p): name for name, p in model.network.named_parameters()}
    graph = Graph()
    h = model.input_tensor(x)  # with its padding mask, as training takes it
    h.requires_grad = True  # so the input appears, and gets its gradient, too
    graph.add_from(h, "input", names)
    layers = model.network.layers
    for layer in (layers[:-1] if model.skips_softmax else layers):
        h = layer(h)
        graph.add_from(h, layer.path, names)
    loss = model.loss(h, y)
    graph.add_from(loss, "loss", names)
    if model.skips_softmax:  # training takes the logits; the prediction still goes through softmax
        probabilities = layers[-1](h)
        graph.add_from(probabilities, layers[-1].path, names)
    if backward:
        _backward_norms(graph, loss, _all_tensors(loss))
    return graph


def _shape(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ")" if shape else "scalar"


def _edge_label(node: Node, backward: bool) -> str:
    if not backward or node.grad_norm is None:
        return ""
    return f"grad {_shape(node.shape)}\\n|g| = {node.grad_norm:.3g}"


def to_dot(graph: Graph, ops: bool = False, backward: bool = False) -> str:
    """Graphviz text: layers as boxes (default), or every op inside a box per layer (ops=True)."""
    lines = ["digraph dltrain {", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8];']
    if ops:
        for index, group in enumerate(graph.groups):
            lines.append(f'  subgraph cluster_{index} {{ label="{group}"; style=rounded; color=grey;')
            for node in graph.nodes.values():
                if node.group == group:
                    shape = "box" if node.kind == "op" else "ellipse"
                    lines.append(f'    n{node.id} [label="{node.label}\\n{_shape(node.shape)}", shape={shape}];')
            lines.append("  }")
        for parent, child in graph.edges:
            label = _edge_label(graph.nodes[parent], backward)
            lines.append(f'  n{parent} -> n{child} [label="{label}"];')
    else:
        ids = {group: f"g{index}" for index, group in enumerate(graph.groups)}
        for group in graph.groups:
            members = [n for n in graph.nodes.values() if n.group == group]
            ops_in = [n.label for n in members if n.kind == "op"]
            params = [f"{n.label} {_shape(n.shape)}" for n in members if n.kind == "parameter"]
            out_shape = _shape(members[-1].shape) if members else ""
            detail = "\\n".join(filter(None, [", ".join(dict.fromkeys(ops_in)), *params, f"out {out_shape}"]))
            lines.append(f'  {ids[group]} [label="{group}\\n{detail}", shape=box, style=rounded];')
        seen = set()
        for parent, child in graph.edges:
            a, b = graph.nodes[parent], graph.nodes[child]
            if a.group == b.group or a.kind == "parameter" or (a.group, b.group) in seen:
                continue
            seen.add((a.group, b.group))
            last = [n for n in graph.nodes.values() if n.group == a.group][-1]
            label = _edge_label(last, backward)
            lines.append(f'  {ids[a.group]} -> {ids[b.group]} [label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
