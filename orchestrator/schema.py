"""A JSON Schema (draft 2020-12) of sweep spec files, for editors and other tools.

With the schema an editor completes keys, shows each key's documentation and flags unknown
keys, wrong types and out-of-range values while a spec is written. A spec opts in with a
comment on its first line, read by the YAML language server (VS Code's YAML extension, and
other editors using it)::

    # yaml-language-server: $schema=../xmem-spec.schema.json

The YAML language server applies JSON Schema draft-07 (it may warn that 2020-12 is not fully
supported); the schema uses only keywords draft-07 knows too, so it checks the same there.

The schema is generated with pydantic from the definitions the loader uses, so nothing is
written twice: the trial keys, their types, choices, ranges, defaults and help text come
from ``workers.config.TrialConfig``; the spec's keys, name pattern and link separator from
``orchestrator.spec``. ``xmem schema`` prints or writes it.

The schema checks each key on its own. ``xmem sweep SPEC --dry-run`` remains the full
check: it also reports what only the expanded sweep shows (duplicate trials, exclude entries
that match nothing, cross-key rules such as convnet on 8x8 digits), a key written twice in
one mapping, and the length of each entry of linked grid keys.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field

from orchestrator.spec import (DEFAULT_MAX_FAILURES, DEFAULT_MAX_TRIALS, LINK_SEPARATOR, MIN_CONCURRENT, MIN_FAILURES,
                               NAME_PATTERN, RESOURCE_DOCS, RESOURCE_KEYS, RESOURCE_MINIMUM,
                               SPEC_KEY_DOCS, TOP_LEVEL_KEYS, Resources)
from orchestrator.packing import PACKING_DOCS, PACKING_KEYS
from workers.config import TrialConfig, key_types

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
TITLE = "xmem sweep spec"
DESCRIPTION = ("A sweep of trials for `xmem sweep`: `defaults` under every point of the "
               "cartesian `grid`, minus the points an `exclude` entry matches, plus the "
               "`include` entries. Check a spec in full with: xmem sweep SPEC --dry-run")
# The first line of a spec that tells the YAML language server which schema to apply.
SCHEMA_COMMENT_PREFIX = "# yaml-language-server: $schema="


def schema_comment(location: str) -> str:
    """The comment line that links a spec to the schema at ``location``: a path relative to
    the spec file, an absolute path, or a URL."""
    return f"{SCHEMA_COMMENT_PREFIX}{location}"


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a sweep spec file (a JSON-compatible dict).

    Raises:
        RuntimeError: when the models here and ``TOP_LEVEL_KEYS`` / ``RESOURCE_KEYS`` no
            longer name the same keys (a key added to the loader and not here): a bug.
    """
    model = _spec_model()
    _same_keys(model, TOP_LEVEL_KEYS)
    schema = model.model_json_schema()
    return {"$schema": JSON_SCHEMA_DIALECT, "title": TITLE, "description": DESCRIPTION,
            **{key: value for key, value in schema.items() if key != "title"}}


# --- the trial keys: one pydantic field per TrialConfig field ---------------------------

def _trial_value_type(name: str) -> Any:
    """The type of one trial key's values, constrained by its metadata (choices, range);
    ``| None`` where the dataclass allows None."""
    kind, nullable = key_types()[name]
    meta = {f.name: f.metadata for f in dataclasses.fields(TrialConfig)}[name]
    if meta["choices"]:
        value_type: Any = Literal[tuple(meta["choices"])]
    else:
        bounds = {}
        if meta["minimum"] is not None:
            bounds["gt" if meta["exclusive"] else "ge"] = meta["minimum"]
        if meta["maximum"] is not None:
            bounds["le"] = meta["maximum"]
        if kind is float:
            bounds["allow_inf_nan"] = False
        value_type = Annotated[kind, Field(strict=True, **bounds)]
    return value_type | None if nullable else value_type


