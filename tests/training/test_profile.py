"""dltrain profile: every part of a step timed, layers charged with their own backward."""

import json

import pytest

from dltrain.config import validate
from dltrain.training.profile import format_profile, profile_steps
from dltrain.training.reporting import SilentReporter
from dltrain.training.rundir import RunDir
from dltrain.training.trainer import Trainer

CONFIG = {
    "seed": 1,
    "data": {"name": "blobs", "n_samples": 200, "classes": 3},
    "model": [{"linear": {"units": 64}}, "relu", {"dropout": {"rate": 0.1}}, {"linear": {"units": 3}}, "softmax"],
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 1, "batch_size": 32},
}


def test_every_part_of_a_step_is_timed(tmp_path, device):
    trainer = Trainer(validate(json.loads(json.dumps(CONFIG)), {}, "test"), RunDir(tmp_path / "run", writable=False),
                      device, SilentReporter())
    trainer.setup()
    before = [p.data.copy() for p in trainer.model.network.parameters()]
    profile = profile_steps(trainer, steps=4, warmup=1)
    rows = profile.rows()
    # the softmax is folded into the cross-entropy loss and the ReLU into the linear layer, as in training
    assert [part for part, *_ in rows] == ["batch gather", "model[0].linear + model[1].relu", "model[2].dropout",
                                           "model[3].linear", "loss", "optimizer step"]
    for part, forward, backward, total in rows:
        assert total > 0, part
        if forward is not None:
            assert total == pytest.approx(forward + backward)
    linear = dict((part, b) for part, _, b, _ in rows)["model[0].linear + model[1].relu"]
    assert linear > 0  # its weight gradient was charged to it
    assert profile.free_running_ms > 0 and profile.batch_size == 32
    assert any((a != b).any() for a, b in zip(before, (p.data for p in trainer.model.network.parameters())))
    text = format_profile(profile)
    assert text.splitlines()[0].split() == ["part", "forward", "ms", "backward", "ms", "total", "ms", "share"]
    assert "free-running step:" in text and "at batch 32" in text
    assert not (tmp_path / "run").exists()  # profiling writes nothing


def test_the_free_running_step_is_the_trainers_own(tmp_path, monkeypatch):
    """The profiled step is Trainer.train_step (schedule and clipping included), and clipping has its own row."""
    values = json.loads(json.dumps(CONFIG))
    values["training"]["grad_clip"] = 1.0
    values["schedule"] = {"name": "cosine", "interval": "step"}
    trainer = Trainer(validate(values, {}, "test"), RunDir(tmp_path / "run", writable=False), "cpu",
                      SilentReporter())
    trainer.setup()
    steps, rates = [], []
    real_step = Trainer.train_step

    def train_step(self, batch):
        steps.append(batch.step)
        rates.append(self.optimizer.lr)
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    profile = profile_steps(trainer, steps=3, warmup=2)
    assert steps == [0, 1, 2, 3, 4]  # 180 samples at 32 per step: 6 steps per epoch
    assert rates == [trainer.schedule.lr(0, s) for s in steps] and rates[0] > rates[-1]
    assert "gradient clipping" in [part for part, *_ in profile.rows()]
