"""Sweep specs: load a YAML file, validate it in one pass, expand it into trials.

A spec names a sweep (the MLflow experiment and the Tune run both take its name) and says
which trial configs to run: ``defaults`` under every point of the cartesian ``grid``, minus
the points an ``exclude`` entry matches, plus the ``include`` points::

    name: fig1
    defaults: {dataset: cifar10, activation: sin, epochs: 1000}
    grid:
      sigma: [0.001, 0.01, 0.1, 1.0, 10.0]
      seed: [0, 1, 2]
      "lr,momentum": [[0.01, 0.0], [0.001, 0.9]]   # linked: these keys vary together
    exclude: [{sigma: 10.0, seed: 2}]
    include: [{model: convnet, sigma: null}]
    resources: {cpu: 1, gpu: 1}
    packing: {max_size: auto}

``load_spec`` reports every problem in the file at once, each naming its key path
(``grid.sigma[2]``, ``include[0].activation``), and returns a ``SweepSpec`` holding the parsed
grid axes; ``orchestrator.expand.expand_trials`` turns it into trials.

This module must not import ray, mlflow or torch (directly or through ``workers``), so that
a dry run answers in well under a second on a laptop.
"""

from __future__ import annotations

import collections
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.expand import (TRIAL_DEFAULTS, Axis, Expansion, expand_candidates, same_value,
                                 size_problem, trial_id)
from orchestrator.packing import Packing, check_packing
from orchestrator.text import count, describe, format_value, listing
from workers.config import TrialConfig, config_problems, did_you_mean, key_problems
from workers.errors import ConfigError
from workers.yaml_io import read_yaml

DEFAULT_MAX_FAILURES = 2
# A grid key holding several comma-joined trial keys ("sigma,temperature") links them.
LINK_SEPARATOR = ","
# What each top-level key of a spec file means, in the order the keys are listed to users
# (SweepSpec and ``xmem schema`` read it from here; the README's spec reference follows it).
SPEC_KEY_DOCS = {
    "name": "The sweep's name, also its MLflow experiment, Tune run and folder name: letters, "
            "digits, '_', '.' and '-', starting with a letter or digit.",
    "description": "Free text, shown in listings and stored with the experiment.",
    "defaults": "Trial keys set for every trial (grid values and include entries override them).",
    "grid": f"Trial key -> list of values, or linked keys joined by '{LINK_SEPARATOR}' -> list "
            "of lists of values; the trials are the cartesian product, the first key varying "
            "slowest.",
    "exclude": "Grid points matching every key of one entry are dropped.",
    "include": "Extra trials, each entry merged over `defaults` (not over grid values).",
    "resources": "What Ray reserves for each pack of trials (see packing); default {cpu: 1, gpu: 0}.",
    "packing": "How many trials may train together as one batched computation, e.g. "
               "{max_size: auto} (the default: sized by the GPU's free memory, 1 on a CPU) or "
               "{max_size: 8}; each pack is one Ray trial holding `resources`.",
    "max_concurrent": "Most packs (Ray trials) running at once; null = as many as the "
                      "resources allow.",
    "max_failures": "Automatic retries of a failed trial (from its last checkpoint).",
    "max_trials": "The most trials the sweep may have (default 10,000): a larger grid, most "
                  "likely a typo, is refused before it is expanded. Raise it to run a bigger "
                  "sweep deliberately.",
    "tracking_uri": "MLflow tracking URI, used when neither --tracking-uri nor "
                    "MLFLOW_TRACKING_URI is set; null = an embedded server.",
    "storage": "Tune storage path (local folder, NFS, s3://); null = ./xmem-runs.",
}
RESOURCE_DOCS = {
    "cpu": "CPU cores per trial (> 0).",
    "gpu": "GPUs per trial (>= 0); a fraction shares a GPU, e.g. 0.25 runs 4 trials on one.",
}
TOP_LEVEL_KEYS = tuple(SPEC_KEY_DOCS)
RESOURCE_KEYS = tuple(RESOURCE_DOCS)
# Each resource's lower bound and whether it is exclusive: Ray rejects a trial that asks for
# no CPU at all; GPUs may be 0 or any fraction.
RESOURCE_MINIMUM = {"cpu": (0.0, True), "gpu": (0.0, False)}
MIN_CONCURRENT, MIN_FAILURES = 1, 0
DEFAULT_MAX_TRIALS = 10_000
# The sweep name becomes an MLflow experiment name, a Tune run name and a folder name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_MAX_LISTED = 3  # trials named in one problem line before "and N more"