def _trial_keys_model() -> type[pydantic.BaseModel]:
    """Every trial key, optional, with its TrialConfig default and help text."""
    fields = {f.name: (_trial_value_type(f.name),
                       Field(default=f.default, description=f.metadata["doc"]))
              for f in dataclasses.fields(TrialConfig)}
    return pydantic.create_model(
        "TrialKeys", __config__=ConfigDict(extra="forbid", strict=True), **fields)


def _grid_model() -> type[pydantic.BaseModel]:
    """Each trial key -> a non-empty list of its values; linked keys ("sigma,temperature")
    -> a non-empty list of lists, one value per key (their values are not checked here)."""
    fields = {f.name: (list[_trial_value_type(f.name)],
                       Field(default_factory=list, min_length=1,
                             description=f.metadata["doc"]))
              for f in dataclasses.fields(TrialConfig)}
    key = "\\s*(?:" + "|".join(map(re.escape, TrialConfig.keys())) + ")\\s*"
    separator = re.escape(LINK_SEPARATOR)
    linked = {f"^{key}(?:{separator}{key})+$": {
        "description": "Linked keys, varying together: one list of values (one per key, in "
                       "order) for each step.",
        "type": "array", "minItems": 1, "items": {"type": "array", "minItems": 2}}}
    return pydantic.create_model(
        "Grid", __config__=ConfigDict(extra="forbid", json_schema_extra={
            "patternProperties": linked}), **fields)


# --- the spec ---------------------------------------------------------------------------

def _spec_model() -> type[pydantic.BaseModel]:
    """One field per top-level key. Sections that may be left empty in YAML (``grid:`` with
    nothing after it) accept null, as the loader does."""
    trial_keys = _trial_keys_model()
    resources = pydantic.create_model(
        "Resources", __config__=ConfigDict(extra="forbid"),
        **{key: (float, Field(default=getattr(Resources(), key), description=RESOURCE_DOCS[key],
                              **{"gt" if exclusive else "ge": minimum}))
           for key, (minimum, exclusive) in RESOURCE_MINIMUM.items()})
    _same_keys(resources, RESOURCE_KEYS)
    packing = pydantic.create_model(
        "Packing", __config__=ConfigDict(extra="forbid"),
        max_size=(Literal["auto"] | Annotated[int, Field(ge=1)],
                  Field("auto", description=PACKING_DOCS["max_size"])))
    _same_keys(packing, PACKING_KEYS)
    not_blank = Annotated[str, Field(pattern=r"\S")]
    exclude_entry = Annotated[trial_keys, Field(json_schema_extra={"minProperties": 1})]
    # key -> (type, default); every description comes from SPEC_KEY_DOCS.
    fields = {
        "name": (Annotated[str, Field(pattern=f"^(?:{NAME_PATTERN.pattern})$")], ...),
        "description": (str | None, None),
        "defaults": (trial_keys | None, None),
        "grid": (_grid_model() | None, None),
        "exclude": (list[exclude_entry] | None, None),
        "include": (list[trial_keys] | None, None),
        "resources": (resources | None, None),
        "packing": (packing | None, None),
        "max_concurrent": (Annotated[int, Field(ge=MIN_CONCURRENT)] | None, None),
        "max_failures": (Annotated[int, Field(ge=MIN_FAILURES)], DEFAULT_MAX_FAILURES),
        "max_trials": (Annotated[int, Field(ge=1)], DEFAULT_MAX_TRIALS),
        "tracking_uri": (not_blank | None, None),
        "storage": (not_blank | None, None),
    }
    fields = {key: (kind, Field(default, description=SPEC_KEY_DOCS[key]))
              for key, (kind, default) in fields.items()}
    return pydantic.create_model("SweepSpecFile", __config__=ConfigDict(extra="forbid"),
                                 **fields)


def _same_keys(model: type[pydantic.BaseModel], keys: tuple[str, ...]) -> None:
    if tuple(model.model_fields) != keys:
        raise RuntimeError(f"orchestrator/schema.py: {model.__name__} has the keys "
                           f"{tuple(model.model_fields)}, the spec loader {keys}")
