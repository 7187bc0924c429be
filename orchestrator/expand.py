"""A sweep's trials: the grid expanded, trial ids, readable names, and the keys that vary.

``expand_candidates`` is the expansion itself (defaults x grid points - exclude + include),
used both by the spec's validation (``orchestrator.spec``) and by ``expand_trials``, which
turns a valid ``SweepSpec`` into ``TrialPoint``s; ``size_problem`` counts a grid from its
axes' lengths first, so that a typo's million points are refused, never expanded. Pure Python: no ray, mlflow or torch, so a
dry run answers in well under a second.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from orchestrator.text import format_value
from workers.config import TrialConfig

if TYPE_CHECKING:  # annotations only: orchestrator.spec imports this module
    from orchestrator.spec import SweepSpec

TRIAL_ID_LENGTH = 12  # hex characters of sha256: 48 bits, no clash in any realistic sweep
TRIAL_DEFAULTS = TrialConfig().to_dict()
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Axis:
    """One dimension of the grid: a key, or a group of linked keys, and its steps."""

    keys: tuple[str, ...]
    steps: tuple[tuple, ...]
    """One value per key at each step."""

    @property
    def label(self) -> str:
        """The grid key as written in a spec: ``sigma`` or ``sigma,temperature``."""
        return ",".join(self.keys)


@dataclass(frozen=True)
class TrialPoint:
    """One trial of a sweep."""

    trial_id: str
    """Hash of the result-changing config keys: the same trial has the same id in every
    sweep and every rerun (what resume and deduplication key on)."""
    name: str
    """Readable and unique within the sweep, built from ``varying``: sin-sigma10-seed0."""
    config: TrialConfig
    varying: dict[str, Any]
    """Values of the keys that vary across the sweep's trials: grid key order, then keys
    that only include entries change."""


def trial_id(config: TrialConfig) -> str:
    """First 12 hex characters of sha256 over the canonical JSON of ``config.identity()``.

    Keys are sorted, so the order of keys in a spec does not matter; float fields are floats
    after ``TrialConfig.from_mapping``, so ``sigma: 1`` and ``sigma: 1.0`` give the same id;
    ``data_dir`` and the other keys that cannot change results are not part of the identity.
    """
    canonical = json.dumps(config.identity(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:TRIAL_ID_LENGTH]


# --- expansion --------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A trial before its config is built: where it comes from, and its merged spec keys."""

    origin: str
    """What the user wrote: "grid point sigma=0.1, seed=0" or "include[2]"."""
    values: dict[str, Any]
    """The defaults merged with the grid point or include entry."""


@dataclass(frozen=True)
class Expansion:
    candidates: list[Candidate]
    grid_points: int
    """Grid points before exclusion."""
    grid_kept: int
    unmatched_excludes: list[int]
    """Indices of exclude entries that matched no grid point."""
    includes: int


def expand_candidates(defaults: Mapping[str, Any], axes: Sequence[Axis],
                      exclude: Sequence[Mapping[str, Any]],
                      include: Sequence[Mapping[str, Any]]) -> Expansion:
    """Defaults merged with each grid point (first axis varies slowest), minus exclude
    matches, then each include entry merged with the defaults. A grid without keys has no
    points (rather than the one empty product), so that it means "nothing to run"."""
    candidates: list[Candidate] = []
    matched = [False] * len(exclude)
    grid_points = 0
    if axes:
        for steps in itertools.product(*(axis.steps for axis in axes)):
            grid_points += 1
            point = {key: v for axis, step in zip(axes, steps) for key, v in zip(axis.keys, step)}
            values = {**defaults, **point}
            resolved = {**TRIAL_DEFAULTS, **values}
            hits = [index for index, entry in enumerate(exclude)
                    if all(key in resolved and same_value(resolved[key], v)
                           for key, v in entry.items())]
            for index in hits:
                matched[index] = True
            if not hits:
                origin = "grid point " + ", ".join(f"{k}={format_value(v)}"
                                                   for k, v in point.items())
                candidates.append(Candidate(origin, values))
    grid_kept = len(candidates)
    for index, entry in enumerate(include):
        candidates.append(Candidate(f"include[{index}]", {**defaults, **entry}))
    unmatched = [index for index, hit in enumerate(matched) if not hit]
    return Expansion(candidates, grid_points, grid_kept, unmatched, len(include))


