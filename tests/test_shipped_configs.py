"""Every config in configs/ validates and builds a model for its data's shape."""

from pathlib import Path

import pytest

from dltrain.config import load_config
from dltrain.layers import build_model

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
INPUT_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "spirals": (2,), "xor": (2,)}


def input_shape(data: dict) -> tuple:
    if data["name"] == "wordlists":
        return (data["text"].max_length,)  # token ids of one word
    return INPUT_SHAPES[data["name"]]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_and_builds(path):
    cfg = load_config(path)
    # what a text data set tells the embedding: its vocabulary (any size will do to build) and padding id
    model = build_model(cfg.model, input_shape(cfg.data), {"vocab_size": 100, "padding_id": 0})
    classes = {"fashion-mnist": 10, "mnist": 10, "xor": 2, "wordlists": 7}.get(cfg.data["name"]) or \
        cfg.data.get("classes")
    assert model.output_shape == (classes,)
    assert model.num_parameters() > 0


def test_the_expected_configs_ship():
    assert {p.stem for p in CONFIGS} >= {"quickstart", "xor", "fashion_mlp", "fashion_cnn", "fashion_gru",
                                         "fashion_resnet", "wordlists_transformer", "wordlists_gru"}
