"""A regression run says its MAE (in the data's units) and R² per epoch and at the end, equal to sklearn's."""

import csv
import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.config import load_config
from dltrain.training import rundir as files
from dltrain.training.checkpoint import load_checkpoint
from dltrain.training.model import build_for, error_sums, regression_figures
from dltrain.training.reporting import format_row, in_units

metrics = pytest.importorskip("sklearn.metrics")
runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_figures_from_sums_equal_sklearn_and_add_up_over_shards():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(50, 2))
    predictions = targets + rng.normal(scale=0.5, size=(50, 2))
    norm = {"mean": [100.0, -3.0], "std": [20.0, 0.5]}
    unscaled = [a * np.asarray(norm["std"]) + np.asarray(norm["mean"]) for a in (predictions, targets)]
    mae, r2 = regression_figures(error_sums(predictions, targets), 50, norm)
    assert mae == pytest.approx(metrics.mean_absolute_error(unscaled[1], unscaled[0]), rel=1e-12)
    assert r2 == pytest.approx(metrics.r2_score(unscaled[1], unscaled[0]), rel=1e-12)
    shards = error_sums(predictions[:17], targets[:17]) + error_sums(predictions[17:], targets[17:])  # two ranks
    assert regression_figures(shards, 50, norm) == pytest.approx((mae, r2), rel=1e-12)
    constant = np.ones((4, 1))
    assert regression_figures(error_sums(constant + 1, constant), 4, None) == (1.0, None)  # R² of no variation


def test_epoch_line_shows_the_validation_mae_and_r2():
    row = {"epoch": 2, "train_loss": 0.5, "train_accuracy": None, "val_loss": 0.25, "val_accuracy": None,
           "val_mae": 45.1234, "val_r2": 0.51237, "lr": 0.01, "seconds": 1.0}
    line = "epoch  2/10  loss 0.5000  val_loss 0.2500  val_mae 45.12  val_r2 0.5124  lr 0.01  1.0s"
    assert format_row(row, 10) == line


def test_a_regression_run_reports_mae_and_r2_in_the_data_units(tmp_path):
    diabetes = pytest.importorskip("sklearn.datasets").load_diabetes(scaled=False)
    header = [*diabetes.feature_names, "progression"]
    for name, rows in (("train", slice(0, 340)), ("test", slice(340, None))):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([*map(str, x), str(y)] for x, y in zip(diabetes.data[rows], diabetes.target[rows]))
    config = tmp_path / "diabetes.yaml"
    config.write_text(json.dumps({
        "seed": 0, "loss": "mse",
        "data": {"name": "csv", "path": str(tmp_path / "train.csv"), "test_path": str(tmp_path / "test.csv"),
                 "label_column": "progression"},
        "model": [{"linear": {"units": 16}}, "relu", {"linear": {"units": 1}}],
        "optimizer": {"name": "adam", "lr": 0.01}, "training": {"epochs": 4, "batch_size": 32}}))
    run = tmp_path / "run"
    result = invoke("train", config, "--run-dir", run)
    assert result.exit_code == 0, result.output
    summary = json.loads((run / files.SUMMARY).read_text())

    # the test split: predict's values in the data's units against the CSV's targets
    result_of_predict = invoke("predict", run, tmp_path / "test.csv")
    predicted = list(csv.DictReader(io.StringIO(result_of_predict.stdout)))
    values = np.array([float(r["prediction"]) for r in predicted])
    targets = diabetes.target[340:]
    assert [r["label"] for r in predicted] == [str(y) for y in targets]  # the CSV's cells, in the data's units
    mae = np.mean([abs(float(r["prediction"]) - float(r["label"])) for r in predicted])
    assert result_of_predict.stderr == f"MAE {in_units(mae)} on 102 rows with labels ({tmp_path / 'test.csv'})\n"
    assert summary["test_mae"] == pytest.approx(metrics.mean_absolute_error(targets, values), rel=1e-6)
    assert summary["test_r2"] == pytest.approx(metrics.r2_score(targets, values), rel=1e-6)
    report = json.loads(invoke("eval", run, "--json").stdout)
    assert (summary["test_mae"], summary["test_r2"]) == pytest.approx((report["mae"], report["r2"]), rel=1e-9)
    final = result.stdout.splitlines()[-1]
    assert f"; test loss {summary['test_loss']:.4f}; test MAE {in_units(summary['test_mae'])}; " \
           f"test R² {summary['test_r2']:.4f}; " in final

    # the best epoch's validation figures: its checkpoint's predictions on the validation split
    rows = files.RunDir(run).read_metrics()
    assert list(rows[0]) == list(files.METRIC_COLUMNS)
    best = rows[summary["best_epoch"] - 1]
    checkpoint = load_checkpoint(run / files.BEST)
    built = build_for(load_config(config), "cpu", checkpoint)
    built.model.network.load_state_dict(checkpoint.model)
    val = built.model.evaluate(built.splits.val, 1024)
    norm = checkpoint.data["target_normalization"]
    unscaled = [a[:, 0] * norm["std"][0] + norm["mean"][0] for a in (val.predictions, val.targets)]
    assert float(best["val_mae"]) == pytest.approx(metrics.mean_absolute_error(unscaled[1], unscaled[0]), rel=1e-6)
    assert float(best["val_r2"]) == pytest.approx(metrics.r2_score(unscaled[1], unscaled[0]), rel=1e-6)
    epoch_line = next(line for line in result.stdout.splitlines() if line.startswith(f"epoch {best['epoch']}/4"))
    assert f"  val_mae {in_units(float(best['val_mae']))}  val_r2 {float(best['val_r2']):.4f}  " in epoch_line


