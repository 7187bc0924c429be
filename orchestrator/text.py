"""One way to show values to people: config values, metric values, durations, aligned tables.

Used by the dry run, the progress line, the results and status tables, the report and the
spec's messages, so that a value reads the same everywhere.
"""

from __future__ import annotations

from typing import Any, Sequence

from workers import contract

# How the tables name and show the metrics they carry (a table picks its columns by name).
METRIC_LABELS = {
    contract.TRAIN_ACC: "train acc",
    contract.TEST_ACC: "test acc",
    contract.TEST_BEST_ACC: "best test acc",
    contract.ALIGN_GRAD: "align/grad",
    contract.ALIGN_REP: "align/rep",
}


def format_value(value: Any, missing: str = "null") -> str:
    """A config value as YAML would show it: ``null`` (or ``missing``), ``true``, ``0.001``."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe(value: Any) -> str:
    """'list [1, 2]', 'string "abc"': the YAML type name and a short rendering."""
    kinds = {dict: "mapping", list: "list", str: "string", bool: "bool", int: "int",
             float: "float", type(None): "null"}
    kind = kinds.get(type(value), type(value).__name__)
    if value is None:
        return kind
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 60 else shown[:57] + '...'}"


def format_metric(name: str, value: float | None) -> str:
    """An accuracy as a percentage (``98.7%``), any other metric with three decimals; ``-``
    when missing."""
    if value is None:
        return "-"
    return f"{value:.1%}" if name.endswith("acc") else f"{value:.3f}"


def format_seconds(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def count(n: int, noun: str) -> str:
    """``1 trial``, ``3 trials``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def listing(items: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` items joined by ``; ``, then ``; and N more``."""
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], rule: bool = False) -> str:
    """Columns padded to their widest cell, two spaces apart; ``rule`` adds a dashed line
    under the header."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    if rule:
        lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
