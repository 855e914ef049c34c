"""What the benchmark scripts share: their command line, the alternating runs, and RESULTS.md, where
cpu.py owns the top part and mpi_scaling.py and gpu.py one '## ' section each."""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent


def arguments(doc: str, cases: dict, reps: int) -> argparse.Namespace:
    """--cases, --reps, --out; --worker FRAMEWORK CASE is how a script runs one measurement in a child process."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(cases))
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CASE"), help=argparse.SUPPRESS)
    return parser.parse_args()


def alternating(case: str, frameworks: list[str], reps: int, measure) -> dict:
    """{framework: [one result per repetition]}; the order flips every repetition, so that both sides see
    the machine in the same states."""
    runs = {f: [] for f in frameworks}
    for rep in range(reps):
        for framework in (frameworks if rep % 2 == 0 else frameworks[::-1]):
            runs[framework].append(measure(framework, case))
    return runs


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
