"""Aligned plain-text tables for the terminal (dry run, results, status)."""

from __future__ import annotations

from typing import Any, Sequence


def format_value(value: Any, missing: str = "null") -> str:
    """A config value or number as shown to people: floats short (``%g``), None as ``missing``."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], rule: bool = False) -> str:
    """Columns padded to their widest cell, two spaces apart; ``rule`` adds a dashed line
    under the header."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    if rule:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