@pytest.mark.parametrize(("monitor", "best_of"), [("val_mae", min), ("val_r2", max)])
def test_early_stopping_and_tune_can_follow_the_mae_or_r2(tmp_path, monitor, best_of):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 3))
    np.savez(tmp_path / "d.npz", x=x, y=300 * x[:, 0] - 100 * x[:, 1] + 20 * rng.standard_normal(200))
    values = {"seed": 0, "data": {"name": "npz", "path": str(tmp_path / "d.npz")}, "loss": "mse",
              "model": [{"linear": {"units": 8}}, "relu", {"linear": {"units": 1}}], "optimizer": {"lr": 0.05},
              "training": {"epochs": 8, "batch_size": 16, "early_stopping": {"monitor": monitor, "patience": 8}}}
    (tmp_path / "c.yaml").write_text(json.dumps(values))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.output
    rows = files.RunDir(tmp_path / "run").read_metrics()
    summary = json.loads((tmp_path / "run" / files.SUMMARY).read_text())
    value, epoch = best_of((float(r[monitor]), int(r["epoch"])) for r in rows)
    assert summary["monitor"] == monitor and summary["best_epoch"] == epoch
    assert summary["best_value"] == pytest.approx(value, rel=1e-9)

    from dltrain.tune.space import load_search

    (tmp_path / "t.yaml").write_text(json.dumps({**values, "tune": {
        "metric": monitor, "parameters": {"optimizer.lr": {"log_uniform": [0.001, 0.1]}}}}))
    assert load_search(tmp_path / "t.yaml").direction == ("minimize" if best_of is min else "maximize")


def test_the_mae_is_refused_as_the_monitor_of_a_classifier():
    from dltrain.config import validate
    from dltrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"training\.early_stopping\.monitor: monitors 'val_mae' but loss "
                                          r"'cross_entropy' is not a regression loss: the MAE and R² are a "
                                          r"regression's; monitor val_loss or val_accuracy"):
        validate({"data": "xor", "model": [{"linear": {"units": 2}}],
                  "training": {"early_stopping": {"monitor": "val_mae"}}}, {}, "c.yaml")
