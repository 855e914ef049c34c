"""The recorded autodiff graph: the tutorial's pictures, from real models."""

import numpy as np
from typer.testing import CliRunner

import dltrain
from dltrain.cli import app
from dltrain.config import validate
from dltrain.training.graph import graph_of, record, to_dot
from dltrain.training.model import Model


def test_shared_subexpression_is_one_node():
    """exp(x*x) + x*x (slides 26-27): x*x is computed once and feeds both exp and add."""
    x = dltrain.tensor(np.array([0.5, -1.0]), requires_grad=True)
    square = x * x
    graph = graph_of(square.exp() + square)
    labels = [n.label for n in graph.nodes.values()]
    assert sorted(labels) == ["add", "exp", "input", "mul"]
    ids = {n.label: n.id for n in graph.nodes.values()}
    assert sorted(graph.edges) == sorted([(ids["input"], ids["mul"]), (ids["mul"], ids["exp"]),
                                          (ids["mul"], ids["add"]), (ids["exp"], ids["add"])])


def test_backward_labels_carry_gradient_norms():
    x = dltrain.tensor(np.array([3.0, 4.0]), requires_grad=True)
    graph = graph_of((x * 2).sum(), backward=True)
    node_x = next(n for n in graph.nodes.values() if n.label == "input")
    assert node_x.grad_norm == np.sqrt(8.0)  # d sum(2x)/dx = (2, 2)


def tutorial_model():
    config = validate({"data": {"name": "blobs", "n_samples": 50, "classes": 3},
                       "model": [{"linear": {"units": 5}}, "relu", {"linear": {"units": 3}}, "softmax"]}, {}, "t")
    return Model(config, (2,), 3, None)


def test_linear_relu_linear_softmax_cross_entropy_graph_has_the_layers_in_order():
    model = tutorial_model()
    x = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    graph = record(model, x, np.array([0, 1, 2, 0]), backward=True)
    assert graph.groups == ["input", "model[0].linear", "model[1].relu", "model[2].linear", "loss",
                            "model[3].softmax"]
    params = [n.label for n in graph.nodes.values() if n.kind == "parameter"]
    assert params == ["0.weight", "0.bias", "2.weight", "2.bias"]
    dot = to_dot(graph, backward=True)
    assert dot.count(" -> ") == 5 and "|g| = " in dot
    ops_dot = to_dot(graph, ops=True)
    assert ops_dot.count("subgraph cluster_") == 6 and "cross_entropy" in ops_dot


def test_graph_command_writes_dot_text(tmp_path):
    config = tmp_path / "tut.yaml"
    config.write_text("data: {name: blobs, n_samples: 60, classes: 3}\n"
                      "model: [{linear: {units: 5}}, relu, {linear: {units: 3}}, softmax]\n")
    out = tmp_path / "g.dot"
    result = CliRunner().invoke(app, ["graph", str(config), "--out", str(out), "--backward", "--ops"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("digraph dltrain {") and 'label="model[2].linear"' in text


def test_graph_command_renders_svg_with_graphviz(tmp_path):
    import shutil

    import pytest

    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")
    config = tmp_path / "tut.yaml"
    config.write_text("data: {name: blobs, n_samples: 60, classes: 3}\nmodel: [{linear: {units: 3}}]\n")
    out = tmp_path / "g.svg"
    result = CliRunner().invoke(app, ["graph", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "<svg" in out.read_text() and not (tmp_path / "g.dot").exists()
