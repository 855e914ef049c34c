"""OpenBLAS's idle threads stop spinning soon after a product, so they leave the cores to the compiled kernels:
dltrain sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS, unless the user set it."""

import os
import subprocess
import sys

PROBE = "import sys, os, dltrain; print('numpy' in sys.modules, os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"


def _probe(env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_set_before_numpy_loads():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    assert _probe(env) == "True 21"


def test_the_users_value_wins():
    assert _probe({**os.environ, "OPENBLAS_THREAD_TIMEOUT": "6"}) == "True 6"


def test_nothing_imports_numpy_before_it_is_set():
    # the console script imports dltrain.cli, which imports the package first; NumPy must not come before it
    code = ("import builtins, os; real = builtins.__import__\n"
            "def spy(name, *a, **k):\n"
            "    if name == 'numpy' or name.startswith('numpy.'):\n"
            "        assert os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'numpy imported first'\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = spy\nimport dltrain.cli\nprint('ok')")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.stdout.strip() == "ok", result.stderr
