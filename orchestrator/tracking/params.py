"""Trial config keys as MLflow params, and back: written by the tracker, read by the tables.

A param is text. Strings are stored as they are, every other value as JSON (``null``,
``true``, ``0.01``), so params read like the YAML they came from and parse back to their
type (``TrialConfig``'s annotation of the key).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from workers.config import TrialConfig, key_types

_ARROW = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def config_params(config: TrialConfig) -> dict[str, str]:
    """Every config key as an MLflow param: strings as they are, other values as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in config.to_dict().items()}


def config_types() -> dict[str, pa.DataType]:
    """Each trial config key's Arrow type, from TrialConfig's field annotations."""
    return {key: _ARROW[kind] for key, (kind, _) in key_types().items()}


def param_value(text: str | None, arrow_type: pa.DataType) -> Any:
    """A param as ``config_params`` wrote it, back as its typed value: strings as they are
    (``null`` for a nullable string is None), the rest JSON. Text that does not parse to the
    key's type gives None."""
    if text is None:
        return None
    if pa.types.is_string(arrow_type):
        return None if text == "null" else text
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if value is None:
        return None
    if pa.types.is_boolean(arrow_type):
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if pa.types.is_integer(arrow_type):
        return value if isinstance(value, int) else None
    return float(value)
