"""`dltrain predict` on a CSV with the label column: the labels beside the predictions, and their accuracy on stderr."""

import csv
import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app

datasets = pytest.importorskip("sklearn.datasets")
runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def trained(tmp_path, labels) -> str:
    """A run trained on iris whose label column 'species' holds `labels` (one per flower)."""
    iris = datasets.load_iris()
    data = write_csv(tmp_path / "train.csv", [*FEATURES, "species"],
                     [[*map(str, x), label] for x, label in zip(iris.data, labels)])
    config = tmp_path / "iris.yaml"
    config.write_text(json.dumps({
        "seed": 0, "data": {"name": "csv", "path": str(data), "label_column": "species"},
        "model": [{"linear": {"units": 16}}, "relu", {"linear": {"units": 3}}],
        "optimizer": {"name": "adam", "lr": 0.02}, "training": {"epochs": 3, "batch_size": 32}}))
    result = invoke("train", config, "--run-dir", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def test_word_labels_are_kept_beside_the_prediction_and_scored(tmp_path):
    iris = datasets.load_iris()
    species = [iris.target_names[t] for t in iris.target]
    run = trained(tmp_path, species)
    labels = ["" if i % 10 == 3 else name for i, name in enumerate(species)]  # 15 rows without a label
    table = write_csv(tmp_path / "sepal.csv", ["id", "species", *FEATURES],
                      [[f"f{i}", label, *map(str, x)] for i, (x, label) in enumerate(zip(iris.data, labels))])
    result = invoke("predict", run, table)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["input", "id", "prediction", "label", "probability"]
    assert [r["label"] for r in rows] == labels
    labelled = [r for r in rows if r["label"]]
    accuracy = np.mean([r["prediction"] == r["label"] for r in labelled])
    assert len(labelled) == 135 and 0.3 < accuracy < 1
    assert result.stderr == f"accuracy {accuracy:.4f} on 135 rows with labels ({table})\n"

    # JSON lines carry it too; a file without the label column has no label and no accuracy line
    lines = [json.loads(line) for line in invoke("predict", run, table, "--format", "jsonl").stdout.splitlines()]
    assert [line["label"] for line in lines] == labels
    unlabelled = write_csv(tmp_path / "new.csv", FEATURES, [list(map(str, x)) for x in iris.data[:5]])
    result = invoke("predict", run, unlabelled)
    assert list(next(csv.DictReader(io.StringIO(result.stdout)))) == ["input", "prediction", "probability"]
    assert result.stderr == ""

    # a column of its own called 'label' stays what it is; the labels then go by their column's name
    other = write_csv(tmp_path / "other.csv", ["label", "species", *FEATURES],
                      [["x", name, *map(str, x)] for x, name in zip(iris.data[:4], species[:4])])
    rows = list(csv.DictReader(io.StringIO(invoke("predict", run, other).stdout)))
    assert list(rows[0]) == ["input", "label", "prediction", "species", "probability"]
    assert [r["label"] for r in rows] == ["x"] * 4 and [r["species"] for r in rows] == species[:4]


def test_numeric_labels_score_as_the_classes_they_name(tmp_path):
    iris = datasets.load_iris()
    run = trained(tmp_path, [str(t) for t in iris.target])
    labels = [f"{t}.0" if i % 2 else str(t) for i, t in enumerate(iris.target)]  # '2.0' is class 2
    table = write_csv(tmp_path / "numbers.csv", [*FEATURES, "species"],
                      [[*map(str, x), label] for x, label in zip(iris.data, labels)])
    result = invoke("predict", run, table)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["label"] for r in rows] == labels
    accuracy = np.mean([int(r["prediction"]) == t for r, t in zip(rows, iris.target)])
    assert result.stderr == f"accuracy {accuracy:.4f} on 150 rows with labels ({table})\n"


def test_the_label_column_is_there_whichever_file_comes_first(tmp_path):
    iris = datasets.load_iris()
    species = [iris.target_names[t] for t in iris.target]
    run = trained(tmp_path, species)
    bare = write_csv(tmp_path / "bare.csv", FEATURES, [list(map(str, x)) for x in iris.data[:5]])
    named = write_csv(tmp_path / "named.csv", [*FEATURES, "species"],
                      [[*map(str, x), label] for x, label in zip(iris.data[50:55], species[50:55])])
    result = invoke("predict", run, bare, named)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["input", "prediction", "label", "probability"]
    assert [r["label"] for r in rows] == [""] * 5 + species[50:55]
    assert result.stderr.endswith(f"on 5 rows with labels ({named})\n")
