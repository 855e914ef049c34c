"""`dltrain predict` on text: text files and folders, CSV text columns, lines on standard input; equal to eval."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.config import config_from_dict
from dltrain.data.text import Tokenizer
from dltrain.training.checkpoint import load_checkpoint, resolve_checkpoint
from dltrain.training.model import build_for

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
POSITIVE = ["good", "great", "lovely", "fine", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring"]
FILLER = ["the", "film", "was", "a", "plot", "and", "very"]


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def read_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def sentences(rng, words, n):
    return [" ".join(rng.choice(words + FILLER, size=rng.integers(3, 8))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """train/ and test/ folders of one-line reviews (pos, neg), and the same reviews as CSV files."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("reviews")
    for split, n in (("train", 40), ("test", 12)):
        for name, words in (("neg", NEGATIVE), ("pos", POSITIVE)):
            folder = root / "folder" / split / name
            folder.mkdir(parents=True)
            for i, text in enumerate(sentences(rng, words, n)):
                (folder / f"{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return root


def train(tmp_path, data: dict, vocab_size: int | None = None) -> Path:
    embedding = {"units": 8, **({"vocab_size": vocab_size} if vocab_size else {})}
    config = tmp_path / "text.yaml"
    config.write_text(json.dumps({
        "seed": 0, "data": data,
        "model": [{"embedding": embedding}, {"gru": {"units": 8}}, {"linear": {"units": 2}}],
        "optimizer": {"name": "adam", "lr": 0.03}, "training": {"epochs": 4, "batch_size": 16}}))
    result = invoke("train", config, "--run-dir", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


@pytest.fixture(scope="module")
def folder_run(reviews, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:  # a value set before is restored, not wiped
        patch.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        return train(tmp, {"name": "text_folder", "path": str(reviews / "folder"), "text": {"max_length": 8}})


def eval_predictions(run: Path, split: str = "test") -> tuple[list[str], float]:
    """What `dltrain eval` computes on the run's own split: each prediction (by class name) and the accuracy."""
    ckpt = load_checkpoint(resolve_checkpoint(run))
    built = build_for(config_from_dict(ckpt.config, "t"), "cpu", ckpt)
    built.model.network.load_state_dict(ckpt.model)
    result = built.model.evaluate(getattr(built.splits, split), 64)
    return [ckpt.data["class_names"][i] for i in result.predictions], result.accuracy


def test_trained_with_a_word_tokenizer_stored_in_the_checkpoint(folder_run):
    ckpt = load_checkpoint(resolve_checkpoint(folder_run))
    text = ckpt.data["text"]
    assert text["tokenizer"] == "word" and ckpt.data["padding_id"] == 0
    assert ckpt.data["input_shape"] == [8] and ckpt.data["vocab_size"] == len(text["tokens"]) == text["vocab_size"]
    assert set(POSITIVE + NEGATIVE + FILLER + ["."]) == set(text["tokens"][2:])


def test_predict_on_text_files_equals_eval(folder_run, reviews):
    expected, accuracy = eval_predictions(folder_run)
    report = json.loads(invoke("eval", folder_run, "--json").stdout)
    assert report["accuracy"] == accuracy > 0.8
    result = invoke("predict", folder_run, reviews / "folder" / "test", "--probabilities")
    assert result.exit_code == 0, result.output
    rows = read_rows(result.stdout)
    assert list(rows[0]) == ["input", "prediction", "probability", "probability_neg", "probability_pos"]
    assert [r["prediction"] for r in rows] == expected
    truth = [Path(r["input"]).parent.name for r in rows]
    assert np.mean([p == t for p, t in zip(expected, truth)]) == report["accuracy"]
    one = read_rows(invoke("predict", folder_run, rows[3]["input"]).stdout)[0]  # alone: a batch of one
    assert (one["input"], one["prediction"]) == (rows[3]["input"], rows[3]["prediction"])
    assert float(one["probability"]) == pytest.approx(float(rows[3]["probability"]), rel=1e-6)


def test_predict_on_a_csv_and_on_standard_input_equals_eval(folder_run, reviews):
    expected, _ = eval_predictions(folder_run)
    files = sorted((reviews / "folder" / "test").rglob("*.txt"))
    texts = [f.read_text(encoding="utf-8").strip() for f in files]
    table = reviews / "new.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["note", "text"])
        writer.writerows([[f"n{i}", text] for i, text in enumerate(texts)])
    rows = read_rows(invoke("predict", folder_run, table).stdout)
    assert list(rows[0]) == ["input", "note", "prediction", "probability"]
    assert rows[0]["input"] == f"{table}:2" and rows[0]["note"] == "n0"
    assert [r["prediction"] for r in rows] == expected
    result = invoke("predict", folder_run, "-", "--format", "jsonl", input="\n".join(texts) + "\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prediction"] for line in lines] == expected
    assert lines[1]["input"] == "-:2" and lines[1]["text"] == texts[1]
    assert [line["probability"] for line in lines] == [float(r["probability"]) for r in rows]


def test_bad_texts_are_named_or_skipped(folder_run, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "a.txt").write_text("a good film")
    (folder / "b.txt").write_bytes(b"bad \xe9t\xe9")  # Latin-1, not UTF-8
    (folder / "c.txt").write_bytes(b"")
    result = invoke("predict", folder_run, folder)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {folder / 'b.txt'}: not UTF-8 text: byte 0xe9 at offset 4 (invalid continuation "
                             "byte); save it as UTF-8\n")
    result = invoke("predict", folder_run, folder, "--skip-bad")
    assert result.exit_code == 0
    assert [r["input"] for r in read_rows(result.stdout)] == [str(folder / "a.txt")]
    assert result.stderr.splitlines()[1:] == [f"skipped {folder / 'c.txt'}: empty text file (0 bytes)",
                                              "skipped 2 unreadable file(s)"]
    result = invoke("predict", folder_run, "-", input="good\n\n  \nbad\n")
    assert result.exit_code == 2 and result.stderr == "error: -:3: line holds only white space\n"
    result = invoke("predict", folder_run, "-", "--skip-bad", input="good\n\n  \nbad\n")
    assert [r["input"] for r in read_rows(result.stdout)] == ["-:1", "-:4"]
    assert result.stderr.splitlines() == ["skipped -:3: line holds only white space", "skipped 1 unreadable file(s)"]
    table = tmp_path / "t.csv"
    table.write_text("text,id\ngood fun,1\n,2\nNA,3\nbad,4\n")
    result = invoke("predict", folder_run, table)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {table}:3: text column 'text' has a missing value; data.missing: mean reads a "
                             "missing text as an empty one\n")
    result = invoke("predict", folder_run, table, "--skip-bad")
    assert [r["id"] for r in read_rows(result.stdout)] == ["1", "4"]


def test_an_image_model_is_not_given_standard_input(tmp_path):
    from dltrain.data.inputs import InputSet
    from dltrain.errors import DataError

    with pytest.raises(DataError, match=r"^-: standard input gives lines of text, but this model was not trained on "
                                        r"text$"):
        InputSet([Path("-")], (1, 28, 28), None, None)


def test_csv_text_columns_train_and_predict_equal_to_eval(tmp_path, monkeypatch):
    """Two text columns and a category read as words; the embedding's vocab_size taken from the data."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)

    def write(path, n):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "title", "review", "genre", "label"])
            for i in range(n):
                label = ["neg", "pos"][i % 2]
                words = POSITIVE if label == "pos" else NEGATIVE
                writer.writerow([i, sentences(rng, words, 1)[0], sentences(rng, FILLER, 1)[0],
                                 rng.choice(["drama", "comedy"]), label])
        return path

    train_csv, test_csv = write(tmp_path / "train.csv", 60), write(tmp_path / "test.csv", 16)
    run = train(tmp_path, {"name": "csv", "path": str(train_csv), "test_path": str(test_csv), "ignore_columns": ["id"],
                           "text_columns": ["title", "review", "genre"], "text": {"max_length": 6}})
    ckpt = load_checkpoint(resolve_checkpoint(run))
    assert ckpt.data["input_shape"] == [21] and ckpt.data["text"]["columns"] == ["title", "review", "genre"]
    expected, accuracy = eval_predictions(run)
    rows = read_rows(invoke("predict", run, test_csv).stdout)
    assert list(rows[0]) == ["input", "id", "prediction", "label", "probability"]
    assert [r["prediction"] for r in rows] == expected
    result = invoke("predict", run, "-", input="good\n")
    assert result.exit_code == 2
    assert result.stderr == ("error: -: this model reads 3 text columns (title, review, genre); give a CSV file with "
                             "those columns\n")


def test_eval_tokenizes_with_the_stored_tokenizer(folder_run, tmp_path, monkeypatch):
    """An empty cache and a tokenizer that may not be fitted: eval still answers, with the checkpoint's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))

    def no_fitting(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(Tokenizer, "fit", no_fitting)
    expected, _ = eval_predictions(folder_run)
    assert len(expected) == 24


def test_an_empty_line_on_standard_input_is_skipped(folder_run):
    result = invoke("predict", folder_run, "-", input="good film\n\nbad plot\r\n\n")
    assert result.exit_code == 0 and result.stderr == ""
    assert [(r["input"], r["text"]) for r in read_rows(result.stdout)] == [("-:1", "good film"), ("-:3", "bad plot")]


def test_predict_reads_a_text_file_only_as_far_as_the_model_s_tokens(folder_run, tmp_path, monkeypatch):
    """A 10 MB file: its first max_length (8) tokens, a block's read; a file whose first tokens lie beyond the
    checkpoint's max_bytes (4 MiB) is refused, or with --skip-bad skipped."""
    from dltrain.data import text

    big, huge = tmp_path / "big.txt", tmp_path / "huge.txt"
    big.write_bytes(b"good film " * 1_000_000)
    huge.write_bytes(b"x" * (text.DEFAULT_MAX_BYTES + 10))
    reads = []
    real = text._read
    monkeypatch.setattr(text, "_read", lambda fd, size: reads.append(len(data := real(fd, size))) or data)
    result = invoke("predict", folder_run, big)
    assert result.exit_code == 0 and read_rows(result.stdout)[0]["input"] == str(big)
    assert sum(reads) <= 2 * text.BLOCK
    message = (f"{huge}: text file of {text.DEFAULT_MAX_BYTES + 10} bytes whose first 8 tokens do not end within its "
               f"first {text.DEFAULT_MAX_BYTES} bytes (data.text.max_bytes); raise data.text.max_bytes or lower "
               "data.text.max_length")
    result = invoke("predict", folder_run, huge)
    assert result.exit_code == 2 and result.stderr == f"error: {message}\n"
    result = invoke("predict", folder_run, big, huge, "--skip-bad")
    assert result.exit_code == 0 and [r["input"] for r in read_rows(result.stdout)] == [str(big)]
    assert result.stderr.splitlines() == [f"skipped {message}", "skipped 1 unreadable file(s)"]


def test_a_damaged_stored_tokenizer_names_the_checkpoint_file(folder_run, tmp_path):
    """What load_checkpoint lets through (Hugging Face's JSON is read when used): named by the checkpoint's path."""
    tokenizers = pytest.importorskip("tokenizers")
    from safetensors.numpy import load, save

    from dltrain.training.checkpoint import _metadata

    raw = resolve_checkpoint(folder_run).read_bytes()
    metadata = _metadata(raw)
    data = json.loads(metadata["data"])
    data["text"] = {**data["text"], "tokenizer": "bpe", "huggingface": "not json"}
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(save(load(raw), metadata={**metadata, "data": json.dumps(data)}))
    try:
        tokenizers.Tokenizer.from_str("not json")
    except Exception as exc:  # noqa: BLE001 (Hugging Face's own)
        reason = str(exc)
    result = invoke("predict", damaged, "-", input="good\n")
    assert result.exit_code == 2
    assert result.stderr == f"error: {damaged}: its data.text.huggingface is not a tokenizer ({reason})\n"
