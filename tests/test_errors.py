"""One exception family, in one module: every error a user can cause is a DltrainError defined in dltrain/errors.py."""

import importlib
import inspect
import pkgutil

import dltrain
from dltrain import errors


def test_every_error_class_lives_in_errors_py():
    defined_elsewhere = []
    for info in pkgutil.walk_packages(dltrain.__path__, "dltrain."):
        if info.name.endswith((".cuda", ".__main__")):  # needs CuPy / runs the CLI; neither defines an exception
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name
                    and info.name != "dltrain.errors"):
                defined_elsewhere.append(f"{info.name}.{name}")
    assert defined_elsewhere == []
    family = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, errors.DltrainError)]
    assert {"RunDirError", "ExportError", "Diverged", "Interrupted"} <= {c.__name__ for c in family}


def test_a_registry_builds_an_entry_from_its_spec_and_what_code_supplies():
    import dltrain.optim  # noqa: F401 (registers the optimizers)
    from dltrain.layers import Parameter
    from dltrain.registry import optimizers

    params = [Parameter(__import__("numpy").zeros(2))]
    sgd = optimizers.build({"name": "sgd", "lr": 0.3, "momentum": 0.5}, params=params)
    assert type(sgd).__name__ == "SGD" and sgd.lr == 0.3 and sgd.momentum == 0.5 and sgd.params == params