# --- the spec ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Resources:
    """What Ray reserves for each trial (``RESOURCE_DOCS``)."""

    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec: each field is the file's key of that name, parsed (their
    meanings: ``SPEC_KEY_DOCS``), except ``axes`` (the parsed ``grid``), ``path`` and ``raw``."""

    name: str
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    axes: tuple[Axis, ...] = ()
    """The grid's axes in file order (a key, or linked keys, and their values)."""
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    packing: Packing = field(default_factory=Packing)
    max_concurrent: int | None = None
    max_failures: int = DEFAULT_MAX_FAILURES
    max_trials: int = DEFAULT_MAX_TRIALS
    tracking_uri: str | None = None
    """None: the environment's, or an embedded server (``orchestrator.settings``)."""
    storage: str | None = None
    path: str = ""
    """The file the spec was read from."""
    raw: dict[str, Any] = field(default_factory=dict)
    """The file's parsed YAML mapping, as written (saved with the sweep as an artifact)."""

    @property
    def grid(self) -> dict[str, list]:
        """The grid as a spec writes it: key (or ``a,b`` for linked keys) -> list of values."""
        return {axis.label: [step[0] if len(axis.keys) == 1 else list(step)
                             for step in axis.steps] for axis in self.axes}


# --- loading ----------------------------------------------------------------------------

