"""Config validation: every problem at once, each with FILE:LINE and the key path."""

import textwrap

import pytest

from dltrain.config import load_config
from dltrain.errors import ConfigError

MINIMAL = """\
data: xor
model:
  - linear: {units: 16}
  - relu
  - linear: {units: 2}
"""


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path, text, overrides=()):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value).replace(str(path), "c.yaml")


def test_five_line_config_gets_every_default(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.data["name"] == "xor" and cfg.data["val_fraction"] == 0.1
    assert cfg.model[0] == {"linear": {"units": 16, "bias": True, "init": "he_uniform"}}
    assert cfg.model[1] == {"relu": {}}
    assert cfg.optimizer == {"name": "adam", "lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                             "weight_decay": 0.0, "decay_all": False}
    assert cfg.training.early_stopping.monitor == "val_loss" and cfg.monitor_mode == "min"


def test_overrides_are_typed_by_the_schema(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["training.epochs=7", "optimizer.lr=1e-2", "model[0].linear.units=8",
                                                  "schedule.name=exponential", "schedule.gamma=0.9"])
    assert cfg.training.epochs == 7 and cfg.optimizer["lr"] == 0.01
    assert cfg.model[0]["linear"]["units"] == 8 and cfg.schedule["gamma"] == 0.9


def test_wrong_type_names_file_line_and_key(tmp_path):
    text = MINIMAL.replace("units: 16", "units: abc")
    assert problems(tmp_path, text) == "c.yaml:3: model[0].linear.units: expected a positive integer, got 'abc'"


def test_unknown_key_suggests_the_right_one(tmp_path):
    text = MINIMAL + "optimizer: {name: sgd, momentun: 0.9}\n"
    assert problems(tmp_path, text) == ("c.yaml:6: optimizer.momentun: unknown key 'momentun' for optimizer 'sgd' "
                                        "(did you mean 'momentum'?); allowed: lr, momentum, nesterov, weight_decay, "
                                        "decay_all")


def test_unknown_layer_lists_available_layers(tmp_path):
    message = problems(tmp_path, MINIMAL.replace("- relu", "- rellu"))
    assert message.startswith("c.yaml:4: model[1]: unknown layer 'rellu' (did you mean 'relu'?); available: ")
    assert "linear" in message and "sequential" in message


@pytest.mark.parametrize("section, value, expected", [
    ("optimizer", "{name: rmsprop}", "c.yaml:6: optimizer.name: unknown optimizer 'rmsprop'"),
    ("loss", "crossentropy", "c.yaml:6: loss.name: unknown loss 'crossentropy' (did you mean 'cross_entropy'?)"),
    ("schedule", "{name: cosin}", "c.yaml:6: schedule.name: unknown schedule 'cosin' (did you mean 'cosine'?)"),
    ("data", "fashion_mnist", None),
])
def test_unknown_registry_names(tmp_path, section, value, expected):
    text = MINIMAL.replace("data: xor\n", "") + f"{section}: {value}\n"
    if section == "data":
        message = problems(tmp_path, text)
        assert "data.name: unknown dataset 'fashion_mnist' (did you mean 'fashion-mnist'?)" in message
        return
    text = "data: xor\n" + text
    assert problems(tmp_path, text).startswith(expected)


def test_all_problems_are_reported_at_once(tmp_path):
    text = """\
    data: {name: xor, val_fraction: 1.5}
    model:
      - linear: {units: 0}
      - dropout: {rate: 1.0}
    optimizer: {name: sgd, lr: -0.1}
    trainig: {epochs: 3}
    training:
      batch_size: 0
      early_stopping: {patience: -1, monitor: val_acc}
    """
    lines = problems(tmp_path, text).splitlines()
    assert lines == [
        "c.yaml:6: trainig: unknown key 'trainig' (did you mean 'training'?); allowed: seed, device, data, model, "
        "loss, optimizer, schedule, training, callbacks, tune",
        "c.yaml:1: data.val_fraction: expected a number in [0, 1), got 1.5",
        "c.yaml:3: model[0].linear.units: expected a positive integer, got 0",
        "c.yaml:4: model[1].dropout.rate: expected a number in [0, 1), got 1.0",
        "c.yaml:5: optimizer.lr: expected a positive number, got -0.1",
        "c.yaml:8: training.batch_size: expected a positive integer, got 0",
        "c.yaml:9: training.early_stopping.monitor: expected one of 'val_loss', 'val_accuracy', 'train_loss', "
        "'train_accuracy', 'val_mae', 'val_r2', got 'val_acc'",
        "c.yaml:9: training.early_stopping.patience: expected a non-negative integer, got -1",
    ]


def test_missing_sections_and_required_options(tmp_path):
    lines = problems(tmp_path, "model:\n  - linear: {bias: false}\n").splitlines()
    assert lines == ["c.yaml:1: (top level): missing required section 'data'",
                     "c.yaml:2: model[0].linear: missing required key 'units' (a positive integer) for layer 'linear'"]


def test_cross_field_check_names_both_keys(tmp_path):
    text = MINIMAL.replace("data: xor", "data: {name: xor, val_fraction: 0}")
    assert problems(tmp_path, text + "training: {early_stopping: {monitor: val_loss}}\n") == (
        "c.yaml:6: training.early_stopping.monitor: monitors 'val_loss' but there is no validation split "
        "(data.val_fraction is 0 and data.val_path is not set); monitor a train_ metric or hold out validation data")


def test_accuracy_monitor_with_regression_loss_is_refused(tmp_path):
    text = MINIMAL + "loss: mse\ntraining: {early_stopping: {monitor: val_accuracy}}\n"
    assert "monitors 'val_accuracy' but loss 'mse' is a regression loss" in problems(tmp_path, text)


def test_bad_override_is_located_at_the_flag(tmp_path):
    message = problems(tmp_path, MINIMAL, ["training.epochs=many"])
    assert message == "--set training.epochs=many: training.epochs: expected a positive integer, got 'many'"


def test_override_without_equals_sign(tmp_path):
    assert "expected KEY.PATH=VALUE" in problems(tmp_path, MINIMAL, ["training.epochs"])


def test_malformed_yaml_gives_the_line(tmp_path):
    message = problems(tmp_path, "data: xor\nmodel: [linear\n  - relu\n")
    assert message.startswith("c.yaml:") and "invalid YAML" in message


def test_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    text = f"data: !!python/object/apply:os.system ['touch {marker}']\nmodel: [relu]\n"
    message = problems(tmp_path, text)
    assert "c.yaml:1" in message and "not allowed" in message
    assert not marker.exists()


def test_duplicate_keys_are_errors(tmp_path):
    message = problems(tmp_path, MINIMAL + "seed: 1\nseed: 2\n")
    assert message == "c.yaml:7: seed: duplicate key (first given on line 6)"


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")


def test_nested_sequential_is_validated_with_paths(tmp_path):
    text = MINIMAL.replace("  - relu\n", "  - sequential: [relu, {linear: {units: x}}]\n")
    assert problems(tmp_path, text) == ("c.yaml:4: model[1].sequential.layers[1].linear.units: expected a positive "
                                        "integer, got 'x'")


def test_early_stopping_false_disables_it(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "training: {early_stopping: false}\n"))
    assert cfg.training.early_stopping.enabled is False


@pytest.mark.parametrize("overrides", [(), ("seed=1",)])
def test_a_top_level_list_is_named_as_such_with_or_without_overrides(tmp_path, overrides):
    """--set used to replace a list by {} and report missing sections instead of the real problem."""
    assert problems(tmp_path, "- linear\n- relu\n", overrides) == (
        "c.yaml:1: (top level): expected a mapping of config sections (seed, device, data, model, loss, optimizer, "
        "schedule, training, callbacks), got a list of 2 items")


def test_an_empty_file_takes_its_sections_from_overrides(tmp_path):
    path = write(tmp_path, "")
    config = load_config(path, ["data=xor", "model=[{linear: {units: 2}}]"])
    assert config.data["name"] == "xor" and len(config.model) == 1


def _alias_bomb() -> str:
    """Nine levels of nine aliases: 1 KB that a plain YAML loader expands to 387 million values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\ndata: xor\nmodel: *a9\n"


@pytest.mark.parametrize("text, expected", [
    (_alias_bomb(), r"^c\.yaml:1: a5\[0\](\[\d\])+: the config expands to more than 100,000 values \(YAML aliases "
                    r"repeating one another\?\)$"),
    ("data: " + "[" * 5000 + "]" * 5000 + "\n", r"^c\.yaml:1: brackets nested more than 64 deep \(a config has a few "
                                                r"levels\)$"),
    ("".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n",
     r"^c\.yaml:66: k0\.k1\.k2\.k3\.\.\.: nested more than 64 levels deep \(a config has a few levels\)$"),
])
def test_hostile_configs_are_refused_quickly_with_the_line(tmp_path, text, expected, monkeypatch):
    """An alias bomb (was: past 5 GB and a minute) and 5,000 nested brackets (was: a RecursionError traceback): the
    work done is bounded by the limits, not by what the file expands to (values built, parses started)."""
    import re

    from dltrain.config import loader

    built, parsed = [0], [0]
    construct, parse = loader._construct, loader._Loader.get_single_node

    def counting_construct(*args):
        built[0] += 1
        return construct(*args)

    def counting_parse(self):
        parsed[0] += 1
        return parse(self)

    monkeypatch.setattr(loader, "_construct", counting_construct)
    monkeypatch.setattr(loader._Loader, "get_single_node", counting_parse)
    message = problems(tmp_path, text)
    assert re.match(expected, message), message
    assert built[0] <= loader.MAX_VALUES + 1  # refused at the limit, not after building 387 million values
    if "brackets" in expected:
        assert parsed[0] == 0  # refused before the parser recursed into them


def test_a_hostile_override_is_refused_too(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"brackets nested more than 64 deep"):
        load_config(path, ["model=" + "[" * 100 + "]" * 100])


def test_an_initializer_registered_after_import_can_be_named(tmp_path):
    """Initializer names were frozen into a Literal when dltrain was imported."""
    import numpy as np

    from dltrain.layers import build_model
    from dltrain.registry import initializers

    @initializers.register("test_halves")
    def halves(shape):
        return np.full(shape, 0.5, np.float32)

    try:
        config = load_config(write(tmp_path, MINIMAL), ["model[0].linear.init=test_halves"])
        assert config.model[0]["linear"]["init"] == "test_halves"
        model = build_model(config.model, (2,))
        assert (model.layers[0].weight.data == 0.5).all()
    finally:
        initializers._entries.pop("test_halves")


def test_an_unknown_initializer_suggests_the_right_one(tmp_path):
    message = problems(tmp_path, MINIMAL, ["model[0].linear.init=he_unifrom"])
    assert message.startswith("--set model[0].linear.init=he_unifrom: model[0].linear.init: unknown initializer "
                              "'he_unifrom' (did you mean 'he_uniform'?); available: glorot_normal, "), message


@pytest.mark.parametrize("stopping", ["false", "{patience: 2}"])
def test_without_a_validation_split_the_default_monitor_becomes_the_training_loss(tmp_path, stopping):
    """Turning stopping off (or leaving the monitor out) must not require naming a monitor: was refused with
    "monitors 'val_loss' but there is no validation split"."""
    text = MINIMAL.replace("data: xor", "data: {name: xor, val_fraction: 0}")
    text += f"training: {{early_stopping: {stopping}}}\n"
    config = load_config(write(tmp_path, text))
    assert config.training.early_stopping.monitor == "train_loss"
    assert config.training.early_stopping.enabled is (stopping != "false")


def test_a_named_validation_monitor_without_a_validation_split_is_still_an_error(tmp_path):
    text = MINIMAL.replace("data: xor", "data: {name: xor, val_fraction: 0}")
    assert "monitors 'val_accuracy' but there is no validation split" in problems(
        tmp_path, text + "training: {early_stopping: {monitor: val_accuracy}}\n")


def test_non_finite_numbers_are_refused_in_every_section(tmp_path):
    """Was: lr: .inf and the like validated, and the run died at its second step."""
    text = """\
    data: {name: spirals, noise: .inf, augment: [{gaussian_noise: {std: .nan}}]}
    model:
      - linear: {units: 16}
      - leaky_relu: {negative_slope: .nan}
      - linear: {units: 2}
    loss: {name: cross_entropy, class_weights: [1.0, .inf]}
    optimizer: {name: sgd, lr: 1e309}
    schedule: {name: one_cycle, max_lr: -.inf}
    training: {grad_clip: .inf, early_stopping: {min_delta: .inf}}
    """
    assert problems(tmp_path, text).splitlines() == [
        "c.yaml:1: data.noise: expected a finite number, got inf",
        "c.yaml:1: data.augment[0].std: expected a finite number, got nan",
        "c.yaml:4: model[1].leaky_relu.negative_slope: expected a finite number, got nan",
        "c.yaml:6: loss.class_weights[1]: expected a finite number, got inf",
        "c.yaml:7: optimizer.lr: expected a finite number, got inf",
        "c.yaml:8: schedule.max_lr: expected a finite number, got -inf",
        "c.yaml:9: training.grad_clip: expected a finite number, got inf",
        "c.yaml:9: training.early_stopping.min_delta: expected a finite number, got inf",
    ]


@pytest.mark.parametrize("value, shown", [("1e309", "inf"), (".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"),
                                          (".NaN", "nan"), ("-1e309", "-inf")])
def test_a_non_finite_override_is_refused_at_the_flag(tmp_path, value, shown):
    message = problems(tmp_path, MINIMAL, [f"optimizer.lr={value}"])
    assert message == f"--set optimizer.lr={value}: optimizer.lr: expected a finite number, got {shown}"


def test_finite_numbers_at_the_edge_of_the_range_are_accepted(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["optimizer.lr=1e308", "training.grad_clip=5e-324"])
    assert cfg.optimizer["lr"] == 1e308 and cfg.training.grad_clip == 5e-324
