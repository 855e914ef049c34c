"""glibc's malloc is tuned for training (freed blocks kept for reuse) only when training starts, never on import."""

import subprocess
import sys

SPY = """
import ctypes
calls = []
real = ctypes.CDLL


class Spy:
    def __init__(self, lib):
        self.lib = lib

    def __getattr__(self, name):
        if name == "mallopt":
            return lambda *args: (calls.append(args), 1)[1]
        return getattr(self.lib, name)


ctypes.CDLL = lambda name, *a, **k: Spy(real(name, *a, **k)) if "libc" in str(name) else real(name, *a, **k)
"""


def _run(body: str) -> str:
    result = subprocess.run([sys.executable, "-c", SPY + body], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_dltrain_leaves_malloc_alone():
    assert _run("import dltrain, dltrain.backend, dltrain.training.trainer, dltrain.cli\nprint(calls)") == "[]"


def test_training_tunes_malloc_once():
    out = _run("""
import json
from dltrain.config import validate
from dltrain.training.reporting import SilentReporter
from dltrain.training.rundir import RunDir
from dltrain.training.trainer import Trainer
cfg = validate({"data": "xor", "model": [{"linear": {"units": 2}}], "training": {"epochs": 1}}, {}, "test")
for _ in range(2):
    Trainer(cfg, RunDir("unused", writable=False), "cpu", SilentReporter()).setup()
print(json.dumps(calls))
""")
    assert out == "[[-3, 33554432], [-1, 1073741824]]"
