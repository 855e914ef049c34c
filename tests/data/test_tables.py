"""CSV files as users have them: word labels, categorical columns, missing values, regression in real units."""

import csv
import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.config import load_config, validate
from dltrain.data.inputs import InputSet
from dltrain.data.tables import Cells, TableEncoding
from dltrain.errors import DataError
from dltrain.training.checkpoint import load_checkpoint, resolve_checkpoint
from dltrain.training.model import build_for
from dltrain.training.run import run_training

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def fruit_rows(n, seed, colours=("red", "green", "blue")):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour = colours[rng.integers(len(colours))]
        size = rng.normal(5 if colour == "red" else 2, 1)
        kind = "apple" if size + (colour == "green") > 3.5 else "cherry"
        rows.append({"id": f"f{seed}-{i}", "colour": colour, "size": "" if i % 29 == 0 else f"{size:.3f}",
                     "weight": f"{rng.normal(3, 1):.3f}", "kind": kind})
    return rows


def write_csv(path, rows, columns=("id", "colour", "size", "weight", "kind")):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def fruit_config(tmp_path, **data):
    path = tmp_path / "fruit.yaml"
    options = {"name": "csv", "path": str(write_csv(tmp_path / "train.csv", fruit_rows(300, 0))),
               "test_path": str(write_csv(tmp_path / "test.csv", fruit_rows(80, 1))), "label_column": "kind",
               "ignore_columns": ["id"], "missing": "mean", **data}
    path.write_text(json.dumps({"seed": 2, "data": options,
                                "model": [{"linear": {"units": 16}}, "relu", {"linear": {"units": 2}}],
                                "optimizer": {"name": "adam", "lr": 0.02},
                                "training": {"epochs": 8, "batch_size": 32}}))
    return path


def test_word_labels_and_a_categorical_column_train_evaluate_and_predict(tmp_path):
    config = fruit_config(tmp_path)
    summary = run_training(load_config(config), run_dir=tmp_path / "run", plot=False)
    assert summary["test_accuracy"] > 0.85
    checkpoint = load_checkpoint(resolve_checkpoint(tmp_path / "run"))
    assert checkpoint.data["class_names"] == ["apple", "cherry"]
    assert checkpoint.data["feature_names"] == ["colour", "size", "weight"]
    colour, size, _ = checkpoint.data["features"]["columns"]
    assert colour == {"name": "colour", "kind": "category", "categories": ["blue", "green", "red"]}
    assert size["kind"] == "number" and checkpoint.data["input_shape"] == [5]  # 3 one-hot + 2 numbers
    report = json.loads(invoke("eval", tmp_path / "run", "--json").stdout)
    assert [row["class"] for row in report["per_class"]] == ["apple", "cherry"]

    # columns in another order, an extra column: features found by name, the rest carried, the label as `label`
    rows = fruit_rows(80, 1)
    write_csv(tmp_path / "new.csv", [{**r, "note": f"n{i}"} for i, r in enumerate(rows)],
              ("weight", "note", "kind", "colour", "id", "size"))
    result = invoke("predict", tmp_path / "run", tmp_path / "new.csv")
    assert result.exit_code == 0, result.output
    predicted = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(predicted[0]) == ["input", "note", "id", "prediction", "label", "probability"]
    assert predicted[0]["input"] == f"{tmp_path / 'new.csv'}:2" and predicted[0]["id"] == "f1-0"
    built = build_for(load_config(config), "cpu", checkpoint)
    built.model.network.load_state_dict(checkpoint.model)
    evaluation = built.model.evaluate(built.splits.test, 1024)
    assert [r["prediction"] for r in predicted] == [["apple", "cherry"][i] for i in evaluation.predictions]
    assert np.mean([r["prediction"] == row["kind"] for r, row in zip(predicted, rows)]) == report["accuracy"]


