"""The documentation: every registry entry and command says what it does; the reference pages are generated from the
code (a new parameter appears in them with no edit to docs/); the site builds with `mkdocs build --strict` (no broken
link, no missing page or picture, no warning)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from dltrain import reference, registry
from dltrain.cli import app
from dltrain.config.schema import _import_registries

ROOT = Path(__file__).resolve().parent.parent


def _says_what_it_does(text: str | None) -> bool:
    """A first sentence of three words or more."""
    first = (text or "").strip().split("\n\n")[0]
    return len(re.findall(r"[A-Za-z]+", first)) >= 3


@pytest.mark.parametrize("page", list(reference.REGISTRIES))
def test_every_registry_entry_has_a_docstring_and_every_parameter_is_in_its_page(page):
    _import_registries()
    reg = getattr(registry, reference.REGISTRIES[page][0])
    text = reference.registry_page(page)
    for name in reg.names():
        assert _says_what_it_does(reg.get(name).__doc__), f"{reg.kind} {name!r} has no docstring saying what it does"
        assert f"## `{name}`" in text
        section = text.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
        for param in reg.params(name):
            assert f"| `{param.name}` |" in section, (name, param.name)


def test_every_command_and_option_says_what_it_does():
    group = typer.main.get_command(app)
    context = typer.Context(group, info_name="dltrain")
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert _says_what_it_does(command.help), f"dltrain {name} has no help saying what it does"
        for param in command.params:
            if not getattr(param, "hidden", False):
                assert (getattr(param, "help", None) or "").strip(), f"dltrain {name}: {param.name} has no help"
    assert "## dltrain serve" in reference.cli_page() and "`--max-batch-size`" in reference.cli_page()


def test_a_new_parameter_appears_in_the_generated_reference():
    """What the docs site builds from: registering a layer (as a user's --code file does) with a parameter puts it,
    its type, default and docstring into the layers page, with no edit to docs/."""
    from dltrain.layers.module import Module
    from dltrain.registry import PositiveInt

    assert "docs_probe" not in reference.registry_page("layers")

    class Probe(Module):
        """Scales its input by a whole number, to show the reference follows the code."""

        def __init__(self, factor: PositiveInt = 3):
            super().__init__()
            self.factor = factor

    registry.layers.register("docs_probe")(Probe)
    try:
        text = reference.registry_page("layers")
    finally:
        registry.layers._entries.pop("docs_probe")
    section = text.split("## `docs_probe`", 1)[1]
    assert "Scales its input by a whole number, to show the reference follows the code." in section
    assert "| `factor` | a positive integer | `3` |" in section


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="MkDocs is not installed (pip install -e '.[docs]', part of '.[test]')")
def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    env = {"NO_MKDOCS_2_WARNING": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    result = subprocess.run([str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    layers = (tmp_path / "site" / "reference" / "layers" / "index.html").read_text()
    assert "transformer_encoder" in layers and "a positive integer" in layers
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
