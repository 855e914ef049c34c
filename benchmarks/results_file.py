"""benchmarks/RESULTS.md is shared: cpu.py owns the top, mpi_scaling.py and gpu.py one '## ' section each."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, title: str | None, text: str) -> None:
    """Put `text` in place of the section whose heading starts with '## {title}' (None: the top part before
    the first section); other sections are kept, in order, and a missing one is added at the end."""
    old = path.read_text() if path.exists() else ""
    head, *sections = old.split("\n## ")
    sections = ["## " + s.rstrip("\n") + "\n" for s in sections]
    if title is None:
        head = text
    else:
        head = head.rstrip("\n") + "\n"
        mine = [i for i, s in enumerate(sections) if s.startswith(f"## {title}")]
        if mine:
            sections[mine[0]] = text
        else:
            sections.append(text)
    path.write_text("\n".join([head.rstrip("\n") + "\n", *[s.rstrip("\n") + "\n" for s in sections]]))