def size_problem(axes: list[Axis], include: list[dict], limit: int) -> str | None:
    """The problem of a sweep with more than ``limit`` trials (grid points before exclusion,
    plus include entries), naming each axis's length and the first and last grid points;
    None when it fits."""
    points = math.prod(len(axis.steps) for axis in axes) if axes else 0
    if points + len(include) <= limit:
        return None
    sizes = " x ".join(f"{axis.label} {len(axis.steps)}" for axis in axes)
    extra = f" + {len(include)} include entr{'y' if len(include) == 1 else 'ies'}" if include else ""

    def point(index: int) -> str:
        return ", ".join(f"{key}={format_value(value)}" for axis in axes
                         for key, value in zip(axis.keys, axis.steps[index]))

    return (f"grid: {points + len(include):,} trials ({sizes}{extra}) exceed max_trials "
            f"({limit:,}); the grid runs from {point(0)} to {point(-1)}. Check the grid for a "
            f"typo, or set max_trials: {points + len(include)} in the spec to run it deliberately")


def expand_trials(spec: "SweepSpec") -> list[TrialPoint]:
    """The spec's trials in a deterministic order: the grid points (cartesian product in
    grid key order, the first key varying slowest) minus exclude matches, then the include
    entries in file order.

    Raises:
        ConfigError: a trial's config is invalid (only for a spec not built by ``load_spec``,
            which checks every trial).
    """
    expansion = expand_candidates(spec.defaults, spec.axes, spec.exclude, spec.include)
    configs = [TrialConfig.from_mapping(c.values, source=f"{spec.path or spec.name}: {c.origin}")
               for c in expansion.candidates]
    ids = [trial_id(config) for config in configs]
    as_dicts = [config.to_dict() for config in configs]
    # The keys that could vary, in the order the spec names them.
    candidates = [key for axis in spec.axes for key in axis.keys]
    candidates += [key for entry in spec.include for key in entry]
    keys = varying_keys(as_dicts, candidates)
    varying = [{key: values[key] for key in keys} for values in as_dicts]
    names = _unique_names([_trial_name(spec.name, values) for values in varying], ids)
    return [TrialPoint(tid, name, config, values)
            for tid, name, config, values in zip(ids, names, configs, varying)]


def shown_keys(trials: Iterable[TrialPoint]) -> list[str]:
    """The keys that vary across ``trials``, in spec order: the columns of the dry-run and
    results tables."""
    return list(dict.fromkeys(key for trial in trials for key in trial.varying))


def varying_keys(rows: Sequence[Mapping[str, Any]], candidates: Iterable[str]) -> list[str]:
    """The keys of ``candidates`` (in their order) taking more than one value across ``rows``;
    True and 1 count as different values."""
    return [key for key in dict.fromkeys(candidates)
            if len({value_key(row.get(key)) for row in rows}) > 1]


def same_value(a: Any, b: Any) -> bool:
    """Equality for spec values: 1 equals 1.0, but True does not equal 1."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def value_key(value: Any) -> Any:
    """A hashable key of a spec value under which True and 1 differ (and 1 and 1.0 do not)."""
    # Booleans apart from ints, so that a key holding True and 1 counts as varying.
    return (type(value) is bool, value)


def _trial_name(sweep_name: str, varying: dict[str, Any]) -> str:
    """sin-sigma10-cifar10-seed0: strings bare, numbers after their key, bools as key or
    no-key, null as key-default; the sweep name when nothing varies (a single trial)."""
    parts = []
    for key, value in varying.items():
        if isinstance(value, bool):
            parts.append(key if value else f"no-{key}")
        elif value is None:
            parts.append(f"{key}-default")
        elif isinstance(value, int):
            parts.append(f"{key}{value}")
        elif isinstance(value, float):
            parts.append(f"{key}{value:g}")
        else:
            # Names become folder and run names: keep them to safe characters (paths in
            # data_file would otherwise bring '/').
            parts.append(_UNSAFE_NAME_CHARS.sub("_", str(value)).strip("_") or key)
    return "-".join(parts) or sweep_name


def _unique_names(names: list[str], ids: list[str]) -> list[str]:
    """Append the first 6 id characters to every name that clashes (e.g. sigma0.1234561 and
    sigma0.1234562 both print as sigma0.123456); ids are unique, so the full id settles
    any clash left."""
    counts = collections.Counter(names)
    unique = [f"{name}-{tid[:6]}" if counts[name] > 1 else name for name, tid in zip(names, ids)]
    if len(set(unique)) < len(unique):
        unique = [f"{name}-{tid}" if counts[name] > 1 else name for name, tid in zip(names, ids)]
    return unique
