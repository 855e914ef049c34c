"""Hostile and broken inputs: pickles never run, YAML tags never run, fuzzed configs and checkpoints
end in exit 2 with a message (or a valid run), never in a traceback."""

import pickle
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dltrain.cli import app

VALID = yaml.safe_load(textwrap.dedent("""\
    seed: 0
    data: {name: blobs, n_samples: 60, classes: 3}
    model:
      - linear: {units: 4}
      - relu
      - linear: {units: 3}
    optimizer: {name: sgd, lr: 0.1}
    training: {epochs: 1, batch_size: 8}
    """))


class _Exploit:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_pickle_given_as_checkpoint_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps(_Exploit(marker)))
    result = invoke("eval", evil)
    assert result.exit_code == 2
    assert "not a valid safetensors checkpoint" in result.output
    assert not marker.exists()


def test_pickle_given_as_data_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "data.npz"
    evil.write_bytes(pickle.dumps(_Exploit(marker)))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**VALID, "data": {"name": "npz", "path": str(evil)}}))
    result = invoke("check", config)
    assert result.exit_code == 2 and "error:" in result.output
    assert not marker.exists()


KEYS = [("seed",), ("data", "n_samples"), ("model", 0, "linear", "units"), ("model", 2, "linear"),
        ("data", "classes"), ("data", "name"), ("model",), ("model", 0),
        ("optimizer", "lr"), ("optimizer", "name"), ("training", "epochs"), ("training", "batch_size"),
        ("training",), ("loss",), ("device",)]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**4, 10**4), st.integers(10**9, 10**19),
                   st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(0, 5), max_size=2))


def mutate(config: dict, path: tuple, value, drop: bool) -> dict:
    config = yaml.safe_load(yaml.safe_dump(config))
    target = config
    for part in path[:-1]:
        target = target[part]
    if drop and isinstance(target, dict):
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return config


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(KEYS), value=VALUES, drop=st.booleans())
def test_fuzzed_configs_exit_2_with_a_message_or_run(tmp_path, path, value, drop):
    if path == ("training", "epochs") and isinstance(value, int) and not isinstance(value, bool) and value > 3:
        value = 3  # a valid but huge epoch count (10^10) trains for hours: the run itself is not what is fuzzed here
    config = tmp_path / "fuzz.yaml"
    config.write_text(yaml.safe_dump(mutate(VALID, path, value, drop)))
    run = tmp_path / "run"
    result = invoke("train", config, "--run-dir", run, "--quiet")
    if run.exists():
        import shutil
        shutil.rmtree(run)
    assert result.exit_code in (0, 1, 2), result.output  # 1: a valid config whose run diverged (e.g. lr 705)
    assert not isinstance(result.exception, BaseException) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    if result.exit_code == 2:
        assert result.output.startswith("error: ") and "Traceback" not in result.output
    if result.exit_code == 1:
        assert "error: loss became" in result.output and "Traceback" not in result.output


def _valid_checkpoint(directory: Path) -> bytes:
    config = directory / "c.yaml"
    config.write_text(yaml.safe_dump(VALID))
    assert invoke("train", config, "--run-dir", directory / "run", "--quiet").exit_code == 0
    return (directory / "run" / "checkpoints" / "best.safetensors").read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_byte_mutations_of_a_checkpoint_never_crash_eval(tmp_path, data):
    original = tmp_path / "original.bin"
    if not original.exists():
        original.write_bytes(_valid_checkpoint(tmp_path))
    raw = bytearray(original.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bytes(raw))
    result = invoke("eval", broken, "--json")
    assert result.exit_code in (0, 2), result.output
    assert not isinstance(result.exception, BaseException) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
