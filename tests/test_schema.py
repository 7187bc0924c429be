"""The JSON Schema of sweep specs (orchestrator.schema) and ``xmem schema``."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from jsonschema import Draft7Validator, Draft202012Validator

from conftest import FINISHED_SWEEP_SPEC, assert_user_error
from orchestrator.cli import XmemGroup
from orchestrator.cli.schema import schema as schema_command
from orchestrator.schema import SCHEMA_COMMENT_PREFIX, schema_comment, spec_json_schema
from orchestrator.spec import RESOURCE_KEYS, TOP_LEVEL_KEYS
from workers.config import TrialConfig
from workers.yaml_io import read_yaml  # the project's YAML reader (1e-3 is a float)

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))

# A valid spec that uses every section; each bad spec below is this with one change.
GOOD = {
    "name": "good-spec",
    "description": "all sections",
    "defaults": {"dataset": "digits", "activation": "sin", "sigma": None, "epochs": 3},
    "grid": {"sigma": [0.1, 1.0], "seed": [0, 1], "lr, momentum": [[0.01, 0.0], [0.1, 0.9]]},
    "exclude": [{"sigma": 1.0, "seed": 1}],
    "include": [{"activation": "relu", "sigma": None, "train_size": None}],
    "resources": {"cpu": 0.5, "gpu": 0},
    "max_concurrent": None,
    "max_failures": 0,
    "tracking_uri": "http://127.0.0.1:5000",
    "storage": None,
}


@pytest.fixture(scope="module")
def schema() -> dict:
    return spec_json_schema()


def _errors(schema: dict, spec: dict, validator=Draft202012Validator) -> list[tuple]:
    """(key path, validator keyword, message) of every error, nested ones (anyOf) included."""
    found = []
    pending = list(validator(schema).iter_errors(spec))
    while pending:
        error = pending.pop()
        found.append((tuple(error.absolute_path), error.validator, error.message))
        pending += error.context
    return found


def _changed(path: tuple, value) -> dict:
    """GOOD with the value at ``path`` replaced (or removed when ``value`` is ``_REMOVE``)."""
    spec = copy.deepcopy(GOOD)
    parent = spec
    for key in path[:-1]:
        parent = parent[key]
    if value is _REMOVE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return spec


_REMOVE = object()


def test_schema_is_a_valid_draft_2020_12_schema(schema):
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "xmem sweep spec"
    assert "$id" not in schema
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name"]
    assert tuple(schema["properties"]) == TOP_LEVEL_KEYS
    assert all(prop.get("description") for prop in schema["properties"].values())
    # The output is plain JSON (what `xmem schema` prints).
    assert json.loads(json.dumps(schema)) == schema


def test_every_trial_key_is_described_with_its_doc(schema):
    trial_keys = schema["$defs"]["TrialKeys"]
    grid = schema["$defs"]["Grid"]
    docs = TrialConfig.field_docs()
    assert list(trial_keys["properties"]) == list(docs)
    assert list(grid["properties"]) == list(docs)
    for key, doc in docs.items():
        assert trial_keys["properties"][key]["description"] == doc, key
        assert grid["properties"][key]["description"] == doc, key
    assert trial_keys["additionalProperties"] is False
    assert grid["additionalProperties"] is False
    defaults = {f.name: f.default for f in dataclasses.fields(TrialConfig)}
    assert {k: p["default"] for k, p in trial_keys["properties"].items()} == defaults


def test_resources_schema(schema):
    resources = schema["$defs"]["Resources"]
    assert tuple(resources["properties"]) == RESOURCE_KEYS
    assert resources["additionalProperties"] is False


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_spec_validates(schema, path):
    raw, problems = read_yaml(path)
    assert not problems
    assert _errors(schema, raw) == []


def test_experiments_exist_and_one_links_grid_keys():
    assert len(EXPERIMENTS) >= 5
    linked = [p for p in EXPERIMENTS if any("," in key for key in read_yaml(p)[0]["grid"])]
    assert linked, "no experiment exercises linked grid keys any more"


def test_finished_sweep_spec_of_the_tests_validates(schema, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(FINISHED_SWEEP_SPEC.format(name="finished-0123abcd",
                                               data_dir=tmp_path / "data"))
    raw, problems = read_yaml(path)
    assert not problems
    assert _errors(schema, raw) == []


def test_good_spec_validates_and_empty_sections_may_be_null(schema):
    assert _errors(schema, GOOD) == []
    minimal = {"name": "x", "defaults": None, "grid": None, "exclude": None, "include": None,
               "resources": None, "description": None}
    assert _errors(schema, minimal) == []


@pytest.mark.parametrize("path, value, error_path, keyword", [
    (("colour",), "red", (), "additionalProperties"),
    (("defaults", "sigmaa"), 1.0, ("defaults",), "additionalProperties"),
    (("defaults", "sigma"), -1, ("defaults", "sigma"), "exclusiveMinimum"),
    (("defaults", "activation"), "tanh", ("defaults", "activation"), "enum"),
    (("defaults", "epochs"), True, ("defaults", "epochs"), "type"),
    (("defaults", "seed"), 2**31, ("defaults", "seed"), "maximum"),
    (("grid", "sigma"), 0.1, ("grid", "sigma"), "type"),
    (("grid", "sigma"), [], ("grid", "sigma"), "minItems"),
    (("grid", "sigma"), [0.1, -1.0], ("grid", "sigma", 1), "exclusiveMinimum"),
    (("grid", "sigma,tempreature"), [[1.0, 1.0]], ("grid",), "additionalProperties"),
    (("grid", "lr, momentum"), [0.01, 0.1], ("grid", "lr, momentum", 0), "type"),
    (("exclude", 0), {}, ("exclude", 0), "minProperties"),
    (("exclude", 0, "sigmaa"), 1.0, ("exclude", 0), "additionalProperties"),
    (("include", 0, "model"), "resnet", ("include", 0, "model"), "enum"),
    (("resources",), {"cpu": 0}, ("resources", "cpu"), "exclusiveMinimum"),
    (("resources",), {"gpu": -1}, ("resources", "gpu"), "minimum"),
    (("resources", "memory"), 1, ("resources",), "additionalProperties"),
    (("max_concurrent",), 0, ("max_concurrent",), "minimum"),
    (("max_failures",), -1, ("max_failures",), "minimum"),
    (("max_failures",), None, ("max_failures",), "type"),
    (("tracking_uri",), " ", ("tracking_uri",), "pattern"),
    (("storage",), 3, ("storage",), "type"),
    (("name",), _REMOVE, (), "required"),
    (("name",), "bad name", ("name",), "pattern"),
    (("name",), "-starts-with-a-dash", ("name",), "pattern"),
])
def test_bad_spec_is_rejected_at_its_key(schema, path, value, error_path, keyword):
    errors = _errors(schema, _changed(path, value))
    assert (error_path, keyword) in {(where, kind) for where, kind, _ in errors}, errors


def test_unknown_key_errors_name_the_key(schema):
    messages = [message for _, _, message in _errors(schema, _changed(("colour",), "red"))]
    assert any("colour" in message for message in messages), messages


def test_draft_7_tools_read_it_the_same(schema):
    """The YAML language server applies draft-07 (it warns about newer dialects); the schema
    uses only keywords draft-07 knows, so it accepts and rejects the same specs there."""
    draft7 = {key: value for key, value in schema.items() if key != "$schema"}
    Draft7Validator.check_schema(draft7)
    assert _errors(draft7, GOOD, Draft7Validator) == []
    for bad in (_changed(("defaults", "sigma"), -1), _changed(("grid", "sigma"), 0.1),
                _changed(("name",), "bad name"), _changed(("resources",), {"cpu": 0})):
        assert _errors(draft7, bad, Draft7Validator)


def test_schema_comment():
    assert schema_comment("../spec.schema.json") == \
        "# yaml-language-server: $schema=../spec.schema.json"
    assert schema_comment("x").startswith(SCHEMA_COMMENT_PREFIX)


# --- xmem schema ------------------------------------------------------------------------

def test_command_prints_the_schema_as_indented_json(schema):
    result = CliRunner().invoke(schema_command, [])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == schema
    assert result.output.startswith("{\n  \"$schema\"")


def test_command_writes_the_file_and_a_hint(schema, tmp_path):
    out = tmp_path / "spec.schema.json"
    result = CliRunner().invoke(schema_command, ["-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text(encoding="utf-8")) == schema
    assert len(result.output.strip().splitlines()) == 1
    assert schema_comment(str(out)) in result.output
    assert "{" not in result.output


def test_command_write_error_is_a_user_error(tmp_path):
    group = XmemGroup(commands={"schema": schema_command})
    missing = tmp_path / "no-such-folder" / "spec.schema.json"
    result = CliRunner().invoke(group, ["schema", "--out", str(missing)])
    assert_user_error(result, "cannot write the schema to", str(missing))


def test_command_has_its_name_and_help():
    assert isinstance(schema_command, click.Command)
    assert schema_command.name == "schema"
    result = CliRunner().invoke(schema_command, ["--help"])
    assert result.exit_code == 0
    assert "yaml-language-server: $schema=" in result.output