def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep spec, reporting every problem in the file at once.

    Besides each key's type and range, it expands the sweep to check what only the whole
    sweep shows: nothing to run, everything excluded, exclude entries matching nothing,
    cross-key rules of each merged trial config, and duplicate trials.

    Raises:
        ConfigError: with one line per problem, each naming its key path (``grid.sigma[2]``).
    """
    source = str(path)
    hint = f"Fix the file, then check it with: xmem sweep {source} --dry-run"
    raw, problems = read_yaml(Path(path), empty_hint="a sweep spec needs at least name and grid")
    if raw is None:
        # Nothing to validate further: the file is missing, unreadable or not YAML.
        raise ConfigError(problems, source=source, hint=hint)
    if not isinstance(raw, dict):
        problems.append("the top level must be a mapping of keys (name, grid, ...), got "
                        f"{describe(raw)}")
        raise ConfigError(problems, source=source, hint=hint)
    spec, spec_problems, sweep_checked = _parse_spec(raw, source)
    problems += spec_problems
    if problems:
        if not sweep_checked:
            hint += ("\n(Checks of the expanded sweep, such as duplicate trials, run once the "
                     "problems above are fixed.)")
        raise ConfigError(problems, source=source, hint=hint)
    assert spec is not None
    return spec


# --- validation -------------------------------------------------------------------------

def _parse_spec(raw: dict, source: str) -> tuple[SweepSpec | None, list[str], bool]:
    """(the spec or None, every problem, whether the expanded sweep was checked).

    Each section is checked on its own first. The checks that need the expanded sweep
    (duplicates, cross-key rules, exclusion) only run when defaults, grid, exclude and
    include are clean: run on values already known to be bad they would repeat those
    problems in more confusing words.
    """
    problems: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"unknown top-level key '{key}'{did_you_mean(key, TOP_LEVEL_KEYS)}; "
                            f"valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    name = _check_name(raw.get("name"), problems)
    description = _check_optional_str("description", raw.get("description"), problems)
    defaults = _check_defaults(raw.get("defaults"), problems)
    grid = _check_grid(raw.get("grid"), problems)
    exclude = _check_entries("exclude", raw.get("exclude"), problems)
    include = _check_entries("include", raw.get("include"), problems)
    resources = _check_resources(raw.get("resources"), problems)
    packing = check_packing(raw.get("packing"), problems)
    max_concurrent = _check_int("max_concurrent", raw.get("max_concurrent"), MIN_CONCURRENT,
                                problems, nullable=True)
    max_failures = _check_int("max_failures", raw.get("max_failures", DEFAULT_MAX_FAILURES),
                              MIN_FAILURES, problems, nullable=False)
    max_trials = _check_int("max_trials", raw.get("max_trials", DEFAULT_MAX_TRIALS), 1, problems,
                            nullable=False)
    tracking_uri = _check_optional_str("tracking_uri", raw.get("tracking_uri"), problems,
                                       non_empty=True)
    storage = _check_optional_str("storage", raw.get("storage"), problems, non_empty=True)

    if defaults is None or grid is None or exclude is None or include is None:
        return None, problems, False
    too_many = size_problem(grid, include, max_trials or DEFAULT_MAX_TRIALS)
    if too_many:  # counted from the axes: a typo's million points are never expanded
        return None, problems + [too_many], False
    problems += _sweep_problems(expand_candidates(defaults, grid, exclude, include), exclude)
    if problems:
        return None, problems, True
    spec = SweepSpec(
        name=name, description=description or "", defaults=defaults, axes=tuple(grid),
        exclude=exclude, include=include, resources=resources, packing=packing,
        max_concurrent=max_concurrent,
        max_failures=max_failures, max_trials=max_trials, tracking_uri=tracking_uri,
        storage=storage, path=source,
        raw=raw)
    return spec, [], True


def _check_name(value: Any, problems: list[str]) -> str | None:
    if value is None:
        problems.append("name: missing; every sweep needs one (it becomes the MLflow "
                        "experiment and the Tune run name), e.g. name: fig1")
    elif not isinstance(value, str):
        problems.append(f"name: must be a string, got {describe(value)}")
    elif not NAME_PATTERN.fullmatch(value):
        problems.append(f"name: {value!r} is not a valid sweep name: use letters, digits, "
                        "'_', '.' and '-', starting with a letter or digit")
    else:
        return value
    return None


def _check_optional_str(key: str, value: Any, problems: list[str], *,
                        non_empty: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{key}: must be a string or null, got {describe(value)}")
    elif non_empty and not value.strip():
        problems.append(f"{key}: must not be empty; write null (or leave it out) for the default")
    else:
        return value
    return None


def _check_int(key: str, value: Any, minimum: int, problems: list[str], *,
               nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    expected = f"an integer >= {minimum}" + (" or null" if nullable else "")
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"{key}: must be {expected}, got {describe(value)}")
    elif value < minimum:
        problems.append(f"{key}: must be {expected}, got {value}")
    else:
        return value
    return None


def _check_resources(value: Any, problems: list[str]) -> Resources | None:
    if value is None:
        return Resources()
    if not isinstance(value, dict):
        problems.append(f"resources: must be a mapping like {{cpu: 1, gpu: 0.25}}, got "
                        f"{describe(value)}")
        return None
    found: list[str] = []
    for key in value:
        if key not in RESOURCE_KEYS:
            found.append(f"resources.{key}: unknown key{did_you_mean(key, RESOURCE_KEYS)}; "
                         f"valid keys: {', '.join(RESOURCE_KEYS)}")
    defaults = Resources()
    for key, (minimum, exclusive) in RESOURCE_MINIMUM.items():
        amount = value.get(key, getattr(defaults, key))
        bound = f"{'>' if exclusive else '>='} {minimum:g}"
        if not _is_number(amount) or not math.isfinite(amount):
            found.append(f"resources.{key}: must be a number {bound}, got {describe(amount)}")
        elif (amount <= minimum) if exclusive else (amount < minimum):
            found.append(f"resources.{key}: must be {bound}, got {amount!r}")
    problems += found
    if found:
        return None
    return Resources(**{key: float(value.get(key, getattr(defaults, key))) for key in RESOURCE_KEYS})


def _check_defaults(value: Any, problems: list[str]) -> dict[str, Any] | None:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append("defaults: must be a mapping of trial keys to values, got "
                        f"{describe(value)}")
        return None
    found = [f"defaults.{key}: {problem}"
             for key, item in value.items() for problem in key_problems(key, item)]
    problems += found
    return None if found else dict(value)


def _check_grid(value: Any, problems: list[str]) -> list[Axis] | None:
    """The axes in file order, or None if bad.

    A step repeated within one key's list is reported and dropped, so that the checks of the
    expanded sweep still run without reporting each of its copies again.
    """
    if value is None:
        return []
    if not isinstance(value, dict):
        problems.append("grid: must be a mapping of trial keys to lists of values, e.g. "
                        f"grid: {{sigma: [0.1, 1.0]}}, got {describe(value)}")
        return None
    found: list[str] = []
    repeats: list[str] = []  # reported, but the grid without them is still checked
    axes: list[Axis] = []
    places: dict[str, list[str]] = collections.defaultdict(list)  # key -> grid labels
    for label, values in value.items():
        if not isinstance(label, str):
            found.append(f"grid: key {label!r} must be a string (a trial key, or trial keys "
                         "joined by ',')")
            continue
        keys = tuple(part.strip() for part in label.split(LINK_SEPARATOR))
        label = LINK_SEPARATOR.join(keys)
        path = f"grid.{label}"
        if not all(keys):
            found.append(f"{path}: empty key name; link keys as 'sigma,temperature'")
            continue
        if len(set(keys)) < len(keys):
            found.append(f"{path}: a linked group names the same key twice")
            continue
        unknown = [key for key in keys if key not in TRIAL_DEFAULTS]
        for key in unknown:
            found += [f"{path}: {problem}" for problem in key_problems(key, None)]
        for key in keys:
            places[key].append(path)
        if unknown:
            continue
        steps = _check_grid_values(path, keys, values, found)
        if steps is not None:
            steps = _drop_repeats(path, steps, repeats)
            axes.append(Axis(keys, tuple(steps)))
    for key, paths in places.items():
        if len(paths) > 1:
            found.append(f"grid: key '{key}' is in {' and '.join(paths)}; a key may vary in "
                         "one place only (alone, or in one linked group)")
    problems += found + repeats
    # A repeat only costs a duplicate trial; the axes stay usable for the sweep checks.
    return None if found else axes


def _check_grid_values(path: str, keys: tuple[str, ...], values: Any,
                       found: list[str]) -> list[tuple] | None:
    """The steps of one grid entry as tuples (one value per key), or None if any is bad."""
    if not isinstance(values, list):
        example = f" (write [{values}] for a single value)" if len(keys) == 1 else ""
        found.append(f"{path}: must be a list of values, got {describe(values)}{example}")
        return None
    if not values:
        found.append(f"{path}: empty list; give at least one value, or remove the key")
        return None
    before = len(found)
    steps: list[tuple] = []
    for index, item in enumerate(values):
        if len(keys) == 1:
            found += [f"{path}[{index}]: {p}" for p in key_problems(keys[0], item)]
            steps.append((item,))
        elif not isinstance(item, list) or len(item) != len(keys):
            found.append(f"{path}[{index}]: must be a list of {len(keys)} values "
                         f"({', '.join(keys)}), got {describe(item)}")
        else:
            for key, part in zip(keys, item):
                found += [f"{path}[{index}].{key}: {p}" for p in key_problems(key, part)]
            steps.append(tuple(item))
    return None if len(found) > before else steps


def _drop_repeats(path: str, steps: list[tuple], found: list[str]) -> list[tuple]:
    """Report each step equal to an earlier one (1 equals 1.0) and keep the first copy."""
    kept: list[tuple] = []
    first_index: list[int] = []
    for index, step in enumerate(steps):
        earlier = next((first_index[i] for i, seen in enumerate(kept) if same_value(seen, step)),
                       None)
        if earlier is None:
            kept.append(step)
            first_index.append(index)
        else:
            found.append(f"{path}[{index}]: repeats {path}[{earlier}] "
                         f"({', '.join(format_value(v) for v in step)}); every grid point "
                         "would run twice")
    return kept


def _check_entries(section: str, value: Any, problems: list[str]) -> list[dict] | None:
    """``exclude`` or ``include``: a list of mappings of trial keys.

    Include entries become trials, so their values are checked like any trial key. Exclude
    entries only need valid keys: a value that matches no grid point is reported later, by
    the sweep checks, as an entry that excludes nothing.
    """
    if value is None:
        return []
    example = "{activation: sin, loss: hinge}" if section == "exclude" else "{model: convnet}"
    if not isinstance(value, list):
        problems.append(f"{section}: must be a list of mappings like - {example}, got "
                        f"{describe(value)}")
        return None
    found: list[str] = []
    for index, entry in enumerate(value):
        path = f"{section}[{index}]"
        if not isinstance(entry, dict):
            found.append(f"{path}: must be a mapping like {example}, got {describe(entry)}")
        elif section == "exclude":
            if not entry:
                found.append(f"{path}: an empty entry would exclude every grid point")
            for key in entry:
                if key not in TRIAL_DEFAULTS:
                    found += [f"{path}.{key}: {p}" for p in key_problems(key, None)]
        else:
            for key, item in entry.items():
                found += [f"{path}.{key}: {p}" for p in key_problems(key, item)]
    problems += found
    return None if found else [dict(entry) for entry in value]


def _sweep_problems(expansion: Expansion, exclude: list[dict]) -> list[str]:
    """What only the expanded sweep shows: nothing to run, exclusions, cross-key rules of
    each merged trial (each message once, with the trials it hits), duplicate trials."""
    problems: list[str] = []
    if expansion.grid_points == 0 and expansion.includes == 0:
        problems.append("grid: nothing to run: the grid has no keys and there are no include "
                        "entries; add e.g. grid: {sigma: [0.1, 1.0]}")
    elif expansion.grid_points and not expansion.grid_kept:
        nothing = "; nothing to run" if not expansion.includes else ""
        problems.append(f"exclude: removes all {expansion.grid_points} grid points{nothing}")
    for index in expansion.unmatched_excludes:
        entry = ", ".join(f"{k}: {format_value(v)}" for k, v in exclude[index].items())
        problems.append(f"exclude[{index}]: matches no grid point ({{{entry}}}); check its "
                        "values against the grid and defaults, or remove it")

    by_message: dict[str, list[str]] = collections.defaultdict(list)
    by_id: dict[str, list[tuple[Any, TrialConfig]]] = collections.defaultdict(list)
    for candidate in expansion.candidates:
        found = config_problems(candidate.values)
        for message in found:
            by_message[message].append(candidate.origin)
        if not found:
            config = TrialConfig.from_mapping(candidate.values)
            by_id[trial_id(config)].append((candidate, config))
    for message, origins in by_message.items():
        problems.append(f"{count(len(origins), 'trial')} ({listing(origins)}): {message}")

    duplicates = [(tid, group) for tid, group in by_id.items() if len(group) > 1]
    for tid, group in duplicates[:_MAX_LISTED]:
        origins = [candidate.origin for candidate, _ in group]
        first = group[0][1].to_dict()
        differ = sorted({key for _, config in group[1:] for key, v in config.to_dict().items()
                         if v != first[key]})
        why = (f"they differ only in {', '.join(differ)}, which cannot change results"
               if differ else "keep one of them")
        problems.append(f"duplicate trial {tid}: {listing(origins, limit=len(origins))} "
                        f"resolve to the same config; {why}")
    if len(duplicates) > _MAX_LISTED:
        problems.append(f"... and {len(duplicates) - _MAX_LISTED} more groups of duplicate "
                        "trials")
    return problems


# --- small helpers ----------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