def test_table_errors_name_row_and_column(tmp_path):
    config = fruit_config(tmp_path)
    run_training(load_config(config), run_dir=tmp_path / "run", plot=False)
    rows = fruit_rows(5, 3)
    rows[2]["colour"] = "purple"
    write_csv(tmp_path / "unseen.csv", rows)
    result = invoke("predict", tmp_path / "run", tmp_path / "unseen.csv")
    assert result.exit_code == 2
    assert (f"error: {tmp_path / 'unseen.csv'}:4: column 'colour' has 'purple', a category not seen in training "
            f"(seen: blue, green, red); data.unknown_category: zeros encodes it as all zeros") in result.output
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "photo.png")
    result = invoke("predict", tmp_path / "run", tmp_path / "photo.png")
    assert result.exit_code == 2
    assert (f"error: {tmp_path / 'photo.png'}: the model expects inputs of per-sample shape (5,), not images (images "
            f"convert to (1 or 3 channels, height, width) or (height, width))") in result.output
    write_csv(tmp_path / "short.csv", rows, ("id", "colour", "kind"))
    result = invoke("predict", tmp_path / "run", tmp_path / "short.csv")
    assert result.exit_code == 2
    assert (f"{tmp_path / 'short.csv'}:1: missing the column(s) the model was trained on: size, weight "
            f"(found: id, colour, kind)") in result.output

    without_fill = validate({**load_config(config).to_dict(), "data": {**load_config(config).data, "missing": "error"}},
                            {}, "test")
    with pytest.raises(DataError, match=r"train.csv:2: column 'size' has a missing value; data.missing: mean fills it "
                                        r"with the training mean"):
        build_for(without_fill)


def test_encoding_by_hand():
    cells = Cells([["a", "1"], ["b", ""], ["a", "3"]], ["c", "n"], ["f:2", "f:3", "f:4"])
    encoding = TableEncoding.fit(cells, missing="mean", unknown_category="zeros")
    assert encoding.columns == [{"name": "c", "kind": "category", "categories": ["a", "b"]},
                                {"name": "n", "kind": "number", "mean": 2.0}]
    np.testing.assert_array_equal(encoding.transform(cells), [[1, 0, 1], [0, 1, 2], [1, 0, 3]])
    new = Cells([["3", "z"], ["NA", "b"]], ["n", "c"], ["g:2", "g:3"])  # columns by name; unseen -> zeros
    np.testing.assert_array_equal(encoding.transform(new), [[0, 0, 3], [0, 1, 2]])
    with pytest.raises(DataError, match=r"g:2: column 'n': expected a number, got 'x'"):
        encoding.transform(Cells([["x", "a"]], ["n", "c"], ["g:2"]))


def test_regression_on_a_real_table_reports_and_predicts_in_its_units(tmp_path):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    diabetes = sklearn_datasets.load_diabetes(scaled=False)
    names = list(diabetes.feature_names)
    rows = [dict(zip([*names, "progression"], map(str, [*x, y]))) for x, y in zip(diabetes.data, diabetes.target)]
    write_csv(tmp_path / "train.csv", rows[:350], [*names, "progression"])
    write_csv(tmp_path / "test.csv", rows[350:], [*names, "progression"])
    config = tmp_path / "diabetes.yaml"
    config.write_text(json.dumps({
        "seed": 0, "loss": "mse",
        "data": {"name": "csv", "path": str(tmp_path / "train.csv"), "test_path": str(tmp_path / "test.csv"),
                 "label_column": "progression"},
        "model": [{"linear": {"units": 32}}, "relu", {"linear": {"units": 1}}],
        "optimizer": {"name": "adam", "lr": 0.01}, "training": {"epochs": 40, "batch_size": 32}}))
    run_training(load_config(config), run_dir=tmp_path / "run", plot=False)
    report = json.loads(invoke("eval", tmp_path / "run", "--json").stdout)
    assert 30 < report["mae"] < 60 and report["rmse"] > report["mae"] and 0.3 < report["r2"] < 0.7
    text = invoke("eval", tmp_path / "run").stdout
    assert f"MAE {report['mae']:.4g}" in text and "R²" in text
    predicted = list(csv.DictReader(io.StringIO(invoke("predict", tmp_path / "run", tmp_path / "test.csv").stdout)))
    values = np.array([float(r["prediction"]) for r in predicted])
    targets = diabetes.target[350:]
    assert 25 < values.mean() < 346  # the data's units, not standardized ones
    assert np.abs(values - targets).mean() == pytest.approx(report["mae"], rel=1e-5)
    # turned off, the network learns outputs in the hundreds (the loss is in squared units)
    checkpoint = load_checkpoint(resolve_checkpoint(tmp_path / "run"))
    assert checkpoint.data["target_normalization"]["mean"][0] == pytest.approx(targets.mean(), rel=0.1)


def write_text_csv(path, header, rows=20, encoding="utf-8"):
    """A table whose every column holds the class (0 or 1) of its row: one column separates the classes."""
    path.write_text(header + "\n" + "".join(",".join([str(i % 2)] * len(header.split(","))) + "\n"
                                            for i in range(rows)), encoding=encoding)
    return path


