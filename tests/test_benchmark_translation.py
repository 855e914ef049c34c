"""benchmarks/cpu.py trains in PyTorch what dltrain trains: the same learning rate and momentum at every step, the
same augmentation and test-time views, the same weight average; and its RESULTS.md and docs/speed.md writers work."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]


def load_cpu_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_cpu", ROOT / "benchmarks" / "cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu = load_cpu_benchmark()
EPOCHS, STEPS = 3, 10  # a tiny deterministic run: 3 epochs of 10 steps


def dltrain_schedule(case_or_config, epochs=EPOCHS, steps=STEPS):
    """The schedule and optimizer as dltrain's Trainer.setup builds them (dltrain/training/trainer.py), for a
    benchmark case or a config dict."""
    import dltrain.optim  # noqa: F401 (fills the registries)
    from dltrain.config import config_from_dict
    from dltrain.registry import optimizers, schedules

    values = cpu.case_config(case_or_config) if isinstance(case_or_config, str) else case_or_config
    cfg = config_from_dict(values)
    optimizer = optimizers.build(cfg.optimizer, params=[])
    schedule = schedules.build(cfg.schedule, base_lr=optimizer.lr, total_epochs=epochs, steps_per_epoch=steps,
                               batch_size=cfg.training.batch_size)
    return cfg, optimizer, schedule


def with_schedule(schedule: dict, batch_size: int = 128) -> dict:
    values = cpu.case_config("fashion_cnn")
    values["schedule"] = schedule
    values["training"]["batch_size"] = batch_size
    return values


SCHEDULES = [
    "fashion_cnn",  # cosine, min_factor 0.02, warmup_epochs 1 (as shipped)
    "fashion_gru",  # cosine, min_factor 0.05
    "fashion_mlp",  # exponential
    with_schedule({"name": "cosine", "warmup_epochs": 1.5, "warmup_start_factor": 0.1, "interval": "step"}),
    with_schedule({"name": "step", "step_size": 2, "gamma": 0.5, "base_batch_size": 64}, batch_size=256),
]


@pytest.mark.parametrize("case", SCHEDULES, ids=["fashion_cnn", "fashion_gru", "fashion_mlp", "cosine-step-warmup",
                                                 "step-linear-scaling"])
def test_lr_factor_is_dltrains_schedule(case):
    cfg, optimizer, schedule = dltrain_schedule(case)
    raw = cpu.case_config(case)["schedule"] if isinstance(case, str) else case["schedule"]
    factor = cpu.lr_factor(raw, EPOCHS, STEPS, cfg.training.batch_size)
    for epoch in range(EPOCHS):
        for step in range(STEPS):
            assert optimizer.lr * factor(epoch * STEPS + step) == pytest.approx(schedule.lr(epoch, step), rel=1e-12)


@pytest.mark.parametrize("case", ["fashion_cnn", "fashion_resnet", "fashion_mlp"])
def test_torch_learning_rate_and_momentum_every_step(case):
    """The PyTorch side's optimizer, stepped as the benchmark steps it, trains every step with dltrain's learning
    rate and momentum (fashion_resnet: one_cycle, whose momentum cycle is Adam's beta1)."""
    torch = pytest.importorskip("torch")
    cfg, ours, schedule = dltrain_schedule(case)
    raw = cpu.case_config(case)
    param = torch.nn.Parameter(torch.zeros(2, 2))
    opt = cpu.torch_optimizer([param], raw["optimizer"])
    theirs = cpu.torch_schedule(opt, raw["schedule"], EPOCHS, STEPS, cfg.training.batch_size)
    for epoch in range(EPOCHS):
        for step in range(STEPS):
            lr = schedule.lr(epoch, step)  # what dltrain's train_epoch sets before each step
            momentum = schedule.momentum(epoch, step)
            if momentum is not None:
                ours.set_momentum(momentum)
            group = opt.param_groups[0]
            assert group["lr"] == pytest.approx(lr, rel=1e-12, abs=1e-18)
            if "betas" in group:
                assert group["betas"][0] == pytest.approx(ours.beta1, rel=1e-12)
            else:
                assert group["momentum"] == pytest.approx(ours.momentum, rel=1e-12)
            opt.step()  # no gradient: only the schedule moves
            theirs.step()
    if case == "fashion_resnet":
        assert isinstance(theirs, torch.optim.lr_scheduler.OneCycleLR)


def test_augmentation_and_test_time_views_are_dltrains():
    torch = pytest.importorskip("torch")
    from dltrain.data.augment import _shift
    from dltrain.training.model import TEST_TIME_VIEWS, average_outputs

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 5, 7)).astype(np.float32)
    fill = -0.8
    for mode in ("constant", "reflect", "edge"):
        dy, dx = rng.integers(0, 5, 6), rng.integers(0, 5, 6)
        ours = _shift(x, dy, dx, 2, fill, mode)
        theirs = cpu.torch_shift(torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(dx), 2, fill, mode)
        np.testing.assert_array_equal(theirs.numpy(), ours)
    names = list(TEST_TIME_VIEWS)
    for name, view in zip(names, cpu.torch_views(names, fill)):
        np.testing.assert_array_equal(view(torch.from_numpy(x)).numpy(), TEST_TIME_VIEWS[name](x, fill), err_msg=name)
    flip = cpu.torch_augment(["horizontal_flip"], fill)  # p 0.5: each image mirrored or kept
    flipped = flip(torch.from_numpy(x)).numpy()
    assert all(np.array_equal(f, i) or np.array_equal(f, i[..., ::-1]) for f, i in zip(flipped, x))
    crop = cpu.torch_augment([{"random_crop": {"padding": 2}}], fill)(torch.from_numpy(x)).numpy()
    assert crop.shape == x.shape and set(np.unique(crop)) <= set(np.unique(x)) | {np.float32(fill)}
    stacked = rng.standard_normal((3, 4, 10)).astype(np.float32)
    np.testing.assert_allclose(cpu.torch_average(torch.from_numpy(stacked)).numpy(),
                               average_outputs(stacked, "classification"), rtol=1e-5, atol=1e-6)


