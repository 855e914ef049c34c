"""Hostile files end in one clear line, never a traceback: images that would decode to gigabytes, file names that
are not UTF-8, corrupt run directories, edited checkpoint metadata, CSV cells a spreadsheet would run as formulas,
and SIGTERM while `predict` or `export` writes its file."""

import codecs
import csv
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.errors import DataError, RunDirError
from dltrain.training import rundir

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def read_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit greyscale PNG of zeros, compressed piece by piece: a few MB of memory at any size (30,000 x
    30,000 pixels is 875 KB on disk and 900 megapixels decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # the filter byte, then eight pixels a byte
    rows_per_piece = max(1, (1 << 22) // len(row))
    compressor, idat = zlib.compressobj(6), bytearray()
    for start in range(0, height, rows_per_piece):
        idat += compressor.compress(row * min(rows_per_piece, height - start))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))
    return path


def save_png(path: Path, value: int = 0, side: int = 8) -> Path:
    from PIL import Image

    Image.fromarray(np.full((side, side), value, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Decoded images go to a cache of the module's own (XDG_CACHE_HOME, read by subprocesses too)."""
    path = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    yield path
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, cache) -> Path:
    """A run directory of a tiny model of 8 x 8 grey images of two classes, cat and dog."""
    tmp = tmp_path_factory.mktemp("image_run")
    for k, name in enumerate(("cat", "dog")):
        (tmp / "images" / name).mkdir(parents=True)
        for i in range(6):
            save_png(tmp / "images" / name / f"{i}.png", 60 * k + 10 * i)
    config = tmp / "tiny.yaml"
    config.write_text(f"""\
seed: 0
data: {{name: image_folder, path: {tmp / 'images'}, image_size: [8, 8], channels: 1, val_fraction: 0.25,
       test_fraction: 0.25}}
model: [flatten, {{linear: {{units: 2}}}}]
optimizer: {{name: sgd, lr: 0.1}}
training: {{epochs: 1, batch_size: 4}}
""")
    result = invoke("train", config, "--run-dir", tmp / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return tmp / "run"


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    """A run directory of a tiny classifier of a CSV table (columns x1, x2; labels the words low and high)."""
    tmp = tmp_path_factory.mktemp("table_run")
    rows = [f"{x1},{x2},{'high' if x1 + x2 > 5 else 'low'}" for x1 in range(5) for x2 in range(4)]
    (tmp / "train.csv").write_text("x1,x2,label\n" + "\n".join(rows) + "\n")
    config = tmp / "table.yaml"
    config.write_text(f"""\
seed: 0
data: {{name: csv, path: {tmp / 'train.csv'}, val_fraction: 0.25}}
model: [{{linear: {{units: 2}}}}]
optimizer: {{name: sgd, lr: 0.1}}
training: {{epochs: 1, batch_size: 4}}
""")
    result = invoke("train", config, "--run-dir", tmp / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return tmp / "run"


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return write_blank_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 30_000, 30_000)


# ---------------------------------------------------------------- 1. images that decode to gigabytes


def test_predict_refuses_an_image_over_the_pixel_limit_or_skips_it(image_run, bomb, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    save_png(folder / "a.png")
    shutil.copy(bomb, folder / "b.png")
    message = (f"{folder / 'b.png'}: 30000 x 30000 pixels (900,000,000) is over the limit of 89,478,485 pixels (a "
               f"guard against decompression bombs); raise --max-image-pixels to read it")
    result = invoke("predict", image_run, folder)
    assert result.exit_code == 2
    assert result.stderr == f"error: {message}\n"
    result = invoke("predict", image_run, folder, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert [row["input"] for row in read_rows(result.stdout)] == [str(folder / "a.png")]
    assert result.stderr == f"skipped {message}\nskipped 1 unreadable file(s)\n"


def test_the_pixel_limit_is_a_setting_of_predict_and_of_image_folder(image_run, tmp_path, monkeypatch):
    from dltrain.data.datasets import image_folder

    # --help shows the one default (dltrain.limits) without importing the data package
    probe = "import sys, dltrain.cli; print(sorted(m for m in sys.modules if m.startswith('dltrain.data')))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout == "[]\n"
    assert "[default: 89478485]" in invoke("predict", "--help").stdout
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = save_png(tmp_path / "a.png")  # 8 x 8: 64 pixels
    result = invoke("predict", image_run, image, "--max-image-pixels", "63")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {image}: 8 x 8 pixels (64) is over the limit of 63 pixels (a guard against "
                             f"decompression bombs); raise --max-image-pixels to read it\n")
    result = invoke("predict", image_run, image, "--max-image-pixels", "64")
    assert result.exit_code == 0 and len(read_rows(result.stdout)) == 1

    root = tmp_path / "images"
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        save_png(root / name / "1.png")
    with pytest.raises(DataError) as caught:
        image_folder(path=str(root), rng=None, image_size=[8, 8], max_image_pixels=63)
    assert str(caught.value) == (f"{root / 'cats' / '1.png'}: 8 x 8 pixels (64) is over the limit of 63 pixels (a "
                                 f"guard against decompression bombs); raise data.max_image_pixels to read it")
    assert image_folder(path=str(root), rng=None, image_size=[8, 8], max_image_pixels=64).x_train.shape == (2, 3, 8, 8)


def test_training_on_a_folder_with_an_image_over_the_limit_exits_2(bomb, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("cats", "dogs"):
        (tmp_path / "images" / name).mkdir(parents=True)
        save_png(tmp_path / "images" / name / "1.png")
    shutil.copy(bomb, tmp_path / "images" / "dogs" / "2.png")
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{name: image_folder, path: {tmp_path / 'images'}, image_size: [8, 8]}}\n"
                      "model: [flatten, {linear: {units: 2}}]\n")
    result = invoke("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        f"error: {tmp_path / 'images' / 'dogs' / '2.png'}: 30000 x 30000 pixels (900,000,000) is over the limit of "
        f"89,478,485 pixels (a guard against decompression bombs); raise data.max_image_pixels to read it\n")


def test_images_over_pillows_own_limit_give_no_pillow_warning_or_error(tmp_path, monkeypatch):
    from PIL import Image

    from dltrain.data.images import decode_image

    big = write_blank_png(tmp_path / "big.png", 12_000, 12_000)  # 144 megapixels: Pillow warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"big.png: 12000 x 12000 pixels \(144,000,000\) is over the limit"):
            decode_image(big, 1, (8, 8))
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow would refuse 64 pixels: dltrain's limit decides
        assert decode_image(save_png(tmp_path / "small.png"), 1, (8, 8), max_pixels=64).shape == (1, 8, 8)
    assert [str(w.message) for w in caught] == []


# ---------------------------------------------------------------- 2. file names that are not UTF-8


def test_file_names_that_are_not_utf8_are_written_escaped_and_map_back(image_run, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"back\\slash.png", b"caf\xe9.png", b"caf\xc3\xa9.png"]  # a backslash, Latin-1 and UTF-8 e-acute
    for name in names:
        save_png(Path(os.fsdecode(os.fsencode(folder) + b"/" + name)))
    expected = [f"{folder}/back\\\\slash.png", f"{folder}/caf\\xe9.png", f"{folder}/café.png"]
    for args in ((), ("--format", "jsonl"), ("--out", tmp_path / "p.csv"), ("--out", tmp_path / "p.jsonl",
                                                                           "--format", "jsonl")):
        result = invoke("predict", image_run, folder, *args)
        assert result.exit_code == 0, result.output
        text = Path(args[1]).read_bytes().decode("utf-8") if "--out" in args else result.stdout_bytes.decode("utf-8")
        if "jsonl" in args:
            inputs = [json.loads(line)["input"] for line in text.splitlines()]
        else:
            inputs = [row["input"] for row in read_rows(text)]
        assert sorted(inputs) == expected
    # README: codecs.escape_decode gives the name's bytes back
    assert sorted(codecs.escape_decode(text.encode())[0] for text in expected) == sorted(
        os.fsencode(folder) + b"/" + name for name in names)


def test_class_names_from_folder_names_that_are_not_utf8_are_written_as_paths_are(image_run, tmp_path):
    run = shutil.copytree(image_run, tmp_path / "run")
    names = [os.fsdecode(b"caf\xe9"), "dog"]  # a class folder's name as Python reads it
    edit_checkpoint(best(run), best(run), {"data": json.dumps({**data_of(run), "class_names": names})})
    for args in ((), ("--format", "jsonl")):
        result = invoke("predict", run, save_png(tmp_path / "x.png"), "--top-k", "2", *args)
        assert result.exit_code == 0, result.output
        text = result.stdout_bytes.decode("utf-8")
        row = json.loads(text) if args else read_rows(text)[0]
        assert {row["prediction"], row["top2"]} == {"caf\\xe9", "dog"}


# ---------------------------------------------------------------- 3. corrupt run directories

CONFIG = "seed: 0\ndata: {name: blobs}\nmodel: [{linear: {units: 3}}]\ntraining: {epochs: 2}\n"
METRICS = ("epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds\n"
           "1,0.9,0.5,0.8,0.6,0.1,1.5\n2,0.7,0.6,0.6,0.7,0.1,1.25\n")
SUMMARY = {"stop_reason": "completed", "epochs_run": 2, "best_epoch": 2, "monitor": "val_loss", "best_value": 0.6,
           "total_seconds": 2.75, "train_samples_per_second": 100.0, "device": "cpu", "test_accuracy": 0.75}


def make_run(path: Path, config=CONFIG, metrics=METRICS, summary=SUMMARY, process=None) -> Path:
    path.mkdir(parents=True)
    for name, content in ((rundir.CONFIG, config), (rundir.METRICS, metrics), (rundir.SUMMARY, summary),
                          (rundir.PROCESS, process)):
        if content is None:
            continue
        if not isinstance(content, (str, bytes)):
            content = json.dumps(content)
        (path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


BROKEN = {
    "binary_metrics": ({"metrics": b"\x89PNG\r\n\x1a\n\x00\x00\xff"},
                       "metrics.csv: not UTF-8 text (byte 0x89 at offset 0); expected a CSV with an epoch column"),
    "no_epoch_column": ({"metrics": "loss\n0.5\n"},
                        "metrics.csv: expected a CSV with an epoch column, found the header 'loss'"),
    "word_in_metrics": ({"metrics": METRICS.replace("0.6,0.7,0.1", "lots,0.7,0.1")},
                        "metrics.csv: epoch 2: val_loss is not a number: 'lots'"),
    "summary_list": ({"summary": [1, 2]}, "summary.json: expected a JSON object, found an array"),
    "summary_text_number": ({"summary": {**SUMMARY, "best_value": "0.6"}},
                            "summary.json: best_value should be a number or null, found '0.6'"),
    "summary_not_json": ({"summary": "{\"stop_reason\": "}, "summary.json: not JSON (Expecting value: line 1 "
                                                            "column 17 (char 16))"),
}


def test_runs_lists_what_it_can_read_and_notes_the_rest(tmp_path):
    make_run(tmp_path / "good")
    for name, (files, _) in BROKEN.items():
        make_run(tmp_path / name, **files)
    make_run(tmp_path / "bad_config", config=b"\xff\xfe: [")
    result = invoke("runs", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    rows = {row["run"]: row for row in json.loads(result.stdout)}
    assert rows["good"]["problems"] == [] and rows["good"]["status"] == "completed"
    for name, (_, problem) in BROKEN.items():
        assert rows[name]["problems"] == [f"{tmp_path / name}/{problem}"]
    assert rows["bad_config"]["problems"] == [f"{tmp_path / 'bad_config'}/config.yaml: cannot read the run's config: "
                                              "not UTF-8 text (byte 0xff at offset 0)"]
    assert rows["bad_config"]["status"] == "completed" and rows["bad_config"]["epochs"] == 2
    assert rows["summary_list"]["status"] == "unreadable" and rows["summary_list"]["epochs"] == 2
    assert rows["word_in_metrics"]["best_value"] == 0.6  # from the summary

    result = invoke("runs", tmp_path, "--sort", "run")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == sorted(rows)
    assert sorted(result.stderr.splitlines()) == sorted(
        f"note: {problem}" for row in rows.values() for problem in row["problems"])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_plot_and_diff_of_a_broken_run_end_in_one_line(tmp_path, name):
    files, problem = BROKEN[name]
    good, broken = make_run(tmp_path / "good"), make_run(tmp_path / name, **files)
    for args in (("plot", broken), ("diff", good, broken)):
        result = invoke(*args)
        assert (result.exit_code, result.stderr) == (2, f"error: {broken}/{problem}\n"), result.output
    assert not (broken / "curves.png").exists()


@pytest.mark.parametrize("pid", [0, -1, True, "12", 1.5, None])
def test_a_process_json_that_names_no_process_reads_as_unknown(tmp_path, pid):
    import socket

    make_run(tmp_path / "run", summary=None, process={"pid": pid, "host": socket.gethostname(), "started": 5})
    assert rundir.is_alive({"pid": pid, "host": socket.gethostname()}) is False
    result = invoke("runs", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["status"] == "unknown"


def test_read_table_refuses_what_is_not_a_csv_with_an_epoch_column(tmp_path):
    run = rundir.RunDir(tmp_path)
    (tmp_path / "metrics.csv").write_bytes(b"epoch,loss\n1,\xff\n")
    with pytest.raises(RunDirError, match=r"metrics.csv: not UTF-8 text \(byte 0xff at offset 13\)"):
        run.read_metrics()
    (tmp_path / "metrics.csv").write_text("")
    assert run.read_metrics() == []
    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,0.5\n2,0.")  # a crash mid-line: the torn line is left out
    assert run.read_metrics() == [{"epoch": "1", "loss": "0.5"}]


def test_resume_over_a_garbage_metrics_csv_is_refused(image_run, tmp_path):
    run = shutil.copytree(image_run, tmp_path / "run")
    (run / "metrics.csv").write_bytes(bytes(range(256)))
    result = invoke("train", "--resume", run, "--set", "training.epochs=2")
    assert result.exit_code == 2, result.output
    assert result.stderr.endswith(f"error: {run}/metrics.csv: not UTF-8 text (byte 0x80 at offset 128); expected a "
                                  "CSV with an epoch column\n")


@pytest.mark.parametrize("epoch", ["\u00b2", "x", "1.5", ""], ids=["superscript_two", "word", "fraction", "blank"])
def test_an_epoch_that_is_not_a_whole_number_is_refused_by_resume_and_noted_by_runs(image_run, tmp_path, epoch):
    """'²' passes str.isdigit() and then int() raised ValueError; a word was left out silently, row and all."""
    run = shutil.copytree(image_run, tmp_path / "run")
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text.replace("\n1,", f"\n{epoch},", 1))
    problem = f"{run}/metrics.csv: line 2: epoch: expected a whole number, found {epoch!r}"
    result = invoke("train", "--resume", run, "--set", "training.epochs=2")
    assert (result.exit_code, result.stderr) == (2, f"error: {problem}\n"), result.output
    assert (run / "metrics.csv").read_text() == text.replace("\n1,", f"\n{epoch},", 1)  # left as it was
    result = invoke("runs", run, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["problems"] == [problem] and row["epochs"] == 1  # from summary.json
    result = invoke("plot", run)
    assert (result.exit_code, result.stderr) == (2, f"error: {problem}\n"), result.output


# ---------------------------------------------------------------- 4. edited checkpoint metadata


def edit_checkpoint(source: Path, target: Path, metadata=None, tensors=None) -> Path:
    from safetensors.numpy import load, save

    raw = source.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    meta, arrays = dict(header["__metadata__"]), load(raw)
    meta.update(metadata or {})
    arrays.update(tensors or {})
    target.write_bytes(save(arrays, metadata=meta))
    return target


def best(run: Path) -> Path:
    return run / "checkpoints" / "best.safetensors"


def data_of(run: Path) -> dict:
    raw = best(run).read_bytes()
    return json.loads(json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["data"])


def commands(checkpoint: Path, tmp_path: Path) -> list[tuple]:
    image = save_png(tmp_path / "x.png")
    return [("eval", checkpoint), ("predict", checkpoint, image), ("export", checkpoint, "--out", tmp_path / "m.onnx")]


def test_metadata_nested_too_deep_is_a_checkpoint_error(image_run, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    for key in ("config", "data"):
        checkpoint = edit_checkpoint(best(image_run), tmp_path / f"{key}.safetensors", {key: deep})
        for args in commands(checkpoint, tmp_path):
            result = invoke(*args)
            assert (result.exit_code, result.stderr) == (2, f"error: {checkpoint}: checkpoint metadata {key}: "
                                                             "expected JSON nested at most 64 levels deep, found "
                                                             "deeper nesting\n"), result.output


def test_normalization_of_the_wrong_shape_is_a_checkpoint_error(image_run, tmp_path):
    checkpoint = edit_checkpoint(best(image_run), tmp_path / "c.safetensors",
                                 tensors={"normalization/mean": np.zeros(5)})
    for args in commands(checkpoint, tmp_path):
        result = invoke(*args)
        assert (result.exit_code, result.stderr) == (
            2, f"error: {checkpoint}: checkpoint tensor normalization/mean: expected a shape that broadcasts to one "
               f"input (1, 8, 8), found (5,)\n"), result.output
    checkpoint = edit_checkpoint(best(image_run), tmp_path / "d.safetensors",
                                 tensors={"normalization/std": np.zeros((1, 1, 1))})
    result = invoke("eval", checkpoint)
    assert (result.exit_code, result.stderr) == (
        2, f"error: {checkpoint}: checkpoint tensor normalization/std: expected finite values above 0, found 0.0\n")


def test_class_names_shorter_than_the_classes_is_a_checkpoint_error(image_run, tmp_path):
    data = data_of(image_run)
    checkpoint = edit_checkpoint(best(image_run), tmp_path / "c.safetensors",
                                 {"data": json.dumps({**data, "class_names": ["cat"]})})
    for args in commands(checkpoint, tmp_path):
        result = invoke(*args)
        assert (result.exit_code, result.stderr) == (
            2, f"error: {checkpoint}: checkpoint metadata is damaged (data.class_names: expected a name for each of "
               f"the 2 classes (data.classes), found 1: ['cat'])\n"), result.output


def edit_onnx(source: Path, target: Path, data: dict) -> Path:
    """The exported model at `source` with its dltrain_data metadata replaced by `data`, saved as `target`."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "dltrain_data":
            prop.value = json.dumps(data)
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize("edit, problem", [
    ({"classes": 1, "class_names": ["cat"]},  # predict named the second output, a dog: IndexError
     "data.class_names: expected a name for each of the graph's 2 outputs, found 1 name"),
    ({"classes": 3, "class_names": ["cat", "dog", "bird"]},
     "data.class_names: expected a name for each of the graph's 2 outputs, found 3 names"),
    ({"classes": 3, "class_names": None}, "data.classes: expected the graph's output width 2, found 3"),
    ({"classes": 1, "class_names": ["cat", "dog"]}, "data.classes: expected the graph's output width 2, found 1"),
], ids=["fewer_names", "more_names", "more_classes", "fewer_classes"])
def test_onnx_metadata_whose_classes_do_not_fit_the_graphs_output_is_refused(image_run, tmp_path, edit, problem):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dltrain[onnx]')")
    exported = tmp_path / "m.onnx"
    result = invoke("export", image_run, "--out", exported)
    assert result.exit_code == 0, result.output
    model = edit_onnx(exported, tmp_path / "edited.onnx", {**data_of(image_run), **edit})
    image = save_png(tmp_path / "x.png", 110)  # the brightest of the dogs it trained on
    for args in (("predict", model, image), ("eval", model)):
        result = invoke(*args)
        assert (result.exit_code, result.stderr) == (
            2, f"error: {model}: metadata dltrain_data does not fit the graph ({problem})\n"), result.output
    result = invoke("predict", exported, image)  # the file as exported predicts
    assert result.exit_code == 0, result.output
    assert read_rows(result.stdout)[0]["prediction"] == "dog"


# ---------------------------------------------------------------- 5. cells a spreadsheet would run


def test_formula_cells_are_kept_unless_escape_formulas(table_run, tmp_path):
    table = tmp_path / "new.csv"
    table.write_text("x1,x2,note\n1,1,=HYPERLINK(\"http://x\")\n4,3,-1.5\n2,2,+2\n0,1,@SUM(A1)\n3,1,-abc\n1,2,ok\n"
                     "1,1,\"\t=1+1\"\n")
    notes = ["=HYPERLINK(\"http://x\")", "-1.5", "+2", "@SUM(A1)", "-abc", "ok", "\t=1+1"]
    result = invoke("predict", table_run, table)
    assert result.exit_code == 0, result.output
    assert [row["note"] for row in read_rows(result.stdout)] == notes
    result = invoke("predict", table_run, table, "--escape-formulas")
    assert result.exit_code == 0, result.output
    rows = read_rows(result.stdout)
    assert [row["note"] for row in rows] == ["'=HYPERLINK(\"http://x\")", "-1.5", "+2", "'@SUM(A1)", "'-abc", "ok",
                                             "'\t=1+1"]
    assert float(rows[0]["probability"]) > 0  # numbers stay numbers


def test_class_names_that_look_like_formulas_are_escaped(image_run, tmp_path):
    run = shutil.copytree(image_run, tmp_path / "run")
    data = data_of(run)
    edit_checkpoint(best(run), best(run), {"data": json.dumps({**data, "class_names": ["=1+2", "-3"]})})
    image = save_png(tmp_path / "x.png")
    for args, expected in (((), {"=1+2", "-3"}), (("--escape-formulas",), {"'=1+2", "-3"})):
        result = invoke("predict", run, image, "--top-k", "2", *args)
        assert result.exit_code == 0, result.output
        (row,) = read_rows(result.stdout)
        assert {row["prediction"], row["top2"]} == expected


# ---------------------------------------------------------------- 6. SIGTERM while writing


def wait_for(predicate, what: str, process: subprocess.Popen):
    deadline = time.monotonic() + 120  # a generous bound on a loaded machine; not a timing assertion
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the process ended ({process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after 120 s")
        time.sleep(0.05)


def terminate_when_the_temporary_exists(args: list, folder: Path, pattern: str) -> tuple[int, str]:
    """(exit code, stderr) of `python -m dltrain ARGS` sent SIGTERM once a file `pattern` is in `folder`."""
    process = subprocess.Popen([sys.executable, "-m", "dltrain", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: list(folder.glob(pattern)), f"temporary file {pattern}", process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stderr


def test_sigterm_during_predict_removes_its_temporary_and_exits_143(image_run, tmp_path):
    waiting = tmp_path / "wait.png"
    os.mkfifo(waiting)  # opening it blocks until a writer comes: predict waits there, its --out file begun
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    code, stderr = terminate_when_the_temporary_exists(["predict", image_run, waiting, "--out", out], out.parent,
                                                       ".p.csv.*.tmp")
    assert (code, stderr) == (143, f"interrupted (SIGTERM): nothing written to {out}\n")
    assert list(out.parent.iterdir()) == []


def test_sigterm_during_export_removes_its_temporary_and_exits_143(image_run, tmp_path):
    stuck = tmp_path / "stuck_disk.py"
    stuck.write_text("import os\nimport time\n\n\ndef _never_done(fd):\n    time.sleep(600)\n\n\n"
                     "os.fsync = _never_done  # export's write then waits for a disk that never answers\n")
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    code, stderr = terminate_when_the_temporary_exists(["export", image_run, "--out", out, "--code", stuck],
                                                       out.parent, ".m.onnx.*.tmp")
    assert (code, stderr) == (143, f"interrupted (SIGTERM): nothing written to {out}\n")
    assert list(out.parent.iterdir()) == []
