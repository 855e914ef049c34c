"""From data on disk to predictions on disk: training on a folder of real images, `dltrain predict` on files."""

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.config import load_config
from dltrain.data import images
from dltrain.data.files import read_idx
from dltrain.errors import DataError
from dltrain.training.checkpoint import load_checkpoint, resolve_checkpoint
from dltrain.training.model import build_for

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
CLASSES = ["trouser", "bag", "sneaker"]  # Fashion-MNIST labels 1, 8, 7
LABELS = [1, 8, 7]
runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory):
    """train/ and test/ folders of real Fashion-MNIST test images, PNG and BMP alternating, one folder per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fashion")
    x = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    y = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    for name, label in zip(CLASSES, LABELS):
        picked = np.flatnonzero(y == label)[:80]
        for k, i in enumerate(picked):
            split = "test" if k % 4 == 0 else "train"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / f"{i:05d}.{'png' if k % 2 else 'bmp'}")
    return root


def config_for(tmp_path, root, channels=1, size=(28, 28)):
    path = tmp_path / "folder.yaml"
    path.write_text(f"""\
seed: 0
data: {{name: image_folder, path: {root}, image_size: [{size[0]}, {size[1]}], channels: {channels}}}
model:
  - conv2d: {{filters: 4, kernel_size: 3, stride: 2}}
  - relu
  - flatten
  - linear: {{units: 3}}
