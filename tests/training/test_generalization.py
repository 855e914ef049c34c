"""Augmentation, class weights, weight averaging, gradient accumulation and the one-cycle schedule."""

import json
import re

import numpy as np
import pytest

import dltrain
from dltrain import backend
from dltrain.config import validate
from dltrain.data import augment
from dltrain.data.augment import AugmentContext
from dltrain.errors import ConfigError
from dltrain.losses import CrossEntropy
from dltrain.registry import augmentations
from dltrain.training import rundir as files
from dltrain.training.checkpoint import load_checkpoint
from dltrain.training.run import run_training


def draws(monkeypatch, *values):
    """Make the augmentations' uniform draws these arrays, in this order (on the batch's device)."""
    queue = [np.asarray(v, np.float32) for v in values]

    def uniform(x, *shape):
        value = queue.pop(0)
        assert value.shape == shape, (value.shape, shape)
        return backend.array_module(x).asarray(value)

    monkeypatch.setattr(augment, "_uniform", uniform)
    return queue


def image(n=1, c=1, h=3, w=4):
    return np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)


def on(device, array):
    return backend.to_device(array, device)


def test_random_crop_by_hand(monkeypatch, device):
    x = image()
    draws(monkeypatch, [0.0], [0.99])  # dy = 0, dx = 2 (of 0..2 with padding 1)
    out, _ = augmentations.build({"name": "random_crop", "padding": 1})(on(device, x), None, AugmentContext(3, -1.0))
    padded = np.pad(x[0, 0], 1, constant_values=-1.0)
    np.testing.assert_array_equal(backend.to_numpy(out)[0, 0], padded[0:3, 2:6])
    assert out.shape == x.shape and out.dtype == x.dtype


def test_flips_by_hand_and_their_probability(monkeypatch, device):
    x = image(n=2)
    draws(monkeypatch, [0.1, 0.9])
    flip = augmentations.build({"name": "horizontal_flip"})
    out = backend.to_numpy(flip(on(device, x), None, AugmentContext(3, 0))[0])
    np.testing.assert_array_equal(out[0], x[0, :, :, ::-1])
    np.testing.assert_array_equal(out[1], x[1])
    draws(monkeypatch, [0.2])
    out = backend.to_numpy(augmentations.build({"name": "vertical_flip", "p": 0.3})(on(device, x[:1]), None,
                                                                                    AugmentContext(3, 0))[0])
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])


def test_probability_p_is_honoured_over_many_draws():
    x = np.zeros((20000, 1, 1, 2), np.float32)
    x[..., 1] = 1
    out, _ = augmentations.build({"name": "horizontal_flip", "p": 0.3})(x, None, AugmentContext(3, 0))
    assert abs((out[:, 0, 0, 0] == 1).mean() - 0.3) < 0.015  # 4.5 standard deviations
    erased, _ = augmentations.build({"name": "random_erasing", "p": 0.25, "value": -5.0})(
        np.zeros((20000, 1, 8, 8), np.float32), None, AugmentContext(3, 0))
    assert abs((erased == -5).any(axis=(1, 2, 3)).mean() - 0.25) < 0.015


def test_random_erasing_by_hand(monkeypatch, device):
    x = np.zeros((1, 2, 6, 8), np.float32)
    # area = (0.1 + 0.5 * (0.3 - 0.1)) * 48 = 9.6, aspect = exp(log 0.5 + 0.5 * (log 2 - log 0.5)) = 1:
    # 3 x 3 (rounded); top = floor(0.5 * 4) = 2, left = floor(0.25 * 6) = 1; applied (0.1 < p)
    draws(monkeypatch, [0.5], [0.5], [0.5], [0.25], [0.1])
    step = augmentations.build({"name": "random_erasing", "p": 0.5, "scale": [0.1, 0.3], "ratio": [0.5, 2.0],
                                "value": 7.0})
    out = backend.to_numpy(step(on(device, x), None, AugmentContext(3, 0))[0])
    expected = np.zeros_like(x)
    expected[:, :, 2:5, 1:4] = 7.0  # every channel
    np.testing.assert_array_equal(out, expected)


def test_every_augmentation_keeps_shapes_and_dtypes(device):
    x = on(device, np.random.default_rng(0).standard_normal((8, 3, 10, 12)).astype(np.float32))
    y = on(device, np.arange(8) % 4)
    for name in augmentations.names():
        out, labels = augmentations.build({"name": name})(x, y, AugmentContext(4, 0.0))
        assert out.shape == x.shape and out.dtype == x.dtype, name
        if name in ("mixup", "cutmix"):
            assert labels.shape == (8, 4) and np.allclose(backend.to_numpy(labels).sum(axis=1), 1)
        else:
            assert labels is y


