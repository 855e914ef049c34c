"""Gradient-flow logging: gradients.csv and the vanishing-gradient demonstration the configs ship."""

import csv
from pathlib import Path

from typer.testing import CliRunner

from dltrain.cli import app

CONFIGS = Path(__file__).parents[2] / "configs"


def train_one_epoch(config: str, run: Path) -> list[dict]:
    result = CliRunner().invoke(app, ["train", str(CONFIGS / config), "--run-dir", str(run), "--quiet",
                                      "--set", "training.epochs=1"])
    assert result.exit_code == 0, result.output
    with open(run / "gradients.csv") as f:
        return list(csv.DictReader(f))


def test_gradients_csv_has_a_row_per_epoch_and_columns_per_layer(tmp_path):
    result = CliRunner().invoke(app, ["train", str(CONFIGS / "deep_relu_bn.yaml"), "--run-dir", str(tmp_path / "r"),
                                      "--quiet", "--set", "training.epochs=2"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "r" / "gradients.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    weight_columns = [c for c in rows[0] if c.endswith(".weight_grad")]
    output_columns = [c for c in rows[0] if c.endswith(".output_grad")]
    assert len(weight_columns) == 20  # the 20 linear layers; batchnorm scale vectors are left out
    assert len(output_columns) == 20 + 19 + 19  # every layer's output: linear, batchnorm, relu
    assert weight_columns[0] == "model[0].linear.weight_grad"
    assert all(float(r[c]) > 0 for r in rows for c in weight_columns + output_columns)


def test_deep_sigmoid_gradients_vanish_and_relu_batchnorm_ones_do_not(tmp_path):
    sigmoid = train_one_epoch("vanishing_sigmoid.yaml", tmp_path / "sigmoid")[0]
    relu = train_one_epoch("deep_relu_bn.yaml", tmp_path / "relu")[0]

    def first_and_last(row):
        weights = [float(row[c]) for c in row if c.endswith(".weight_grad")]
        return weights[0], weights[-1]

    first, last = first_and_last(sigmoid)
    assert first * 100 <= last
    first, last = first_and_last(relu)
    assert first * 10 >= last


def test_plot_gradients_writes_a_png_and_explains_a_missing_csv(tmp_path):
    train_one_epoch("vanishing_sigmoid.yaml", tmp_path / "run")
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "run"), "--gradients"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "run" / "gradients.csv").unlink()
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "run"), "--gradients"])
    assert result.exit_code == 2 and "train with training.log_gradients: true" in result.output
