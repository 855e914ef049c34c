"""Adding a layer is checked, not remembered: every registered layer has a gradient check, an ONNX export (or an
explicit `not_exportable` reason) and a row in the layer table of the docs' config page (docs/config.md)."""

import re
from pathlib import Path

from test_attention_layers import ATTENTION_CASES
from test_image_and_sequence_layers import LAYER_CASES
from test_layers import LAYER_SPECS

from dltrain import registry
from dltrain.config.schema import _import_registries
from dltrain.export.onnx import exportable

README = Path(__file__).resolve().parents[2] / "docs" / "config.md"  # the config page's layer table
# layers whose gradient check cannot be a check_layer case (integer inputs), and the test that checks them instead
GRADIENTS_CHECKED_ELSEWHERE = {
    "embedding": "test_image_and_sequence_layers.py::test_embedding_gradient_accumulates_repeated_tokens",
}


def layer_names_in(spec) -> set[str]:
    """Every layer a spec names, nested ones included: 'relu', {'linear': {...}}, {'residual': {'layers': [...]}}.
    (Gradient cases live in test_layers.py's LAYER_SPECS, test_image_and_sequence_layers.py's LAYER_CASES and
    test_attention_layers.py's ATTENTION_CASES.)"""
    if isinstance(spec, str):
        return {spec}
    ((name, options),) = spec.items()
    nested = options.get("layers", []) if isinstance(options, dict) else options or []
    return {name}.union(*(layer_names_in(s) for s in nested))


def readme_layer_names(text: str) -> set[str]:
    """The backticked names in the first column of the README table headed '| name | parameters | notes |'."""
    lines = text.splitlines()
    start = lines.index("| name | parameters | notes |") + 2
    names = set()
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`([a-z0-9_]+)`", line.split("|")[1]))
    return names


def coverage_problems(entries: dict) -> list[str]:
    """What each {name: layer class} lacks."""
    with_gradients = set(GRADIENTS_CHECKED_ELSEWHERE).union(
        *(layer_names_in(spec) for spec, _ in (*LAYER_SPECS.values(), *LAYER_CASES.values())),
        *(layer_names_in(spec) for spec, _, _ in ATTENTION_CASES.values()))
    in_readme = readme_layer_names(README.read_text())
    problems = []
    for name, cls in sorted(entries.items()):
        if name not in with_gradients:
            problems.append(f"{name}: no gradient case (add one to LAYER_SPECS in tests/layers/test_layers.py)")
        if not exportable(cls) and not getattr(cls, "not_exportable", None):
            problems.append(f"{name}: no ONNX export (an entry in dltrain/export/onnx.py's _EXPORTERS, a to_onnx "
                            f"method, or a class attribute not_exportable = 'why')")
        if name not in in_readme:
            problems.append(f"{name}: no row in the README's layer table")
    return problems


def built_in_layers() -> dict:
    _import_registries()
    return {name: registry.layers.get(name) for name in registry.layers.names()
            if registry.layers.get(name).__module__.startswith("dltrain.")}  # not layers tests register


def test_every_built_in_layer_is_covered():
    entries = built_in_layers()
    assert len(entries) >= 27
    assert {"layernorm", "multihead_attention", "transformer_encoder", "positional_embedding", "sequence_pool",
            "mean_pool"} <= set(entries)
    assert coverage_problems(entries) == []


def test_a_layer_missing_from_every_table_is_named_three_times():
    class MadeUp:
        registry_name = "made_up"

    assert coverage_problems({"made_up": MadeUp}) == [
        "made_up: no gradient case (add one to LAYER_SPECS in tests/layers/test_layers.py)",
        "made_up: no ONNX export (an entry in dltrain/export/onnx.py's _EXPORTERS, a to_onnx method, or a class "
        "attribute not_exportable = 'why')",
        "made_up: no row in the README's layer table",
    ]
    MadeUp.not_exportable = "it reads files"
    assert len(coverage_problems({"made_up": MadeUp})) == 2
