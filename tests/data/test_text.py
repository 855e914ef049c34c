"""Text data: tokenizers fitted on the training split, text folders, CSV text columns, the token cache, word lists."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.data import prepare, text
from dltrain.data.datasets import WORDLISTS, csv, text_folder, wordlists
from dltrain.data.text import Texts, Tokenizer, normalized, read_text_file, word_tokens
from dltrain.errors import CheckpointError, DataError
from dltrain.training.checkpoint import data_problem

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def options(**given):
    return text.text_options(given)


def texts(*rows):
    return Texts([(r,) if isinstance(r, str) else r for r in rows], [f"t:{i}" for i in range(len(rows))], False)


def write_folder(root: Path, classes: dict) -> Path:
    """classes: {name: [text, ...]} -> root/name/000.txt ..."""
    for name, items in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(items):
            (root / name / f"{i:03d}.txt").write_text(item, encoding="utf-8")
    return root


# ---------------------------------------------------------------- tokenizers on hand-computed examples


def test_char_tokenizer_counts_orders_truncates_and_pads():
    tokenizer = Tokenizer.fit(texts("abca", "bb  c\t\n"), options(tokenizer="char", max_length=4))
    # white space runs become one space and the ends are stripped: "bb c"; counts b 3, a 2, c 2, ' ' 1
    assert tokenizer.tokens == ["<pad>", "<unk>", "b", "a", "c", " "]
    assert tokenizer.vocab_size == 6
    ids = tokenizer.encode([("cab!a",), ("a!",), ("",)])
    assert ids.dtype == np.int32 and ids.tolist() == [[4, 3, 2, 1], [3, 1, 0, 0], [0, 0, 0, 0]]


def test_word_splitting_rule():
    """Runs of word characters (\\w and combining marks) and single other characters; white space dropped."""
    sentence = "Don't stop—now: e\u0301te\u0301 3.14 foo_bar 🙂!! हिन्दी"
    assert word_tokens(normalized(sentence, lowercase=True)) == [
        "don", "'", "t", "stop", "—", "now", ":", "été", "3", ".", "14", "foo_bar", "🙂", "!", "!", "हिन्दी"]
    assert word_tokens(normalized("Ünïcode NFD: U\u0308ber", lowercase=False)) == ["Ünïcode", "NFD", ":", "Über"]


def test_word_tokenizer_lowercases_by_default_and_maps_unseen_words_to_unknown():
    tokenizer = Tokenizer.fit(texts("The cat. THE dog!", "the end"), options(max_length=6))
    assert tokenizer.tokens == ["<pad>", "<unk>", "the", "!", ".", "cat", "dog", "end"]
    assert tokenizer.encode([("The bird!",)]).tolist() == [[2, 1, 3, 0, 0, 0]]
    cased = Tokenizer.fit(texts("The the"), options(lowercase=False, max_length=2))
    assert cased.tokens == ["<pad>", "<unk>", "The", "the"]


def test_min_count_and_max_vocab_with_ties_broken_by_code_point():
    corpus = texts("b a c b a d", "é")
    assert Tokenizer.fit(corpus, options(min_count=2)).tokens == ["<pad>", "<unk>", "a", "b"]
    assert Tokenizer.fit(corpus, options(max_vocab=3)).tokens == ["<pad>", "<unk>", "a"]
    assert Tokenizer.fit(corpus, options(max_vocab=5)).tokens == ["<pad>", "<unk>", "a", "b", "c"]
    assert Tokenizer.fit(corpus, options()).tokens[-3:] == ["c", "d", "é"]  # 'é' (U+00E9) after 'd'


def test_a_vocabulary_with_nothing_in_it_is_refused():
    corpus = Texts([("a b",), ("c",)], ["x", "y"], False, source="reviews.csv")
    with pytest.raises(DataError) as info:
        Tokenizer.fit(corpus, options(min_count=2))
    assert str(info.value) == ("reviews.csv: no token occurs at least 2 time(s) in the 2 training text(s), so the "
                               "vocabulary is empty; lower data.text.min_count")


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_subword_tokenizers_reserve_padding_and_unknown_and_round_trip_through_the_state(kind):
    corpus = texts(*["the cat sat on the mat", "the dog ate the cat food", "cats and dogs sat"] * 3)
    tokenizer = Tokenizer.fit(corpus, options(tokenizer=kind, max_vocab=60, max_length=12))
    state = json.loads(json.dumps(tokenizer.state()))  # what the checkpoint holds
    assert state["tokenizer"] == kind and state["vocab_size"] == tokenizer.vocab_size <= 60
    again = Tokenizer.from_state(state)
    rows = [("The cats sat on the mat!",), ("zebra",), ("",)]
    ids = again.encode(rows)
    np.testing.assert_array_equal(ids, tokenizer.encode(rows))
    assert again._hf.id_to_token(0) == "<pad>" and again._hf.id_to_token(1) == "<unk>"
    assert (ids[0] > 1).sum() >= 5 and ids[2].tolist() == [0] * 12  # known pieces; an empty text is all padding
    assert 1 in ids[1]  # 'z' and 'b' were never seen: unknown
    assert ids.max() < tokenizer.vocab_size
    info = {"input_shape": [12], "classes": 2, "padding_id": 0, "vocab_size": tokenizer.vocab_size, "text": state}
    assert data_problem(info) is None
    assert "data.padding_id and data.vocab_size" in data_problem({**info, "vocab_size": 3})


def test_a_damaged_tokenizer_state_is_a_checkpoint_error():
    state = Tokenizer.fit(texts("a b"), options()).state()
    with pytest.raises(CheckpointError, match=r"m.safetensors: its data.text is damaged \(tokens should begin with"):
        Tokenizer.from_state({**state, "tokens": ["a", "b", "<pad>"], "vocab_size": 3}, "m.safetensors")
    assert "max_length should be a positive integer" in data_problem(
        {"input_shape": [4], "padding_id": 0, "vocab_size": 4, "text": {**state, "max_length": 0}})


def test_missing_huggingface_tokenizers_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers":
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(DataError) as info:
        Tokenizer.fit(texts("a b"), options(tokenizer="bpe"))
    assert str(info.value) == ("the bpe and wordpiece tokenizers need Hugging Face tokenizers: "
                               "pip install 'dltrain[text]'")


# ---------------------------------------------------------------- text_folder


def review_folder(root: Path) -> Path:
    return write_folder(root, {
        "pos": ["good film", "great good", "good fun", "lovely great", "fine good", "great fine", "good", "great"],
        "neg": ["bad film", "awful bad", "bad bad", "poor awful", "dull bad", "awful", "bad", "poor dull"],
    })


def test_text_folder_with_drawn_splits_fits_on_the_training_split(tmp_path):
    root = review_folder(tmp_path / "reviews")
    data = {"name": "text_folder", "path": str(root), "val_fraction": 0.25, "test_fraction": 0.25,
            "text": {"max_length": 3}}
    splits = prepare(data, "classification", 0, "cpu")
    assert splits.class_names == ["neg", "pos"] and splits.input_shape == (3,)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 4)
    assert splits.padding_id == 0 and splits.vocab_size == len(splits.text["tokens"])
    # the vocabulary is the training split's: refitting on exactly the training files gives it again
    raw = text_folder(path=str(root), rng=np.random.default_rng([0, 1]), test_fraction=0.25)
    from dltrain.data.rows import stratified_split

    train_rows, _ = stratified_split(raw.y_train, 0.25, np.random.default_rng([0, 2]), True)
    alone = Tokenizer.fit(raw.x_train.take(train_rows), options(max_length=3))
    assert splits.text["tokens"] == alone.tokens
    x = splits.train.x[np.arange(8)]
    assert x.dtype == np.float32 and np.array_equal(x, np.rint(x)) and x.max() < splits.vocab_size
    assert prepare(data, "classification", 0, "cpu").text == splits.text  # the seed decides


def test_text_folder_with_given_splits_and_a_word_only_in_test_is_unknown(tmp_path):
    root = tmp_path / "given"
    write_folder(root / "train", {"a": ["apple apple", "apple"], "b": ["banana", "banana banana"]})
    write_folder(root / "val", {"a": ["apple"], "b": ["banana"]})
    write_folder(root / "test", {"a": ["cherry apple"], "b": ["banana"]})
    splits = prepare({"name": "text_folder", "path": str(root), "text": {"max_length": 2}}, "classification", 0,
                     "cpu")
    assert splits.text["tokens"] == ["<pad>", "<unk>", "apple", "banana"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 2)
    assert splits.test.x[np.arange(2)].tolist() == [[1, 2], [3, 0]]  # cherry: only in test, unknown
    write_folder(root / "test", {"c": ["cherry"]})
    with pytest.raises(DataError, match=r"test: class folder\(s\) c are not among the training classes \(a, b\)"):
        prepare({"name": "text_folder", "path": str(root)}, "classification", 0, "cpu")


def test_hidden_files_are_left_out_and_an_empty_class_folder_is_named(tmp_path):
    root = write_folder(tmp_path / "t", {"a": ["x y"], "b": ["z"]})
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x01")
    assert len(text_folder(path=str(root), rng=None).x_train) == 2
    (root / "c").mkdir()
    with pytest.raises(DataError) as info:
        text_folder(path=str(root), rng=None)
    assert str(info.value) == f"{root / 'c'}: empty class folder (no files)"


@pytest.mark.parametrize("content, message", [
    (b"", "{path}: empty text file (0 bytes)"),
    (b"\xef\xbb\xbf", "{path}: empty text file (0 bytes)"),
    (b" \n\t", "{path}: text file holds only white space"),
    (b"caf\xc3\xa9 ok \xff more", "{path}: not UTF-8 text: byte 0xff at offset 9 (invalid start byte); save it as "
                                  "UTF-8"),
    (b"\xef\xbb\xbfab\xc3", "{path}: not UTF-8 text: byte 0xc3 at offset 5 (unexpected end of data); save it as "
                            "UTF-8"),
])
def test_bad_text_files_are_named_with_what_is_wrong(tmp_path, content, message):
    root = write_folder(tmp_path / "t", {"a": ["fine"], "b": ["also fine"]})
    bad = root / "b" / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(DataError) as info:
        prepare({"name": "text_folder", "path": str(root), "val_fraction": 0}, "classification", 0, "cpu")
    assert str(info.value) == message.format(path=bad)
    result = invoke("train", _config(tmp_path, {"name": "text_folder", "path": str(root), "val_fraction": 0}),
                    "--run-dir", tmp_path / "run")
    assert result.exit_code == 2 and result.stderr == f"error: {message.format(path=bad)}\n"
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # nothing half-written


def test_a_byte_order_mark_is_dropped():
    path = Path(os.devnull)
    assert text.decode_text(b"\xef\xbb\xbfhi", str(path)) == "hi"


def _config(tmp_path, data: dict, vocab_size: int = 50, **training) -> Path:
    path = tmp_path / "text.yaml"
    path.write_text(json.dumps({
        "seed": 0, "data": data,
        "model": [{"embedding": {"vocab_size": vocab_size, "units": 8}}, {"gru": {"units": 8}},
                  {"linear": {"units": 2}}],
        "optimizer": {"name": "adam", "lr": 0.03}, "training": {"epochs": 2, "batch_size": 4, **training}}))
    return path


@pytest.mark.parametrize("given, message", [
    ({"max_length": 0}, "data.text.max_length: expected an integer in (0, 1000000], got 0"),
    ({"min_count": 0}, "data.text.min_count: expected a positive integer, got 0"),
    ({"tokenizer": "sentencepiece"}, "data.text.tokenizer: expected one of 'char', 'word', 'bpe', 'wordpiece', got "
                                     "'sentencepiece'"),
    ({"max_lenght": 3}, "data.text.max_lenght: unknown key 'max_lenght' for data.text (did you mean "
                        "'max_length'?); allowed: tokenizer, max_length, max_vocab, min_count, lowercase, max_bytes"),
    (5, "data.text: expected a mapping of data.text options, got 5"),
])
def test_text_options_are_validated_with_their_key_paths(tmp_path, given, message):
    config = _config(tmp_path, {"name": "text_folder", "path": str(tmp_path), "text": given})
    for command in ("check", "train"):
        result = invoke(command, config)
        assert result.exit_code == 2
        assert result.stderr == f"error: {config}:1: {message}\n"  # a JSON config is one line


def test_text_is_never_standardized(tmp_path):
    root = review_folder(tmp_path / "reviews")
    with pytest.raises(DataError, match=r"data.normalize: 'global' standardizes the inputs, but text becomes token "
                                        r"ids, which are never standardized; set data.normalize: none \(or auto\)"):
        prepare({"name": "text_folder", "path": str(root), "normalize": "global"}, "classification", 0, "cpu")
    splits = prepare({"name": "text_folder", "path": str(root), "normalize": "none"}, "classification", 0, "cpu")
    assert splits.normalization["mean"].tolist() == [0.0] and splits.normalization["std"].tolist() == [1.0]


# ---------------------------------------------------------------- the cache


def test_a_second_run_tokenizes_nothing_and_a_changed_file_is_tokenized_again(tmp_path, monkeypatch):
    root = review_folder(tmp_path / "reviews")
    data = {"name": "text_folder", "path": str(root), "val_fraction": 0.25}
    calls = {"fit": 0, "encode": 0}
    fit, encode = Tokenizer.fit.__func__, Tokenizer.encode

    def counting_fit(cls, *args, **kwargs):
        calls["fit"] += 1
        return fit(cls, *args, **kwargs)

    def counting_encode(self, rows):
        calls["encode"] += 1
        return encode(self, rows)

    monkeypatch.setattr(Tokenizer, "fit", classmethod(counting_fit))
    monkeypatch.setattr(Tokenizer, "encode", counting_encode)
    first = prepare(data, "classification", 0, "cpu")
    assert calls == {"fit": 1, "encode": 2}  # train and val
    folder = tmp_path / "cache" / "dltrain" / "text"
    cached = sorted(p.suffix for p in folder.iterdir() if not p.name.startswith("."))  # not the lock files
    assert cached == [".json", ".npy", ".npy"]
    second = prepare(data, "classification", 0, "cpu")
    assert calls == {"fit": 1, "encode": 2}
    assert isinstance(second.train.x.rows.pixels, np.memmap)  # read memory-mapped, batch by batch
    np.testing.assert_array_equal(second.train.x[np.arange(12)], first.train.x[np.arange(12)])
    # evaluating a checkpoint: its stored tokenizer, never a new fit, and the same cached ids
    third = prepare(data, "classification", 0, "cpu", stats=first.normalization, text=first.text)
    assert calls == {"fit": 1, "encode": 2} and third.text == first.text
    for changed in (root / "pos").iterdir():  # some in train, some in val
        changed.write_text("good good good")
        os.utime(changed, ns=(1, 1))
    prepare(data, "classification", 0, "cpu")
    assert calls == {"fit": 2, "encode": 4}


# ---------------------------------------------------------------- CSV text columns


def write_reviews(path: Path, rows: list[tuple]) -> Path:
    import csv as csv_module

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv_module.writer(f)
        writer.writerow(["id", "title", "review", "label"])
        writer.writerows(rows)
    return path


def test_csv_text_columns_follow_their_markers(tmp_path):
    path = write_reviews(tmp_path / "r.csv", [(1, "Great", "good good film", "pos"), (2, "Meh", "bad film", "neg")])
    data = {"name": "csv", "path": str(path), "ignore_columns": ["id"], "text_columns": ["title", "review"],
            "val_fraction": 0, "text": {"max_length": 2}}
    splits = prepare(data, "classification", 0, "cpu")
    tokens = splits.text["tokens"]
    assert tokens[:4] == ["<pad>", "<unk>", "[column:title]", "[column:review]"]
    # counted within max_length 2 of each column (what the model sees): good 2; bad, film, great, meh 1
    assert tokens[4:] == ["good", "bad", "film", "great", "meh"]
    assert splits.input_shape == (6,)  # 2 columns x (marker + max_length 2)
    assert splits.train.x[np.arange(2)].tolist() == [[2, 7, 3, 4, 4, 0], [2, 8, 3, 5, 6, 0]]
    assert splits.class_names == ["neg", "pos"] and splits.text["columns"] == ["title", "review"]
    one = prepare({**data, "text_columns": ["review"], "ignore_columns": ["id", "title"]}, "classification", 0, "cpu")
    assert one.input_shape == (2,) and one.text["tokens"][:3] == ["<pad>", "<unk>", "good"]


def test_csv_columns_beside_the_text_columns_are_refused_with_what_to_do(tmp_path):
    path = write_reviews(tmp_path / "r.csv", [(1, "Great", "good", "pos"), (2, "Meh", "bad", "neg")])
    with pytest.raises(DataError) as info:
        csv(path=str(path), rng=None, text_columns=["review"])
    assert str(info.value) == (
        f"{path}:1: column(s) 'id', 'title' beside data.text_columns: a text model's input is one sequence of token "
        "ids, which cannot hold numbers or one-hot categories; list them in data.text_columns (their values then read "
        "as words: a category, a rating) or in data.ignore_columns")
    with pytest.raises(DataError, match=r"r.csv:1: data.text_columns names 'body', not among the feature columns; "
                                        r"columns: title, review"):
        csv(path=str(path), rng=None, ignore_columns=["id"], text_columns=["body"])


def test_a_missing_text_is_an_error_or_with_missing_mean_an_empty_text(tmp_path):
    path = write_reviews(tmp_path / "r.csv", [(1, "Great", "good", "pos"), (2, "Meh", "NA", "neg")])
    with pytest.raises(DataError) as info:
        csv(path=str(path), rng=None, ignore_columns=["id"], text_columns=["title", "review"])
    assert str(info.value) == (f"{path}:3: text column 'review' has a missing value; data.missing: mean reads a "
                               "missing text as an empty one")
    raw = csv(path=str(path), rng=None, ignore_columns=["id"], text_columns=["title", "review"], missing="mean")
    assert raw.x_train.rows == [("Great", "good"), ("Meh", "")]


# ---------------------------------------------------------------- the wordlists data set

needs_wordlists = pytest.mark.skipif(
    not all((Path("/usr/share/dict") / WORDLISTS[lang][0]).is_file() for lang in ("english", "spanish", "italian")),
    reason="Debian word lists not installed (apt-get install wamerican wspanish witalian)")


@needs_wordlists
def test_wordlists_draws_unambiguous_words_by_the_seed():
    def load(seed):
        return wordlists(rng=np.random.default_rng(seed), languages=["english", "spanish", "italian"],
                         words_per_language=300, min_length=4, test_fraction=0.2)

    raw = load(0)
    assert raw.class_names == ["english", "spanish", "italian"] and raw.classes == 3
    assert np.bincount(raw.y_train).tolist() == [240] * 3 and np.bincount(raw.y_test).tolist() == [60] * 3
    words = [row[0] for row in raw.x_train.rows + raw.x_test.rows]
    labels = np.concatenate([raw.y_train, raw.y_test])
    lowered = {}
    for word, label in zip(words, labels):
        assert word.isalpha() and len(word) >= 4
        lowered.setdefault(word.lower(), set()).add(int(label))
    assert all(len(found) == 1 for found in lowered.values())
    lists = {lang: {w.lower() for w in Path("/usr/share/dict", WORDLISTS[lang][0]).read_text().split()}
             for lang in ("english", "spanish", "italian")}
    assert not any(word.lower() in lists["spanish"] for word, label in zip(words, labels) if label == 0)
    assert load(0).x_train.rows == raw.x_train.rows and load(1).x_train.rows != raw.x_train.rows
    assert raw.text_options["tokenizer"] == "char" and raw.text_options["lowercase"] is False


@needs_wordlists
def test_wordlists_prepared_with_the_char_tokenizer():
    splits = prepare({"name": "wordlists", "languages": ["english", "italian"], "words_per_language": 100,
                      "val_fraction": 0.1}, "classification", 0, "cpu")
    assert splits.input_shape == (24,) and splits.text["tokenizer"] == "char"
    assert all(len(token) == 1 for token in splits.text["tokens"][2:])


def test_a_missing_word_list_names_the_debian_package(tmp_path):
    (tmp_path / "american-english").write_text("house\ncat\n")
    with pytest.raises(DataError) as info:
        wordlists(path=str(tmp_path), rng=np.random.default_rng(0), languages=["english", "german"])
    assert str(info.value) == (f"{tmp_path / 'ngerman'}: the german word list is not installed (Debian, Ubuntu: "
                               "apt-get install wngerman); or leave german out of data.languages")


def test_wordlists_leave_out_words_of_two_languages(tmp_path):
    (tmp_path / "american-english").write_text("Hand\nhouse\ncat's\nwater\n")
    (tmp_path / "ngerman").write_text("hand\nHaus\nWasser\n")
    raw = wordlists(path=str(tmp_path), rng=np.random.default_rng(0), languages=["english", "german"],
                    test_fraction=0)
    assert sorted(row[0] for row in raw.x_train.rows) == ["Haus", "Wasser", "house", "water"]


def test_fortunes_to_folder(tmp_path):
    import importlib.util

    if not Path("/usr/share/games/fortunes/de").is_dir():
        pytest.skip("fortune cookies not installed (apt-get install fortunes fortunes-de fortunes-es fortunes-it)")
    spec = importlib.util.spec_from_file_location("fortunes_to_folder", Path(__file__).parents[2] / "benchmarks" /
                                                  "fortunes_to_folder.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path / "f"), "--per-language", "20"]) == 0
    for split, n in (("train", 16), ("val", 2), ("test", 2)):
        for language in ("de", "en", "es", "it"):
            files = sorted((tmp_path / "f" / split / language).iterdir())
            assert len(files) == n and read_text_file(files[0]).strip()


# ---------------------------------------------------------------- review fixes: deterministic fits, the cache's lock


def random_corpus(seed: int = 0, n_texts: int = 120) -> Texts:
    """Words of random letters (with a few non-ASCII ones): many equally frequent pairs, ties for a trainer."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyzéüß")
    words = ["".join(rng.choice(letters, size=rng.integers(1, 10))) for _ in range(400)]
    return texts(*(" ".join(rng.choice(words, size=20)) for _ in range(n_texts)))


