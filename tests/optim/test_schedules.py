import math

import pytest

from dltrain.registry import schedules


def make(name, **options):
    common = {"base_lr": 0.1, "total_epochs": 10, "steps_per_epoch": 4}
    common.update(options)
    return schedules.get(name)(**common)


def test_constant():
    s = make("constant")
    assert [s.lr(e) for e in range(3)] == [0.1, 0.1, 0.1]


def test_exponential_multiplies_by_gamma_each_epoch():
    s = make("exponential", gamma=0.98)
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(3) == pytest.approx(0.1 * 0.98 ** 3)
    assert s.lr(3, step=2) == s.lr(3)  # per epoch: constant within it


def test_exponential_per_step_is_smooth():
    s = make("exponential", gamma=0.5, interval="step")
    assert s.lr(1, step=2) == pytest.approx(0.1 * 0.5 ** 1.5)


def test_step_schedule():
    s = make("step", step_size=3, gamma=0.1)
    assert [round(s.lr(e), 6) for e in (0, 2, 3, 5, 6)] == [0.1, 0.1, 0.01, 0.01, 0.001]


def test_cosine_reaches_min_at_the_end():
    s = make("cosine", min_factor=0.1)
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(5) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert s.lr(10) == pytest.approx(0.01)


def test_linear_warmup_then_schedule():
    s = make("cosine", warmup_epochs=2, warmup_start_factor=0.0)
    # during warmup: per step, from 0 up to the base rate
    assert s.lr(0, 0) == 0.0
    assert s.lr(0, 2) == pytest.approx(0.1 * 0.5 / 2)
    assert s.lr(1, 2) == pytest.approx(0.1 * 1.5 / 2)
    # after warmup the cosine starts from its top and spans the remaining 8 epochs
    assert s.lr(2) == pytest.approx(0.1)
    assert s.lr(6) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))


def test_linear_scaling_rule():
    s = make("constant", batch_size=512, base_batch_size=128)
    assert s.lr(0) == pytest.approx(0.4)
