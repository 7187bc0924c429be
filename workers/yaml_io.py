"""Reading the YAML users write (trial config files, sweep specs, ``--set`` values), with precise errors.

One loader for every YAML the user writes: ``1e-3`` reads as a float, and a key written
twice in one mapping is reported instead of silently keeping the last one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from workers.config import TrialConfig
from workers.errors import ConfigError


class UserYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two fixes for hand-written files.

    * ``1e-3`` reads as a float. PyYAML follows YAML 1.1, where a float needs a dot and a
      signed exponent, so ``sigma: [1e-3]`` would otherwise be the string "1e-3".
    * A key written twice in one mapping is recorded in ``duplicate_keys``: PyYAML keeps the
      last one without a word, so a second ``grid:`` would silently replace the first.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicate_keys: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                self.duplicate_keys.append(
                    f"line {line}: key '{key}' is also on line {first_line[key]} of the same "
                    "mapping; YAML would keep only the last one, so remove or merge one")
            else:
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


UserYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_yaml(path: Path, empty_hint: str = "") -> tuple[Any, list[str]]:
    """(the parsed YAML or None when there is none, problems). Syntax errors give a line."""
    if not path.exists():
        return None, [f"file not found (relative paths start at {Path.cwd()})"]
    if path.is_dir():
        return None, ["is a folder; expected a YAML file"]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return None, [f"cannot read the file: {error}"]
    loader = UserYamlLoader(text)
    try:
        raw = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        return None, [yaml_error_message(error, text)]
    except yaml.YAMLError as error:
        return None, [f"not valid YAML: {error}"]
    finally:
        loader.dispose()
    if raw is None:
        return None, ["the file is empty" + (f"; {empty_hint}" if empty_hint else "")]
    return raw, loader.duplicate_keys


def yaml_error_message(error: yaml.MarkedYAMLError, text: str) -> str:
    """One line: where the syntax error is (1-based line and column), what, and the line."""
    mark = error.problem_mark or error.context_mark
    what = error.problem or error.context or "syntax error"
    if mark is None:
        return f"YAML syntax error: {what}"
    lines = text.splitlines()
    near = lines[mark.line].strip() if mark.line < len(lines) else ""
    message = f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {what}"
    if error.context and error.context_mark is not None and error.context_mark is not mark:
        message += f" ({error.context} at line {error.context_mark.line + 1})"
    return message + (f"; the line reads: {near}" if near else "")


def parse_yaml_value(text: str) -> Any:
    """One value written as YAML (``10``, ``1e-3``, ``null``, ``[1, 2]``); plain text otherwise."""
    if not text.strip():
        return None
    try:
        return yaml.load(text, Loader=UserYamlLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError:
        return text


def parse_set_option(assignment: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` from ``--set``; VALUE is read as YAML (``10`` -> int, ``1e-3`` ->
    float, ``null`` -> None); text that is not YAML stays a string.

    Raises:
        ConfigError: when there is no ``=``.
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"--set expects KEY=VALUE, got {assignment!r}"], source="--set")
    return key.strip(), parse_yaml_value(raw)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping).

    Raises:
        ConfigError: the file is missing or unreadable, not valid YAML (with line and
            column), has a repeated key, or its top level is not a mapping.
    """
    loaded, problems = read_yaml(Path(path))
    if problems and not (loaded is None and problems[0].startswith("the file is empty")):
        raise ConfigError(problems, source=str(path))
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([f"the top level must be a mapping of keys to values, got "
                           f"{type(loaded).__name__}"], source=str(path))
    return loaded


def load_trial_config(path: str | Path | None, assignments: Iterable[str] = ()) -> TrialConfig:
    """Trial config from an optional YAML file of trial keys, overridden by ``KEY=VALUE``s."""
    values: dict[str, Any] = read_yaml_mapping(path) if path else {}
    for assignment in assignments:
        key, value = parse_set_option(assignment)
        values[key] = value
    source = str(path) + " with --set" if path and assignments else (str(path) if path else "--set")
    return TrialConfig.from_mapping(values, source=source)