FIT_IN_A_CHILD = """
import json, sys
from dltrain.data.text import Tokenizer, Texts, text_options
rows, given = json.loads(sys.stdin.read())
tokenizer = Tokenizer.fit(Texts([tuple(r) for r in rows], [str(i) for i in range(len(rows))], False),
                          text_options(given))
sys.stdout.write(json.dumps(tokenizer.state()))
"""


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
@pytest.mark.parametrize("max_vocab", [30, 300])  # 30: the alphabet is cut among equally frequent characters
def test_subword_fits_give_byte_identical_states_in_one_process_and_another(kind, max_vocab):
    """Hugging Face's WordPiece trainer alone gave a different vocabulary (different tokens, not only ids) on each
    fit of the same texts."""
    import subprocess
    import sys

    corpus = random_corpus()
    given = {"tokenizer": kind, "max_vocab": max_vocab, "min_count": 2}
    states = {json.dumps(Tokenizer.fit(corpus, options(**given)).state()) for _ in range(4)}
    assert len(states) == 1
    child = subprocess.run([sys.executable, "-c", FIT_IN_A_CHILD], input=json.dumps([corpus.rows, given]),
                           capture_output=True, text=True, check=True)
    assert child.stdout == states.pop()
    assert json.loads(child.stdout)["vocab_size"] <= max_vocab