optimizer: {{name: adam, lr: 0.01}}
training: {{epochs: 3, batch_size: 32}}
""")
    return path


def read_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def trained(fashion_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
    try:
        config = config_for(tmp, fashion_folder)
        result = invoke("train", config, "--run-dir", tmp / "run", "--quiet")
        assert result.exit_code == 0, result.output
    finally:
        del os.environ["XDG_CACHE_HOME"]
    return tmp / "run", config, tmp / "cache"


@needs_fashion
def test_predict_on_the_image_files_reproduces_eval(trained, fashion_folder, tmp_path):
    run, config, _ = trained
    checkpoint = load_checkpoint(resolve_checkpoint(run))
    assert checkpoint.data["class_names"] == sorted(CLASSES)  # folder names, sorted, stored
    report = json.loads(invoke("eval", run, "--json").stdout)
    result = invoke("predict", run, fashion_folder / "test", "--top-k", "2", "--probabilities")
    assert result.exit_code == 0, result.output
    rows = read_rows(result.stdout)
    assert len(rows) == report["n"] == 60
    truth = [Path(r["input"]).parent.name for r in rows]
    predicted = [r["prediction"] for r in rows]
    assert np.mean([p == t for p, t in zip(predicted, truth)]) == report["accuracy"]
    names = sorted(CLASSES)
    confusion = np.zeros((3, 3), int)
    for p, t in zip(predicted, truth):
        confusion[names.index(t), names.index(p)] += 1
    assert confusion.tolist() == report["confusion_matrix"]
    # the same predictions, in the same order, as evaluating the test split in Python
    built = build_for(load_config(config), "cpu", checkpoint)
    built.model.network.load_state_dict(checkpoint.model)
    evaluation = built.model.evaluate(built.splits.test, 1024)
    assert predicted == [names[i] for i in evaluation.predictions]
    first = rows[0]
    assert set(first) == {"input", "prediction", "probability", "top2", "top2_probability",
                          *(f"probability_{n}" for n in names)}
    assert float(first["probability"]) == max(float(first[f"probability_{n}"]) for n in names)
    assert sum(float(first[f"probability_{n}"]) for n in names) == pytest.approx(1.0)

    onnx_file = tmp_path / "m.onnx"
    assert invoke("export", run, "--out", onnx_file).exit_code == 0
    onnx_report = json.loads(invoke("eval", onnx_file, "--json").stdout)
    onnx_rows = read_rows(invoke("predict", onnx_file, fashion_folder / "test").stdout)
    onnx_predicted = [r["prediction"] for r in onnx_rows]
    assert np.mean([p == t for p, t in zip(onnx_predicted, truth)]) == onnx_report["accuracy"]
    assert onnx_predicted == predicted


@needs_fashion
def test_image_files_named_one_by_one_share_batches(fashion_folder):
    """`predict RUN a.png b.png ...` runs batches of the files as a folder would, not one forward pass a file; the
    rows keep the order of the arguments."""
    from dltrain.data.inputs import InputSet

    files = sorted((fashion_folder / "test" / "trouser").iterdir())[:10]
    source = InputSet([*files[:3], fashion_folder / "test" / "bag", *files[3:]], (1, 28, 28), None, None)
    batches = list(source.batches(4))
    bag = sorted(p for p in (fashion_folder / "test" / "bag").iterdir())
    assert [len(b.ids) for b in batches] == [4] * 7 + [2]  # 3 + 20 + 7 files, in batches of 4
    assert [Path(i) for b in batches for i in b.ids] == [*files[:3], *bag, *files[3:]]


def test_a_second_run_reads_the_decoded_cache(trained, fashion_folder, tmp_path, monkeypatch):
    run, config, cache = trained
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    cached = sorted((cache / "dltrain" / "images").glob("*.npy"))
    assert len(cached) == 2  # train/ and test/

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "decode_image", no_decoding)
    built = build_for(load_config(config))
    assert len(built.splits.train) + len(built.splits.val) == 180 and len(built.splits.test) == 60
    assert isinstance(built.splits.train.x[np.arange(3)], np.ndarray)


@needs_fashion
def test_outputs_to_a_file_as_jsonl_and_other_inputs(trained, fashion_folder, tmp_path):
    run, _, _ = trained
    out = tmp_path / "predictions.jsonl"
    result = invoke("predict", run, fashion_folder / "test" / "bag", "--out", out, "--format", "jsonl")
    assert result.exit_code == 0 and result.stdout == ""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 20 and set(lines[0]) == {"input", "prediction", "probability"}
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]  # no temporary left behind

    # the same images as an .npz of arrays and as an IDX file of (n, 28, 28) give the same predictions
    from PIL import Image

    files = [Path(line["input"]) for line in lines]
    pixels = np.stack([np.asarray(Image.open(f)) for f in files])
    np.savez(tmp_path / "x.npz", x=pixels[:, None])
    idx = tmp_path / "images-idx3-ubyte"
    idx.write_bytes(bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in pixels.shape) + pixels.tobytes())
    for source in (tmp_path / "x.npz", idx):
        rows = read_rows(invoke("predict", run, source).stdout)
        assert [r["prediction"] for r in rows] == [line["prediction"] for line in lines]
        assert rows[0]["input"] == f"{source}:0"
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 3, 28, 28)))
    result = invoke("predict", run, tmp_path / "wrong.npz")
    assert result.exit_code == 2
    assert f"{tmp_path / 'wrong.npz'}: the model expects inputs of per-sample shape (1, 28, 28), found (3, 28, 28)" \
        in result.output


@needs_fashion
def test_a_colour_image_of_another_size_is_converted(trained, tmp_path):
    from PIL import Image

    run, _, _ = trained
    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(tmp_path / "big.jpg")
    rows = read_rows(invoke("predict", run, tmp_path / "big.jpg").stdout)
    assert len(rows) == 1 and rows[0]["prediction"] in CLASSES


@needs_fashion
def test_unreadable_images_are_named_or_skipped(trained, tmp_path):
    run, _, _ = trained
    folder = tmp_path / "new"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = invoke("predict", run, folder)
    assert result.exit_code == 2
    assert f"{folder / 'b.png'}: not a readable image" in result.output
    result = invoke("predict", run, folder, "--skip-bad")
    assert result.exit_code == 0
    assert [r["input"] for r in read_rows(result.stdout)] == [str(folder / "a.png")]
    assert "skipped 1 unreadable file(s)" in result.stderr
    assert f"{folder / 'b.png'}: not a readable image" in result.stderr


def test_image_folder_errors_name_the_path(tmp_path, monkeypatch):
    from PIL import Image

    from dltrain.data.datasets import image_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "images"
    (root / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "cats" / "1.png")
    with pytest.raises(DataError, match=r"images: only one class folder \(cats\); classification needs two or more"):
        image_folder(path=str(root), rng=None, image_size=[8, 8])
    (root / "dogs").mkdir()
    with pytest.raises(DataError, match=r"images/dogs: empty class folder"):
        image_folder(path=str(root), rng=None, image_size=[8, 8])
    (root / "dogs" / "2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"images/dogs/2.png: not a readable image"):
        image_folder(path=str(root), rng=None, image_size=[8, 8])
    assert not list((tmp_path / "cache").rglob("*.tmp.npy"))  # nothing half-written
    Image.fromarray(np.full((10, 6, 3), 255, np.uint8)).save(root / "dogs" / "2.png")
    raw = image_folder(path=str(root), rng=None, image_size=[8, 8], channels=3)
    assert raw.class_names == ["cats", "dogs"] and raw.x_train.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(raw.x_train[np.arange(2)][1], 255)  # resized, converted to RGB
    os.utime(root / "dogs" / "2.png", ns=(1, 1))  # a changed file is decoded again
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(root / "dogs" / "2.png")
    raw = image_folder(path=str(root), rng=None, image_size=[8, 8], channels=3)
    np.testing.assert_array_equal(raw.x_train[np.arange(2)][1], 0)


def test_image_size_must_be_two_sides():
    from dltrain.config import validate
    from dltrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.image_size: expected a list of 2 items, each an integer in "
                                          r"\(0, 4096\], got \[28\]"):
        validate({"data": {"name": "image_folder", "path": "x", "image_size": [28]}, "model": ["flatten"]}, {}, "t")
    with pytest.raises(ConfigError, match=r"data: missing required key 'image_size' \(a list of 2 items"):
        validate({"data": {"name": "image_folder", "path": "x"}, "model": ["flatten"]}, {}, "t")
