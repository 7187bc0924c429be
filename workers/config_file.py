"""Reading YAML files of trial keys (``xmem trial CONFIG.yaml``) with precise errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from workers.config import TrialConfig, parse_set_option
from workers.errors import ConfigError


def read_yaml_mapping(path: str | Path, what: str = "file") -> dict[str, Any]:
    """The top-level mapping of a YAML file.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML (with line and
            column), or its top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{what} not found (looked at {path.resolve()})"], source=str(path))
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError([f"YAML syntax error at {where}{problem}"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"cannot read {what}: {error}"], source=str(path)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"the top level must be a mapping of keys to values, got {type(loaded).__name__}"],
                          source=str(path))
    return loaded


def load_trial_config(path: str | Path | None, assignments: Iterable[str] = ()) -> TrialConfig:
    """Trial config from an optional YAML file of trial keys, overridden by ``KEY=VALUE``s."""
    values: dict[str, Any] = read_yaml_mapping(path, "trial config file") if path else {}
    for assignment in assignments:
        key, value = parse_set_option(assignment)
        values[key] = value
    source = str(path) + " with --set" if path and assignments else (str(path) if path else "--set")
    return TrialConfig.from_mapping(values, source=source)