def test_a_wordpiece_vocabulary_is_numbered_reserved_first_then_in_code_point_order():
    corpus = Texts([(t, t.upper()) for t in ["the cat sat", "a cat ate", "the hat"]], ["a", "b", "c"], False,
                   ["title", "body"])
    tokenizer = Tokenizer.fit(corpus, options(tokenizer="wordpiece", max_vocab=40, lowercase=False))
    vocabulary = sorted(tokenizer._hf.get_vocab().items(), key=lambda item: item[1])
    tokens = [token for token, _ in vocabulary]
    assert tokens[:4] == ["<pad>", "<unk>", "[column:title]", "[column:body]"]
    assert tokens[4:] == sorted(tokens[4:]) and "##a" in tokens and "cat" in tokens
    assert [i for _, i in vocabulary] == list(range(len(tokens))) and len(tokens) <= 40


LOCKED_FIT = """
import hashlib, json, sys, time
from pathlib import Path
from dltrain.data import text
fit = text.Tokenizer.fit.__func__
fits = []

def slow_fit(cls, *args, **kwargs):
    fits.append(1)
    time.sleep(1.5)  # the other process starts meanwhile and finds no cache file yet
    return fit(cls, *args, **kwargs)

text.Tokenizer.fit = classmethod(slow_fit)
rows = [("the cat sat on the mat",), ("a dog and a cat",), ("the end",)]
tokenizer = text.fitted(text.Texts(rows, ["1", "2", "3"], False), text.text_options({"tokenizer": "wordpiece"}),
                        "error", Path(sys.argv[1]))
print(json.dumps({"fits": len(fits), "state": hashlib.sha256(json.dumps(tokenizer.state()).encode()).hexdigest()}))
"""


