"""The house is one-way: the parts that train a model never import the parts that put a trained model to use."""

import ast
from pathlib import Path

import dltrain

PACKAGE = Path(dltrain.__file__).parent
# inference/ (predict, eval, serve) builds on these; none of them may import it
BELOW_INFERENCE = ("autograd.py", "backend", "config", "data", "functional", "layers", "losses.py", "optim",
                   "registry.py", "training")


def _imported_modules(path: Path) -> set[str]:
    """Every dltrain module a file imports, relative imports resolved against its package."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("dltrain")}


def test_nothing_below_inference_imports_it():
    files = [p for part in BELOW_INFERENCE for p in ([PACKAGE / part] if part.endswith(".py")
                                                     else sorted((PACKAGE / part).rglob("*.py")))]
    assert len(files) > 40
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in _imported_modules(p)
                                                      if m.startswith("dltrain.inference"))
                 for p in files}
    assert {name: modules for name, modules in offenders.items() if modules} == {}


def test_the_import_reader_sees_relative_imports():
    """The check above can fail: the reader resolves `from ..inference.loading import x` in a training module."""
    sample = PACKAGE / "cli" / "eval.py"
    assert "dltrain.inference.evaluate" in _imported_modules(sample)
    assert "dltrain.training.checkpoint" in _imported_modules(PACKAGE / "inference" / "loading.py")



def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    """Every import cycle, as 'a -> b -> a', found by walking each module's imports."""
    cycles = {}  # found in order, each once

    def visit(trail):
        for target in sorted(edges[trail[-1]]):
            if target in trail:
                cycle = trail[trail.index(target):] + [target]
                if cycle[0] == min(cycle):  # each cycle once, from its first module
                    cycles[" -> ".join(cycle)] = None
            else:
                visit(trail + [target])

    for name in sorted(edges):
        visit([name])
    return list(cycles)


def test_no_module_of_training_imports_one_that_imports_it_back():
    """Imports inside functions count too: they hide a cycle, they do not remove it (the k-fold readers live in
    training/fold_results.py so that checkpoint, runs and plotting need not reach the driver, folds.py)."""
    modules = {_module_name(p): p for p in sorted((PACKAGE / "training").glob("*.py")) if p.name != "__init__.py"}
    edges = {name: {m for m in _imported_modules(path) if m in modules and m != name} for name, path in modules.items()}
    assert len(edges) > 15
    assert _cycles(edges) == []


def test_the_cycle_check_can_fail():
    """A cycle through an import inside a function is found: the reader sees folds.py's function-level import of
    plotting, and the walk reports a two-module and a three-module cycle."""
    assert "dltrain.training.plotting" in _imported_modules(PACKAGE / "training" / "folds.py")
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}) == [
        "a -> b -> a", "c -> d -> e -> c"]