def test_the_same_draws_give_the_same_images_on_the_cpu_and_a_gpu(monkeypatch, gpu):
    x = np.random.default_rng(1).standard_normal((3, 1, 5, 5)).astype(np.float32)
    u = [np.random.default_rng(2).random(3) for _ in range(6)]
    for spec in ({"name": "random_crop", "padding": 2}, {"name": "random_erasing", "p": 0.9},
                 {"name": "cutout", "size": 3}):
        results = []
        for device in ("cpu", gpu):
            draws(monkeypatch, *u)
            results.append(backend.to_numpy(augmentations.build(spec)(on(device, x), None, AugmentContext(3, -1.0))[0]))
        np.testing.assert_array_equal(results[0], results[1])


def test_mixup_loss_is_the_cross_entropy_of_the_mixed_targets(monkeypatch):
    x = np.random.default_rng(3).standard_normal((4, 1, 2, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 1])

    class Fixed:
        def beta(self, a, b):
            return 0.7

    monkeypatch.setattr(backend, "host_rng", lambda: Fixed())
    draws(monkeypatch, [0.4, 0.1, 0.3, 0.2])  # argsort: partners 1, 3, 2, 0
    mixed_x, soft = augmentations.build({"name": "mixup"})(x, y, AugmentContext(3, 0))
    partners = [1, 3, 2, 0]
    np.testing.assert_allclose(mixed_x, 0.7 * x + 0.3 * x[partners], rtol=1e-6)
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(soft, 0.7 * onehot + 0.3 * onehot[partners], rtol=1e-6)
    logits = np.random.default_rng(4).standard_normal((4, 3))
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = CrossEntropy()(dltrain.tensor(logits), soft)
    assert float(loss.data) == pytest.approx(-(soft * log_p).sum(axis=1).mean(), rel=1e-6)


def test_cross_entropy_class_weights_against_torch():
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(5).standard_normal((6, 3))
    labels = np.array([0, 1, 2, 2, 2, 0])
    loss = CrossEntropy(class_weights="balanced")
    weights = loss.weights_for(labels, 3)
    assert weights == pytest.approx([6 / (3 * 2), 6 / (3 * 1), 6 / (3 * 3)])  # n / (classes x count)
    loss.weight = np.asarray(weights)
    with backend.default_dtype_as(np.float64):
        ours = float(loss(dltrain.tensor(logits), labels).data)
    theirs = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                               weight=torch.tensor(weights, dtype=torch.float64))
    assert ours == pytest.approx(float(theirs), rel=1e-12)
    with pytest.raises(ConfigError, match=r"loss.class_weights: 2 weights, but the data has 3 classes"):
        CrossEntropy(class_weights=[1.0, 2.0]).weights_for(labels, 3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_cycle_against_torch(optimizer):
    torch = pytest.importorskip("torch")
    from dltrain.optim.schedules import OneCycle

    epochs, steps = 4, 9
    ours = OneCycle(base_lr=0.01, total_epochs=epochs, steps_per_epoch=steps, max_lr=0.2, pct_start=0.25,
                    div_factor=10.0, final_div_factor=100.0)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = (torch.optim.SGD([param], lr=0.01, momentum=0.9) if optimizer == "sgd" else
           torch.optim.Adam([param], lr=0.01))
    theirs = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, epochs=epochs, steps_per_epoch=steps,
                                                 pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    for epoch in range(epochs):
        for step in range(steps):
            group = opt.param_groups[0]
            momentum = group["momentum"] if optimizer == "sgd" else group["betas"][0]
            assert ours.lr(epoch, step) == pytest.approx(group["lr"], rel=1e-12, abs=1e-15)
            assert ours.momentum(epoch, step) == pytest.approx(momentum, rel=1e-12)
            opt.step()
            theirs.step()


BLOBS = {
    "seed": 1,
    "data": {"name": "blobs", "n_samples": 128, "classes": 3, "spread": 2.0, "val_fraction": 0.0},
    "model": [{"linear": {"units": 8}}, "tanh", {"linear": {"units": 3}}],
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "training": {"epochs": 2, "batch_size": 32, "shuffle": False, "early_stopping": False},
}


def config(**training):
    values = json.loads(json.dumps(BLOBS))
    values["training"].update(training)
    return validate(values, {}, "test")


def test_accumulating_n_batches_is_one_step_of_n_times_the_batch(tmp_path):
    run_training(config(batch_size=32), run_dir=tmp_path / "big", plot=False)
    run_training(config(batch_size=8, accumulate_steps=4), run_dir=tmp_path / "small", plot=False)
    big, small = (load_checkpoint(tmp_path / name / files.LAST) for name in ("big", "small"))
    assert big.state["global_step"] == small.state["global_step"] == 8  # optimizer steps, not batches
    for name, array in big.model.items():
        np.testing.assert_allclose(small.model[name], array, rtol=2e-5, atol=2e-6)


def test_weight_averaging_against_a_hand_written_average(tmp_path):
    seen = []

    from dltrain.training.callbacks import Callback

    class Watch(Callback):
        def on_batch_end(self, trainer, step, logs):
            seen.append({n: backend.to_numpy(a).copy() for n, a in trainer.model.network.state_dict().items()})

    first = {}

    class Start(Callback):
        def on_train_begin(self, trainer):
            first.update({n: backend.to_numpy(a).copy() for n, a in trainer.model.network.state_dict().items()})

    summary = run_training(config(epochs=1, ema={"decay": 0.8}, early_stopping={"restore_best": False}),
                           run_dir=tmp_path / "run", callbacks=[Start(), Watch()], plot=False)
    average = dict(first)
    for weights in seen:
        average = {n: 0.8 * average[n] + 0.2 * weights[n] for n in average}
    checkpoint = load_checkpoint(tmp_path / "run" / files.LAST)
    for name, value in average.items():
        np.testing.assert_allclose(checkpoint.model[name], value, rtol=1e-5)  # model/: the average
        np.testing.assert_array_equal(checkpoint.training[name], seen[-1][name])  # training/: the weights
    # restore_best off: the model left at the end (and tested) is the average too
    from dltrain.inference.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(tmp_path / "run" / files.LAST, "test")
    assert summary["test_loss"] == pytest.approx(report["loss"], rel=1e-6)


def test_resume_with_augmentation_and_averaging_equals_an_uninterrupted_run(tmp_path):
    values = json.loads(json.dumps(BLOBS))
    values["data"] = {"name": "npz", "path": str(tmp_path / "images.npz"), "val_fraction": 0.25}
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "images.npz", x=rng.standard_normal((96, 1, 6, 6)), y=np.arange(96) % 3)
    values["model"] = [{"conv2d": {"filters": 2, "kernel_size": 3}}, "batchnorm", "relu", "flatten",
                       {"linear": {"units": 3}}]
    values["data"]["augment"] = [{"random_crop": {"padding": 1}}, "horizontal_flip", "random_erasing", "mixup"]
    values["training"].update(shuffle=True, epochs=4, ema={"decay": 0.9})
    full = validate(values, {}, "test")
    run_training(full, run_dir=tmp_path / "full", plot=False)
    values["training"]["epochs"] = 2
    run_training(validate(values, {}, "test"), run_dir=tmp_path / "split", plot=False)
    run_training(None, resume=tmp_path / "split", overrides=["training.epochs=4"], plot=False)

    def rows(name):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in files.RunDir(tmp_path / name).read_metrics()]

    assert rows("split") == rows("full")
    a, b = (load_checkpoint(tmp_path / name / files.LAST) for name in ("full", "split"))
    for name in a.model:
        np.testing.assert_array_equal(a.model[name], b.model[name])
        np.testing.assert_array_equal(a.training[name], b.training[name])


