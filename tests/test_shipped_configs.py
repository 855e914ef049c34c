"""Every config in configs/ validates and builds a model for its data's shape."""

from pathlib import Path

import pytest

from dltrain.config import load_config
from dltrain.layers import build_model

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
INPUT_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "spirals": (2,), "xor": (2,)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_and_builds(path):
    cfg = load_config(path)
    model = build_model(cfg.model, INPUT_SHAPES[cfg.data["name"]])
    classes = {"fashion-mnist": 10, "mnist": 10, "xor": 2}.get(cfg.data["name"]) or cfg.data.get("classes")
    assert model.output_shape == (classes,)
    assert model.num_parameters() > 0


def test_the_expected_configs_ship():
    assert {p.stem for p in CONFIGS} >= {"quickstart", "xor", "fashion_mlp", "fashion_cnn", "fashion_gru",
                                         "fashion_resnet"}
