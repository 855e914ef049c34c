"""Test-time augmentation (data.test_time_augment): predictions averaged over each image and its flipped views."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dltrain import backend
from dltrain.autograd import Tensor, no_grad
from dltrain.cli import app
from dltrain.config import validate
from dltrain.data.splits import normalize
from dltrain.errors import ConfigError
from dltrain.inference.evaluate import evaluate_checkpoint
from dltrain.inference.loading import load_predictor
from dltrain.training import rundir as files
from dltrain.training.checkpoint import load_checkpoint
from dltrain.training.model import TEST_TIME_VIEWS, Model, average_outputs
from dltrain.training.run import run_training


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_class_probabilities_are_averaged_by_hand():
    rng = np.random.default_rng(0)
    views = rng.standard_normal((3, 5, 4)).astype(np.float32) * 3
    combined = average_outputs(views, "classification")
    np.testing.assert_allclose(combined, np.log(softmax(views).mean(axis=0)), rtol=1e-5, atol=1e-6)
    # they are log-probabilities: softmax gives the mean probabilities back, argmax the most probable mean class
    np.testing.assert_allclose(softmax(combined), softmax(views).mean(axis=0), rtol=1e-5, atol=1e-7)
    assert combined.dtype == np.float32 and combined.shape == (5, 4)


def test_sigmoid_probabilities_are_averaged_by_hand_and_stay_finite():
    views = np.array([[[2.0], [-1.0], [60.0]], [[0.5], [-3.0], [80.0]]])
    combined = average_outputs(views, "binary")
    p = (1 / (1 + np.exp(-views[:, :2]))).mean(axis=0)
    np.testing.assert_allclose(combined[:2], np.log(p / (1 - p)), rtol=1e-10)
    # both views all but certain: a probability that rounds to 1 in float64 still gives a finite logit
    assert np.isfinite(combined[2, 0]) and combined[2, 0] == pytest.approx(60 - np.log(0.5 * (1 + np.exp(-20))))


def test_regression_values_are_averaged():
    views = np.array([[[1.0, 2.0]], [[3.0, 6.0]]])
    np.testing.assert_array_equal(average_outputs(views, "regression"), [[2.0, 4.0]])


def test_shifted_views_by_hand(device):
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    expected = {
        "shift_up": [[4, 5, 6, 7], [8, 9, 10, 11], [-1, -1, -1, -1]],
        "shift_down": [[-1, -1, -1, -1], [0, 1, 2, 3], [4, 5, 6, 7]],
        "shift_left": [[1, 2, 3, -1], [5, 6, 7, -1], [9, 10, 11, -1]],
        "shift_right": [[-1, 0, 1, 2], [-1, 4, 5, 6], [-1, 8, 9, 10]],
    }
    for name, image in expected.items():
        view = TEST_TIME_VIEWS[name](backend.to_device(x, device), -1.0)
        assert backend.array_module(view) is backend.array_module(backend.to_device(x, device))
        assert view.shape == x.shape and view.dtype == x.dtype, name
        np.testing.assert_array_equal(backend.to_numpy(view)[0, 0], image, err_msg=name)


def image_config(tmp_path, **data):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 1, 5, 6)).astype(np.float32)
    y = (x[:, 0, :, :3].mean(axis=(1, 2)) > 0).astype(np.int64)  # depends on the left half: flips matter
    np.savez(tmp_path / "images.npz", x=x[:60], y=y[:60], x_test=x[60:], y_test=y[60:])
    values = {"seed": 0, "data": {"name": "npz", "path": str(tmp_path / "images.npz"), "val_fraction": 0.25, **data},
              "model": [{"conv2d": {"filters": 3, "kernel_size": 3}}, "relu", "flatten", {"linear": {"units": 2}}],
              "optimizer": {"name": "adam", "lr": 0.01},
              "training": {"epochs": 2, "batch_size": 16, "shuffle": False}}
    return validate(values, {}, "test")


def test_the_model_averages_the_image_and_each_view(tmp_path, device):
    # each view once: a repeated one would weigh twice
    config = image_config(tmp_path, test_time_augment=["horizontal_flip", "vertical_flip", "horizontal_flip"])
    model = Model(config, (1, 5, 6), 2, None)
    assert model.views == ["horizontal_flip", "vertical_flip"]
    model.network.to(device)
    model.network.eval()
    x = np.random.default_rng(1).standard_normal((4, 1, 5, 6)).astype(np.float32)
    with no_grad():
        own = [backend.to_numpy(model.outputs(Tensor(backend.to_device(np.ascontiguousarray(v), device))).data)
               for v in (x, x[..., ::-1], x[..., ::-1, :])]
        combined = model.predict_outputs(backend.to_device(x, device)).data
    assert backend.array_module(combined) is backend.array_module(backend.to_device(x, device))
    combined = backend.to_numpy(combined)
    np.testing.assert_allclose(combined, np.log(softmax(np.stack(own)).mean(axis=0)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(combined, own[0] - np.log(softmax(own[0]).sum(axis=1, keepdims=True)))  # the views count


def test_vectors_have_no_views(tmp_path):
    values = {"data": {"name": "xor", "test_time_augment": ["horizontal_flip"]},
              "model": [{"linear": {"units": 2}}]}
    with pytest.raises(ConfigError) as caught:
        Model(validate(values, {}, "test"), (2,), 2, None)
    assert str(caught.value) == ("data.test_time_augment: horizontal_flip: views of images (batch, channels, height, "
                                 "width); this data's inputs are (batch, 2)")
    run_training(validate({"data": {"name": "xor"}, "model": [{"linear": {"units": 2}}],
                           "training": {"epochs": 1}}, {}, "test"), run_dir=tmp_path / "run", plot=False)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--tta", "vertical_flip"])
    assert result.exit_code == 2
    assert ("error: --tta: vertical_flip: views of images (batch, channels, height, width); this data's inputs are "
            "(batch, 2)") in result.output


def test_unknown_views_are_config_errors():
    values = {"data": {"name": "xor", "test_time_augment": ["rotate"]}, "model": [{"linear": {"units": 2}}]}
    with pytest.raises(ConfigError) as caught:
        validate(values, {}, "c.yaml")
    assert str(caught.value) == ("c.yaml: data.test_time_augment: expected a list, each one of 'horizontal_flip', "
                                 "'vertical_flip', 'shift_up', 'shift_down', 'shift_left', 'shift_right', got "
                                 "['rotate']")


def test_training_validates_and_tests_with_the_views_and_eval_can_turn_them_off(tmp_path):
    config = image_config(tmp_path, test_time_augment=["horizontal_flip"])
    summary = run_training(config, run_dir=tmp_path / "run", plot=False)
    run = tmp_path / "run"
    with_views = evaluate_checkpoint(run, "test")
    assert with_views["test_time_augment"] == ["horizontal_flip"]
    assert summary["test_loss"] == pytest.approx(with_views["loss"], rel=1e-6)
    without = evaluate_checkpoint(run, "test", views=[])
    assert "test_time_augment" not in without and without["loss"] != pytest.approx(with_views["loss"], rel=1e-6)
    # the validation metrics of the last epoch were computed with the views too
    last = files.RunDir(run).read_metrics()[-1]
    assert float(last["val_loss"]) == pytest.approx(evaluate_checkpoint(run / files.LAST, "val")["loss"], rel=1e-6)

    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(run), "--no-tta", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["loss"] == pytest.approx(without["loss"], rel=1e-9)
    result = runner.invoke(app, ["eval", str(run), "--tta", "horizontal_flip", "--no-tta"])
    assert result.exit_code == 2 and "error: --tta horizontal_flip and --no-tta: give one of them" in result.output
    result = runner.invoke(app, ["eval", str(run), "--tta", "rotate"])
    assert result.exit_code == 2
    assert ("error: --tta: unknown view 'rotate'; expected one of horizontal_flip, vertical_flip, shift_up, "
            "shift_down, shift_left, shift_right") in result.output
    result = runner.invoke(app, ["predict", str(run), str(tmp_path / "images.npz"), "--no-tta", "--probabilities"])
    assert result.exit_code == 0, result.output
    own = result.output
    result = runner.invoke(app, ["predict", str(run), str(tmp_path / "images.npz"), "--probabilities"])
    assert result.exit_code == 0 and result.output != own  # the config's flip by default, and --no-tta leaves it out
    result = runner.invoke(app, ["predict", str(run), str(tmp_path / "images.npz"), "--tta", "horizontal_flip"])
    assert result.exit_code == 0


def test_eval_can_add_views_a_run_was_trained_without_and_predict_uses_the_configs(tmp_path):
    run_training(image_config(tmp_path), run_dir=tmp_path / "plain", plot=False)
    plain = evaluate_checkpoint(tmp_path / "plain", "test")
    flipped = evaluate_checkpoint(tmp_path / "plain", "test", views=["horizontal_flip"])
    assert flipped["test_time_augment"] == ["horizontal_flip"] and flipped["loss"] != pytest.approx(plain["loss"])

    run_training(image_config(tmp_path, test_time_augment=["horizontal_flip"]), run_dir=tmp_path / "tta", plot=False)
    predictor = load_predictor(tmp_path / "tta" / files.BEST)
    x = np.load(tmp_path / "images.npz")["x"][:8]
    outputs = predictor.run(x)
    ckpt_model = Model(image_config(tmp_path), (1, 5, 6), 2, None)  # the same network, no views
    ckpt = load_checkpoint(tmp_path / "tta" / files.BEST)
    ckpt_model.network.load_state_dict(ckpt.model)
    ckpt_model.network.eval()
    stats = {k: np.asarray(v, np.float64) for k, v in ckpt.normalization.items()}
    z = normalize(x, stats)
    with no_grad():
        views = [ckpt_model.outputs(Tensor(np.ascontiguousarray(v))).data for v in (z, z[..., ::-1])]
    np.testing.assert_allclose(outputs, np.log(softmax(np.stack(views)).mean(axis=0)), rtol=1e-5, atol=1e-6)
    assert backend.to_numpy(outputs).dtype == np.float64


@pytest.mark.parametrize("task", ["classification", "binary", "regression"])
def test_averaging_on_every_device_matches_the_cpu(task, device):
    views = np.random.default_rng(2).standard_normal((2, 6, 3)).astype(np.float32)
    on_device = average_outputs(backend.to_device(views, device), task)
    assert backend.array_module(on_device) is backend.array_module(backend.to_device(views, device))
    np.testing.assert_allclose(backend.to_numpy(on_device), average_outputs(views, task), rtol=1e-6)


def test_export_says_the_graph_has_no_views(tmp_path):
    pytest.importorskip("onnx")
    run_training(image_config(tmp_path, test_time_augment=["vertical_flip"]), run_dir=tmp_path / "run", plot=False)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert ("note: the exported graph predicts without data.test_time_augment (vertical_flip); dltrain eval and "
            "predict on the checkpoint average over them") in result.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "m.onnx"), "--tta", "vertical_flip"])
    assert result.exit_code == 2
    assert "test-time augmentation is not part of an exported ONNX graph; evaluate the checkpoint instead" in (
        result.output)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "m.onnx"), "--json"])
    assert result.exit_code == 0 and "note: the exported graph predicts without data.test_time_augment" in result.output


def shifted_by_hand(z, blank):
    """z moved one pixel up, and z moved one pixel right, the uncovered row and column set to `blank`."""
    up = np.concatenate([z[..., 1:, :], np.full_like(z[..., :1, :], blank)], axis=-2)
    right = np.concatenate([np.full_like(z[..., :1], blank), z[..., :-1]], axis=-1)
    return up, right


def test_shifted_views_fill_with_a_raw_zero_in_training_eval_and_predict(tmp_path):
    rng = np.random.default_rng(3)
    x = (rng.random((80, 1, 5, 6)) * 4 + 1).astype(np.float32)  # no zeros: a blank pixel is far from the mean
    y = (x[:, 0, :2].mean(axis=(1, 2)) > x[:, 0, 3:].mean(axis=(1, 2))).astype(np.int64)  # shifts matter
    np.savez(tmp_path / "shifted.npz", x=x[:60], y=y[:60], x_test=x[60:], y_test=y[60:])
    values = {"seed": 0, "data": {"name": "npz", "path": str(tmp_path / "shifted.npz"), "val_fraction": 0.25,
                                  "test_time_augment": ["shift_up", "shift_right"]},
              "model": [{"conv2d": {"filters": 3, "kernel_size": 3}}, "relu", "flatten", {"linear": {"units": 2}}],
              "optimizer": {"name": "adam", "lr": 0.01}, "training": {"epochs": 2, "batch_size": 16}}
    summary = run_training(validate(values, {}, "test"), run_dir=tmp_path / "run", plot=False)

    ckpt = load_checkpoint(tmp_path / "run" / files.BEST)
    plain = dict(values, data={k: v for k, v in values["data"].items() if k != "test_time_augment"})
    network = Model(validate(plain, {}, "test"), (1, 5, 6), 2, None).network
    network.load_state_dict(ckpt.model)
    network.eval()
    stats = {k: np.asarray(v, np.float64) for k, v in ckpt.normalization.items()}
    blank = float(np.mean(-stats["mean"] / stats["std"]))  # the pixel value 0, normalized
    assert blank < -1
    z = normalize(x[60:], stats)
    with no_grad():
        views = [network(Tensor(np.ascontiguousarray(v))).data for v in (z, *shifted_by_hand(z, blank))]
    log_p = np.log(softmax(np.stack(views).astype(np.float64)).mean(axis=0))
    loss = -log_p[np.arange(20), y[60:]].mean()
    assert evaluate_checkpoint(tmp_path / "run", "test")["loss"] == pytest.approx(loss, rel=1e-5)
    assert summary["test_loss"] == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(load_predictor(tmp_path / "run" / files.BEST).run(x[60:]), log_p, rtol=1e-5, atol=1e-6)
