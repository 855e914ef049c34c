"""Tables for people: rich on a terminal, aligned plain columns otherwise (pipes, files, CI logs)."""

from __future__ import annotations

import sys


def print_table(header: list[str], lines: list[list[str]], right=(), title: str | None = None) -> None:
    """`right`: the columns aligned right (numbers), or True for all of them."""
    aligned_right = [right is True or column in right for column in header]
    if sys.stdout.isatty():
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415

        table = Table(title=title)
        for column, to_right in zip(header, aligned_right):
            table.add_column(column, justify="right" if to_right else "left")
        for line in lines:
            table.add_row(*line)
        Console().print(table)
        return
    widths = [max(len(column), *(len(line[i]) for line in lines)) for i, column in enumerate(header)]
    for line in [header, *lines]:
        cells = [cell.rjust(w) if to_right else cell.ljust(w) for cell, w, to_right in zip(line, widths, aligned_right)]
        print("  ".join(cells).rstrip(), flush=True)