def test_two_processes_fitting_at_once_end_with_one_state_fitted_once(tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "cache" / "text"
    children = [subprocess.Popen([sys.executable, "-c", LOCKED_FIT, str(cache)], stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    results = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert sorted(r["fits"] for r in results) == [0, 1]  # one fitted, the other waited for it and read its file
    assert results[0]["state"] == results[1]["state"]
    assert [p.suffix for p in cache.iterdir() if not p.name.startswith(".")] == [".json"]


# ---------------------------------------------------------------- review fixes: reading no more than needed


def spy_reads(monkeypatch) -> list[int]:
    """The bytes of each read of a text file."""
    reads = []
    real = text._read

    def counting(fd, size):
        data = real(fd, size)
        reads.append(len(data))
        return data

    monkeypatch.setattr(text, "_read", counting)
    return reads


def test_a_text_file_is_read_only_as_far_as_its_first_max_length_tokens(tmp_path, monkeypatch):
    big = tmp_path / "t" / "a" / "big.txt"
    write_folder(tmp_path / "t", {"a": ["a small one"], "b": ["another small one"]})
    big.write_bytes(b"word " * 2_000_000)  # 10 MB
    reads = spy_reads(monkeypatch)
    head = text.Head("word", 10, True)
    assert word_tokens(read_text_file(big, head)) == ["word"] * (len(read_text_file(big, head)) // 5)
    assert 10 < len(word_tokens(read_text_file(big, head))) and sum(reads) <= 3 * text.BLOCK
    reads.clear()
    splits = prepare({"name": "text_folder", "path": str(tmp_path / "t"), "val_fraction": 0,
                      "text": {"max_length": 10}}, "classification", 0, "cpu")  # fit, then the cached ids
    assert splits.text["tokens"][2] == "word" and len(splits.text["tokens"]) == 7  # word ×10, a, another, one, small
    assert 0 < sum(reads) <= 2 * (text.BLOCK + 100)  # the big file twice (fit, ids), a block each; the small ones
    assert splits.train.x[np.arange(3)].tolist()[1] == [2] * 10  # a/000.txt, a/big.txt, b/000.txt


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 64])
@pytest.mark.parametrize("kind", ["char", "word"])
def test_blocks_cut_inside_a_word_or_a_utf8_sequence_give_the_whole_text_s_tokens(tmp_path, monkeypatch, block, kind):
    content = ("Don't  stop—now:\r\ne\u0301te\u0301 ΟΔΟΣ 🙂 हिन्दी\u2003x\u0301\u0327 ΑΣ\u0301 "
               "Ünïcode U\u0308ber " * 3)
    path = tmp_path / "t.txt"
    path.write_bytes(codecs_bom() + content.encode())
    monkeypatch.setattr(text, "BLOCK", block)
    for max_length in (1, 2, 5, 9, 30, 500):
        head = text.Head(kind, max_length, True)
        whole = head.pieces(content)
        assert head.pieces(read_text_file(path, head))[:max_length] == whole[:max_length]
        assert head.pieces(content)[:max_length] == (char_tokens_of(content) if kind == "char" else word_tokens(
            normalized(content, True)))[:max_length]  # segment by segment: the whole text's tokens


def codecs_bom() -> bytes:
    return b"\xef\xbb\xbf"


def char_tokens_of(content: str) -> list[str]:
    return text.char_tokens(normalized(content, True))


def test_segments_of_a_long_text_give_its_tokens(monkeypatch):
    monkeypatch.setattr(text, "SEGMENT", 4)
    content = "aaaaaaaaaa  Σ\u0301b c\u0301\n\n  ΑΣ dd"
    for kind, split in (("char", char_tokens_of), ("word", lambda t: word_tokens(normalized(t, True)))):
        assert text.Head(kind, 1000, True).pieces(content) == split(content)
    assert "".join(text.segments(content, 4)) == content


def test_white_space_is_a_safe_place_to_cut():
    """What reading and splitting a segment at a time rests on: NFC and str.lower never reach across a white-space
    character (checked against the Unicode tables of this Python)."""
    import sys
    import unicodedata

    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u0903", "\u093f", "\u20dd", "\u3099"]
    for space in spaces:
        assert unicodedata.normalize("NFC", space).isspace() and space.lower() == space
        for mark in marks:
            both = unicodedata.normalize("NFC", space + mark)
            assert both == unicodedata.normalize("NFC", space) + unicodedata.normalize("NFC", mark)
        for before, after in (("ΑΣ", "Β"), ("ΑΣ'", "'Β"), ("Α", "Σ")):
            assert (before + space + after).lower() == (before + space).lower() + after.lower()


def test_the_vocabulary_counts_only_the_tokens_the_model_sees():
    corpus = texts("a b c z z z z", "a b d")
    assert Tokenizer.fit(corpus, options(max_length=3)).tokens == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert Tokenizer.fit(corpus, options(max_length=7)).tokens[2] == "z"


def test_a_text_file_whose_first_tokens_lie_beyond_max_bytes_is_refused(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "t", {"a": ["fine"], "b": ["also fine"]})
    long = root / "b" / "long.txt"
    long.write_bytes(b"x" * 5000 + b" y")  # one token in its first 1,000 bytes, and no white space to end it
    small = {"name": "text_folder", "path": str(root), "val_fraction": 0, "text": {"max_bytes": 1000}}
    message = (f"{long}: text file of 5002 bytes whose first 256 tokens do not end within its first 1000 bytes "
               "(data.text.max_bytes); raise data.text.max_bytes or lower data.text.max_length")
    reads = spy_reads(monkeypatch)
    with pytest.raises(DataError) as info:
        prepare(small, "classification", 0, "cpu")
    assert str(info.value) == message and sum(reads) <= 1000 + 1 + len("fine") + len("also fine")
    assert read_text_file(long, text.Head("word", 256, True, 6000)).endswith(" y")  # within a larger max_bytes
    assert read_text_file(root / "a" / "000.txt", text.Head("word", 256, True, 4)) == "fine"  # all of it: no more
    result = invoke("train", _config(tmp_path, small), "--run-dir", tmp_path / "run")
    assert result.exit_code == 2 and result.stderr == f"error: {message}\n"


# ---------------------------------------------------------------- review fixes: limits, sizes, the CSV, the cache


def test_text_options_given_by_code_are_checked_against_the_same_limits():
    with pytest.raises(DataError) as info:
        text.text_options({"max_length": 1_000_001})
    assert str(info.value) == "data.text.max_length: expected an integer in (0, 1000000], got 1000001"
    with pytest.raises(DataError) as info:
        text.text_options({"max_vocab": 2})
    assert str(info.value) == "data.text.max_vocab: expected an integer in [3, 10000000], got 2"
    with pytest.raises(DataError) as info:
        text.text_options(text.TextOptions(max_bytes=0))
    assert str(info.value) == "data.text.max_bytes: expected an integer in (0, 1073741824], got 0"
    assert text.text_options({}, text.WordTextOptions)["tokenizer"] == "char"  # the word lists' own defaults


def test_a_state_too_large_for_a_checkpoint_is_refused_when_fitted(monkeypatch):
    corpus = Texts([("alpha beta gamma delta",)], ["x"], False, source="reviews.csv")
    state = Tokenizer.fit(corpus, options()).state()
    monkeypatch.setattr(text, "STATE_BYTES", text.state_bytes(state) - 1)
    with pytest.raises(DataError) as info:
        Tokenizer.fit(corpus, options())
    assert str(info.value) == (
        f"reviews.csv: the fitted word tokenizer's 6 tokens take {text.state_bytes(state)} bytes in a checkpoint's "
        f"header, more than the {text.STATE_BYTES} they may (safetensors reads headers of at most 100 MB); lower "
        "data.text.max_vocab (now 20000)")


def test_state_bytes_is_what_a_state_takes_in_the_safetensors_header():
    from safetensors.numpy import save

    def header(metadata):  # its JSON, without the spaces that pad it to a multiple of 8 bytes
        saved = save({"w": np.zeros(1, np.float32)}, metadata=metadata)
        return len(saved[8:8 + int.from_bytes(saved[:8], "little")].rstrip(b" "))

    for kind in ("char", "word", "bpe"):
        state = Tokenizer.fit(texts('say "ok" \\ 🙂 é \x01 ΑΣ', "ab ab"), options(tokenizer=kind)).state()
        grown = header({"data": json.dumps({"text": state})}) - header({"data": json.dumps({"text": None})})
        assert grown == text.state_bytes(state) - len("null")
    worst = Tokenizer(options(tokenizer="char"), None, "error", ["<pad>", "<unk>", "🙂"]).state()
    one_more = Tokenizer(options(tokenizer="char"), None, "error", ["<pad>", "<unk>", "🙂", "😀"]).state()
    assert text.state_bytes(one_more) - text.state_bytes(worst) <= 20  # a char token's worst case (the docstring)


def test_data_text_on_a_csv_without_text_columns_is_refused(tmp_path):
    path = write_reviews(tmp_path / "r.csv", [(1, "Great", "good", "pos"), (2, "Meh", "bad", "neg")])
    message = ("data.text: it says how text columns are tokenized, and needs data.text_columns naming them; name "
               "the CSV's text columns in data.text_columns, or leave data.text out")
    with pytest.raises(DataError) as info:
        csv(path=str(path), rng=None, ignore_columns=["id", "title", "review"], text={"max_length": 5})
    assert str(info.value) == message
    result = invoke("train", _config(tmp_path, {"name": "csv", "path": str(path), "ignore_columns": ["title"],
                                                "text": {"tokenizer": "char"}}), "--run-dir", tmp_path / "run")
    assert result.exit_code == 2 and result.stderr == f"error: {message}\n"
    # the defaults (as a checkpoint's resolved config writes them) are no request
    assert csv(path=str(path), rng=None, ignore_columns=["id", "title", "review"], text={}).text_options is None


def test_the_cache_key_covers_the_unicode_dltrain_and_tokenizers_versions(tmp_path, monkeypatch):
    import unicodedata

    import dltrain

    root = review_folder(tmp_path / "reviews")
    fits = []
    fit = Tokenizer.fit.__func__
    monkeypatch.setattr(Tokenizer, "fit", classmethod(lambda cls, *a, **k: fits.append(1) or fit(cls, *a, **k)))

    def run(**given):
        prepare({"name": "text_folder", "path": str(root), "val_fraction": 0, "text": given}, "classification", 0,
                "cpu")
        return len(fits)

    assert run() == 1 and run() == 1
    monkeypatch.setattr(unicodedata, "unidata_version", "99.0.0")
    assert run() == 2 and run() == 2
    monkeypatch.setattr(dltrain, "__version__", "99.0")
    assert run() == 3
    tokenizers = pytest.importorskip("tokenizers")
    assert run(tokenizer="bpe") == 4 and run(tokenizer="bpe") == 4
    monkeypatch.setattr(tokenizers, "__version__", "99.0")
    assert run(tokenizer="bpe") == 5


def test_an_unusable_cache_folder_is_one_line(tmp_path, monkeypatch):
    root = review_folder(tmp_path / "reviews")
    occupied = tmp_path / "a-file"
    occupied.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(occupied))
    result = invoke("train", _config(tmp_path, {"name": "text_folder", "path": str(root)}), "--run-dir",
                    tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {occupied}/dltrain/text: cannot use this folder for the text cache (Not a "
                             "directory); set XDG_CACHE_HOME to a folder that can be written\n")


def test_a_full_disk_fails_cleanly_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    root = review_folder(tmp_path / "reviews")
    reserved = []

    def full(fd, offset, length):
        reserved.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    cache = tmp_path / "cache" / "dltrain" / "text"
    with pytest.raises(DataError) as info:
        prepare({"name": "text_folder", "path": str(root), "val_fraction": 0, "text": {"max_length": 4}},
                "classification", 0, "cpu")
    assert str(info.value) == (f"{cache}: cannot use this folder for the text cache (No space left on device); free "
                               "some space there or set XDG_CACHE_HOME to a folder that can be written")
    assert reserved and reserved[0] >= 16 * 4 * 4  # the whole file: 16 texts x 4 int32 ids, and its header
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------- review fixes: messages, the word pattern


def test_a_damaged_stored_tokenizer_names_the_checkpoint_not_the_data(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    root = review_folder(tmp_path / "reviews")
    state = Tokenizer.fit(texts("good bad"), options(tokenizer="bpe")).state()
    damaged = {**state, "huggingface": "not json"}
    try:
        tokenizers.Tokenizer.from_str("not json")
    except Exception as exc:  # noqa: BLE001 (Hugging Face's own)
        reason = str(exc)
    data = {"name": "text_folder", "path": str(root), "val_fraction": 0}
    for source, where in ((None, "the checkpoint"), ("runs/x/best.safetensors", "runs/x/best.safetensors")):
        with pytest.raises(CheckpointError) as info:
            prepare(data, "classification", 0, "cpu", text=damaged, text_source=source)
        assert str(info.value) == f"{where}: its data.text.huggingface is not a tokenizer ({reason})"


WORD_PATTERN_CHILD = """
import unicodedata
calls = [0]
category = unicodedata.category

def counting(c):
    calls[0] += 1
    return category(c)

unicodedata.category = counting
from dltrain.data.text import normalized, word_tokens
assert word_tokens(normalized("Don't stop—now: e\\u0301te\\u0301 3.14 🙂!! हिन्दी", True))[-1] == "हिन्दी"
print(calls[0])
"""


def test_the_word_pattern_does_not_scan_every_code_point():
    import subprocess
    import sys

    calls = subprocess.run([sys.executable, "-c", WORD_PATTERN_CHILD], capture_output=True, text=True, check=True)
    assert int(calls.stdout) < 50  # the characters of the text that are neither \w nor white space; was 1,114,112


def test_every_combining_mark_stays_in_its_word():
    import sys
    import unicodedata

    marks = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M"]
    words = [f"x{mark}y" for mark in marks]
    assert word_tokens(" ".join(words)) == words
    assert word_tokens(" ".join(marks)) == marks  # a mark alone is a word of its own
    others = [chr(c) for c in range(0x2000, 0x2070) if not chr(c).isspace() and unicodedata.category(chr(c))[0]
              not in "LNM" and chr(c) != "_"]
    assert word_tokens("a" + "a".join(others) + "a") == ["a", *[t for o in others for t in (o, "a")]]
