"""--init-from on a text model: the new run tokenizes with the source run's tokenizer, whose ids the embedding's rows
belong to (was: a tokenizer fitted anew on the new texts, the same size, every id meaning another word)."""

import json

import numpy as np
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.data.text import Tokenizer
from dltrain.training.checkpoint import load_checkpoint, resolve_checkpoint

runner = CliRunner()


def write_folder(root, words_by_class, rng):
    for name, words in words_by_class.items():
        (root / name).mkdir(parents=True)
        for i in range(24):
            (root / name / f"{i:02d}.txt").write_text(" ".join(rng.choice(words, size=4)) + "\n", encoding="utf-8")


def train(tmp_path, name, folder, *extra):
    config = tmp_path / f"{name}.yaml"
    config.write_text(json.dumps({
        "seed": 0,
        "data": {"name": "text_folder", "path": str(folder), "val_fraction": 0.25, "text": {"max_length": 6}},
        "model": [{"embedding": {"units": 4}}, {"gru": {"units": 4}}, {"linear": {"units": 2}}],
        "optimizer": {"name": "adam", "lr": 0.01}, "training": {"epochs": 1, "batch_size": 8}}))
    result = runner.invoke(app, ["train", str(config), "--run-dir", str(tmp_path / name), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return load_checkpoint(resolve_checkpoint(tmp_path / name))


def test_fine_tuning_a_text_model_keeps_its_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    write_folder(tmp_path / "first", {"neg": ["bad", "awful", "film"], "pos": ["good", "great", "film"]}, rng)
    write_folder(tmp_path / "second", {"neg": ["poor", "dull", "movie"], "pos": ["nice", "superb", "movie"]}, rng)
    source = train(tmp_path, "source", tmp_path / "first")
    tuned = train(tmp_path, "tuned", tmp_path / "second", "--init-from", str(tmp_path / "source"))
    assert tuned.data["text"] == source.data["text"]  # not a tokenizer fitted on the second folder's words
    assert tuned.data["vocab_size"] == Tokenizer.from_state(source.data["text"]).vocab_size


class RankOneOfTwo:
    """What an MPI rank other than 0 sees: rank 0's broadcasts, in order (first: whether it failed)."""

    rank, size = 1, 2

    def __init__(self, *sent):
        self.sent = list(sent)

    def broadcast(self, value):
        return self.sent.pop(0)

    def local_size(self):
        return 1

    def for_device(self, device):
        return self


def test_under_mpi_the_other_ranks_tokenize_with_rank_zeros_tokenizer(tmp_path, monkeypatch):
    """Was: every rank fitted its own tokenizer; a fit that is not deterministic would give ranks other ids."""
    from dltrain.config import validate
    from dltrain.training.model import build_for
    from dltrain.training.reporting import SilentReporter
    from dltrain.training.rundir import RunDir
    from dltrain.training.trainer import Trainer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    write_folder(tmp_path / "texts", {"neg": ["bad", "awful", "film"], "pos": ["good", "great", "film"]}, rng)
    data = {"name": "text_folder", "path": str(tmp_path / "texts"), "val_fraction": 0.25}
    config = validate({"seed": 0, "data": data,
                       "model": [{"embedding": {"units": 4}}, {"gru": {"units": 4}}, {"linear": {"units": 2}}],
                       "training": {"epochs": 1, "batch_size": 8}}, {}, "test")
    rank_zeros = build_for(config).info["text"]
    rank_zeros = {**rank_zeros, "tokens": rank_zeros["tokens"][:2] + rank_zeros["tokens"][:1:-1]}  # other ids

    def no_fitting(*args, **kwargs):
        raise AssertionError("rank 1 fitted a tokenizer of its own")

    monkeypatch.setattr(Tokenizer, "fit", no_fitting)
    trainer = Trainer(config, RunDir(tmp_path / "unused", writable=False), "cpu", SilentReporter(),
                      comm=RankOneOfTwo(False, rank_zeros))
    trainer.setup()
    assert trainer.info["text"] == rank_zeros
