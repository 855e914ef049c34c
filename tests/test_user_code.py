"""Users' own parts without forking: --code FILE on every command that builds a model, and installed plugins."""

import json
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain import plugins
from dltrain.cli import app
from dltrain.config import validate
from dltrain.errors import UserCodeError

PARTS = '''\
"""A swish layer and a callback, registered as dltrain's own parts are."""
from dltrain import functional as F
from dltrain.layers import Module
from dltrain.registry import callbacks, layers
from dltrain.training.callbacks import Callback


@layers.register("swish")
class Swish(Module):
    """x * sigmoid(beta * x)."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return x * F.sigmoid(x * self.beta)

    def to_onnx(self, graph, x, opset):
        scaled = graph.op("Mul", [x, graph.const("beta", __import__("numpy").float32(self.beta))])
        return graph.op("Mul", [x, graph.op("Sigmoid", [scaled])])


@layers.register("swish_without_export")
class SwishWithoutExport(Swish):
    """Swish, without an ONNX export."""

    to_onnx = None


@callbacks.register("epoch_log")
class EpochLog(Callback):
    """Appends 'epoch N val_loss V' to a file after every epoch."""

    def __init__(self, path: str):
        self.path = path

    def on_epoch_end(self, trainer, epoch, logs):
        with open(self.path, "a") as f:
            f.write(f"epoch {epoch} val_loss {logs['val_loss']:.6f}\\n")
'''

CONFIG = """\
seed: 1
data: {name: blobs, n_samples: 300, classes: 3, spread: 2.0}
model:
  - linear: {units: 16}
  - %s: {beta: 1.5}
  - linear: {units: 3}
optimizer: {name: adam, lr: 0.02}
training: {epochs: 3, batch_size: 32}
callbacks:
  - {name: epoch_log, path: %s}
"""

runner = CliRunner()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    path = tmp_path_factory.mktemp("code") / "my_parts.py"
    path.write_text(PARTS)
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_swish_layer_from_code_trains_evaluates_and_exports(tmp_path, parts):
    log = tmp_path / "epochs.log"
    config = tmp_path / "swish.yaml"
    config.write_text(CONFIG % ("swish", log))
    result = invoke("train", config, "--run-dir", tmp_path / "run", "--quiet")
    assert result.exit_code == 2
    assert "model[1]: unknown layer 'swish'" in result.output  # a config alone never runs code

    result = invoke("train", config, "--run-dir", tmp_path / "run", "--quiet", "--code", parts)
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert log.read_text().splitlines() == [f"epoch {i} val_loss {float(row.split(',')[3]):.6f}"
                                            for i, row in enumerate(rows, 1)]  # the registered callback ran
    result = invoke("eval", tmp_path / "run", "--json", "--code", parts)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"]) and report["accuracy"] > 0.6  # chance: 0.33

    onnx_file = tmp_path / "swish.onnx"
    result = invoke("export", tmp_path / "run", "--out", onnx_file, "--code", parts)
    assert result.exit_code == 0, result.output
    result = invoke("eval", onnx_file, "--json", "--code", parts)
    assert result.exit_code == 0, result.output
    exported = json.loads(result.output)
    assert exported["accuracy"] == report["accuracy"]
    assert exported["loss"] == pytest.approx(report["loss"], rel=1e-5)
    for command in (["check", config], ["graph", config, "--out", tmp_path / "g.dot"],
                    ["profile", config, "--steps", "1"]):
        result = invoke(*command, "--code", parts)
        assert result.exit_code == 0, (command, result.output)
    result = invoke("layers", "--code", parts)
    assert "swish" in result.output and "x * sigmoid(beta * x)." in result.output


def test_a_layer_without_an_export_is_named(tmp_path, parts):
    config = tmp_path / "opaque.yaml"
    config.write_text(CONFIG % ("swish_without_export", tmp_path / "log"))
    assert invoke("train", config, "--run-dir", tmp_path / "run", "--quiet", "--code", parts).exit_code == 0
    result = invoke("export", tmp_path / "run", "--code", parts)
    assert result.exit_code == 2
    assert ("error: model[1].swish_without_export: layer 'swish_without_export' has no ONNX export (a layer of "
            "your own exports itself with a method to_onnx(self, graph, x, opset); see dltrain/export/onnx.py)"
            in result.output)


def test_code_that_cannot_be_imported_is_an_error_naming_it(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\ny = x / 0\n")
    with pytest.raises(UserCodeError) as caught:
        plugins.load_code([broken])
    assert str(caught.value) == (f"--code {broken}: importing it failed at {broken.resolve()}:2: "
                                 f"ZeroDivisionError: division by zero")
    result = invoke("check", tmp_path / "any.yaml", "--code", tmp_path / "missing.py")
    assert result.exit_code == 2 and f"error: --code {tmp_path / 'missing.py'}: no such file" in result.output
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserCodeError, match=r"expected a Python file ending in \.py, found \.txt"):
        plugins.load_code([text])


def test_loading_the_same_file_twice_imports_it_once(parts):
    plugins.load_code([parts])
    plugins.load_code([Path(str(parts))])  # no "registered twice"


def test_an_installed_plugin_registers_through_its_entry_point(tmp_path, monkeypatch):
    (tmp_path / "plugin_pkg.py").write_text(textwrap.dedent('''
        from dltrain.layers import Module
        from dltrain.registry import layers

        @layers.register("plugin_identity")
        class PluginIdentity(Module):
            """Returns its input."""
            def forward(self, x):
                return x
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = EntryPoint(name="mine", value="plugin_pkg", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [entry] if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    values = {"data": {"name": "blobs"}, "model": [{"linear": {"units": 4}}, "plugin_identity"]}
    assert validate(values, {}, "test").model[1] == {"plugin_identity": {}}
    assert "plugin_pkg" in sys.modules


def test_a_broken_plugin_is_named(monkeypatch):
    entry = EntryPoint(name="bad", value="no_such_module_here", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [entry])
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    with pytest.raises(UserCodeError, match=r"plugin 'bad' \(no_such_module_here, entry point group "
                                            r"'dltrain.plugins'\) failed to load: ModuleNotFoundError"):
        validate({"data": {"name": "blobs"}, "model": ["relu"]}, {}, "test")
    np.testing.assert_equal(plugins._plugins_loaded, True)