def test_augmentations_are_checked_like_the_rest_of_the_config():
    values = json.loads(json.dumps(BLOBS))
    values["data"]["augment"] = [{"random_crop": {"paddin": 2}}, "flip"]
    with pytest.raises(ConfigError) as caught:
        validate(values, {}, "c.yaml")
    text = str(caught.value)
    assert ("data.augment[0].paddin: unknown key 'paddin' for augmentation 'random_crop' (did you mean 'padding'?)"
            in text)
    assert "data.augment[1].name: unknown augmentation 'flip'" in text


def test_find_lr_plots_the_range_test_and_suggests_a_rate(tmp_path):
    from typer.testing import CliRunner

    from dltrain.cli import app
    from dltrain.training.find_lr import suggest

    config = tmp_path / "blobs.yaml"
    config.write_text(json.dumps({**BLOBS, "training": {**BLOBS["training"], "batch_size": 16}}))
    result = CliRunner().invoke(app, ["find-lr", str(config), "--steps", "60", "--start", "1e-5", "--end", "100",
                                      "--out", str(tmp_path / "lr.png")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.fullmatch(rf"\d+ steps from lr 1e-05 to [0-9.e+-]+; plot: {re.escape(str(tmp_path / 'lr.png'))}",
                        lines[0])
    assert lines[1].startswith("suggested learning rate: ")
    suggested = float(lines[2].split("=")[1])
    assert lines[2] == f"  --set optimizer.lr={suggested:.3g}" and 1e-4 < suggested < 10
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(tmp_path.iterdir()) == {config, tmp_path / "lr.png"}  # nothing else written
    # the rule by hand: a tenth of the rate with the lowest loss after the first 10 steps
    rates = [10.0 ** (k / 4) for k in range(20)]
    losses = [5.0] * 10 + [4, 3, 2, 1.5, 1.0, 1.2, 3, 9, 20, 50]
    assert suggest(rates, losses) == pytest.approx(rates[14] / 10)
    result = CliRunner().invoke(app, ["find-lr", str(config), "--start", "1", "--end", "0.1"])
    assert result.exit_code == 2 and "find-lr: expected 0 < --start < --end, got 1.0 and 0.1" in result.output