@pytest.mark.parametrize("header, duplicated", [
    ("f1,f1,label", "'f1' (columns 1 and 2)"),  # was: the second f1 dropped silently
    ("f1,label,label", "'label' (columns 2 and 3)"),  # was: the second label read as a feature, leaking the answer
    ("a,b,a,label,b,a", "'a' (columns 1, 3 and 6), 'b' (columns 2 and 5)"),
])
def test_duplicate_column_names_are_refused_naming_them_and_their_columns(tmp_path, header, duplicated):
    path = write_text_csv(tmp_path / "dup.csv", header)
    config = tmp_path / "dup.yaml"
    config.write_text(json.dumps({"data": {"name": "csv", "path": str(path)}, "model": [{"linear": {"units": 2}}]}))
    result = invoke("check", config)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {path}:1: duplicate column names in the header: {duplicated}; give each column "
                             f"its own name\n")


@pytest.fixture(scope="module")
def fruit_run(tmp_path_factory):
    """A model trained on fruit_config's table, and new rows (its feature columns first) with their predictions."""
    tmp_path = tmp_path_factory.mktemp("fruit")
    run_training(load_config(fruit_config(tmp_path)), run_dir=tmp_path / "run", plot=False)
    new = fruit_rows(40, 1)
    plain = write_csv(tmp_path / "plain.csv", new, ("colour", "id", "size", "weight"))
    result = invoke("predict", tmp_path / "run", plain)
    assert result.exit_code == 0, result.output
    return tmp_path / "run", new, plain, result.stdout


def test_predict_reads_a_byte_order_mark_as_training_does(fruit_run, tmp_path):
    """As Excel writes "CSV UTF-8": a byte-order mark before the first column's name. Was: "missing ... colour
    (found: \ufeffcolour, ...)", while training read the same file."""
    run, _, plain, expected = fruit_run
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    result = invoke("predict", run, bom)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.replace(str(plain), str(bom))


def test_predict_strips_cells_as_training_does(fruit_run, tmp_path):
    """Was: ' red ' an unseen category in predict, while training read it as 'red'."""
    run, new, plain, expected = fruit_run
    padded = write_csv(tmp_path / "padded.csv", [{**r, "colour": f" {r['colour']} "} for r in new],
                       ("colour", "id", "size", "weight"))
    result = invoke("predict", run, padded)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.replace(str(plain), str(padded))


def test_predict_refuses_duplicate_column_names_as_training_does(fruit_run, tmp_path):
    run, new, *_ = fruit_run
    duplicated = write_csv(tmp_path / "duplicated.csv", new, ("id", "colour", "size", "weight", "size"))
    result = invoke("predict", run, duplicated)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {duplicated}:1: duplicate column names in the header: 'size' (columns 3 and 5); "
                             f"give each column its own name\n")


class CountedName(str):
    """A column name that counts the comparisons made with it: searching a list of names costs one per name passed."""

    comparisons = 0

    def __eq__(self, other):
        CountedName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class CountedColumn(dict):
    """An encoded column that counts the reads of its fields."""

    reads = 0

    def __getitem__(self, key):
        CountedColumn.reads += 1
        return super().__getitem__(key)


def column_work(tmp_path, columns: int) -> int:
    """Name comparisons and column reads to learn, apply and predict with the encoding of a table of `columns`
    feature columns (half numbers, half categories) and two rows."""
    names = [CountedName(f"c{j}") for j in range(columns)]
    rows = [[str(j) if j % 2 else f"k{j}" for j in range(columns)] for _ in range(2)]
    path = tmp_path / f"wide{columns}.csv"
    path.write_text("\n".join(",".join(row) for row in [names, *rows]) + "\n")
    CountedName.comparisons = CountedColumn.reads = 0
    encoding = TableEncoding([CountedColumn(c) for c in TableEncoding.fit(Cells(rows, names, ["f:2", "f:3"])).columns])
    encoding.transform(Cells(rows, names, ["f:2", "f:3"]))
    for batch in InputSet([path], (encoding.width,), names, None).batches(256):
        encoding.transform(Cells(batch.x, names, batch.ids))
    return CountedName.comparisons + CountedColumn.reads


def test_the_work_of_reading_a_wide_table_grows_linearly_with_its_columns(tmp_path):
    """Was: each column found by a search through all the names and its offset by a walk through all the columns
    before it: 16 s for `dltrain check` on a 10,000-column CSV, four times that for twice the columns."""
    narrow, wide = column_work(tmp_path, 1000), column_work(tmp_path, 2000)
    assert wide <= 2.05 * narrow
    assert wide <= 20 * 2000