def test_weight_average_is_dltrains():
    """training.ema: the average starts at the initial weights and after every step becomes decay * average +
    (1 - decay) * weights, batchnorm's running statistics included (dltrain's WeightAveraging)."""
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    ema = cpu.torch_ema(net, 0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(2.0)
    ema.update_parameters(net)
    live = net.state_dict()
    for name, value in ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * initial[name] + 0.1 * live[name], msg=name)


def fake_results(epochs=3):
    """Results as main() collects them, for two cases (one with the hand-written NumPy loop)."""
    def run(first, later, setup=None):
        result = {"epoch_seconds": [first] + [later] * (epochs - 1), "peak_mb": 500.0, "train_loss": [2.0, 1.0, 0.5],
                  "val_accuracy": [0.5, 0.6, 0.7]}
        return result if setup is None else {**result, "setup_seconds": setup}

    results = {"tiny16": {"dltrain": [run(1.0, 0.5, 0.4)], "torch": [run(2.0, 1.0, 1.9)], "numpy": [run(0.3, 0.2)]},
               "fashion_resnet": {"dltrain": [run(60.0, 40.0, 4.0)], "torch": [run(30.0, 20.0, 2.0)]}}
    machine = {"cpu": {"model": "AMD EPYC", "avx512": True, "avx2": True, "amx": False}, "cores": 2,
               "blas": "openblas 0.3 SkylakeX", "gemm": 2e11, "torch": "2.13.0+cpu", "torch_backends": "BLAS mkl",
               "date": "2026-12-04", "reps": 1, "epochs": epochs}
    return results, {"tiny16": 54000, "fashion_resnet": 54000}, machine


def test_results_and_readme_writers(tmp_path):
    results, samples, machine = fake_results()
    text = cpu.results_section(results, samples, machine, "python benchmarks/cpu.py")
    assert "AMD EPYC, AVX-512 (avx512f): yes" in text and "openblas 0.3 SkylakeX" in text
    row = next(line for line in text.splitlines() if line.startswith("| fashion_resnet |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:10] == ["900", "1,350", "1,800", "2,700", "0.50", "0.50", "1.50", "1.50"]
    readme = tmp_path / "speed.md"
    original = (ROOT / "docs" / "speed.md").read_text()
    readme.write_text(original)
    block = cpu.readme_block(results, samples, machine)
    cpu.replace_readme_table(readme, block)
    start, end = cpu.TABLE_MARKERS
    written = readme.read_text()
    assert written.split(start)[0] == original.split(start)[0]
    assert written.split(end)[1] == original.split(end)[1]
    assert "| `fashion_resnet` as shipped | 128 | 1,350 | 2,700 | 0.50 | 0.50 | 1.50 / 1.50 | 4.0 | 1.00 |" in written
    cpu.replace_readme_table(readme, block)  # again: the same file
    assert readme.read_text() == written
    assert math.isclose(cpu.epoch_figures(results["tiny16"]["dltrain"][0], 54000)["first_over_later"], 2.0)
