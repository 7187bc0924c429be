"""Sweep specs: loading, one-pass validation, grid expansion, trial ids and names.

Fast and offline: no ray, mlflow or torch. Each test writes a small YAML file into tmp_path.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.expand import Axis, TrialPoint, expand_trials, trial_id
from orchestrator.progress import format_trial_table
from orchestrator.settings import resolve_setting
from orchestrator.spec import Resources, SweepSpec, load_spec
from workers.config import TrialConfig
from workers.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    """The ConfigError that loading ``text`` raises; its message has to name the file."""
    path = write_spec(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    assert str(path) in str(caught.value)
    return caught.value


def trials_of(tmp_path: Path, text: str) -> list[TrialPoint]:
    return expand_trials(load_spec(write_spec(tmp_path, text)))


FIG1 = """
    name: fig1
    description: Sin activation, sigma sweep
    defaults: {dataset: cifar10, activation: sin, epochs: 1000}
    grid:
      sigma: [0.001, 0.01, 0.1, 1.0, 10.0]
      seed: [0, 1]
    resources: {cpu: 2, gpu: 0.25}
    max_concurrent: 4
    tracking_uri: http://mlflow:5000
"""


# --- loading and expansion --------------------------------------------------------------

def test_sigma_by_seed_expands_to_ten_trials_in_grid_order(tmp_path):
    spec = load_spec(write_spec(tmp_path, FIG1))
    trials = expand_trials(spec)

    assert len(trials) == 10
    # The first grid key varies slowest.
    assert [(t.config.sigma, t.config.seed) for t in trials[:3]] == [
        (0.001, 0), (0.001, 1), (0.01, 0)]
    assert all(t.config.dataset == "cifar10" and t.config.activation == "sin"
               and t.config.epochs == 1000 for t in trials)
    assert [list(t.varying) for t in trials] == [["sigma", "seed"]] * 10
    assert trials[-1].varying == {"sigma": 10.0, "seed": 1}


def test_spec_fields_and_defaults(tmp_path):
    path = write_spec(tmp_path, FIG1)
    spec = load_spec(path)
    assert spec.name == "fig1"
    assert spec.description == "Sin activation, sigma sweep"
    assert spec.resources == Resources(cpu=2.0, gpu=0.25)
    assert spec.max_concurrent == 4
    assert spec.max_failures == 2
    assert spec.tracking_uri == "http://mlflow:5000"
    assert spec.storage is None
    assert spec.path == str(path)
    assert spec.raw["grid"]["seed"] == [0, 1]  # the file as written, for the artifact

    minimal = load_spec(write_spec(tmp_path, "name: m\ngrid: {seed: [0]}\n", "m.yaml"))
    assert minimal.resources == Resources(cpu=1.0, gpu=0.0)
    assert minimal.max_concurrent is None and minimal.description == ""


def test_exclude_drops_points_matching_every_key_of_an_entry(tmp_path):
    trials = trials_of(tmp_path, """
        name: ex
        defaults: {dataset: cifar10}
        grid:
          activation: [sin, relu]
          loss: [cross_entropy, hinge]
        exclude:
          - {activation: sin, loss: hinge}
    """)
    pairs = [(t.config.activation, t.config.loss) for t in trials]
    assert pairs == [("sin", "cross_entropy"), ("relu", "cross_entropy"), ("relu", "hinge")]


def test_exclude_matches_values_that_come_from_defaults(tmp_path):
    # loss is not in the grid: the entry matches on the value every point gets from defaults.
    trials = trials_of(tmp_path, """
        name: ex
        defaults: {loss: hinge}
        grid:
          activation: [sin, relu]
        exclude:
          - {activation: sin, loss: hinge}
    """)
    assert [t.config.activation for t in trials] == ["relu"]


def test_include_is_merged_over_defaults_not_grid_and_comes_last(tmp_path):
    trials = trials_of(tmp_path, """
        name: inc
        defaults: {dataset: cifar10, lr: 0.05}
        grid:
          sigma: [0.1, 1.0]
          hidden: [64]
        include:
          - {model: convnet, sigma: null}
    """)
    assert len(trials) == 3
    extra = trials[-1].config
    assert (extra.model, extra.sigma, extra.dataset, extra.lr) == ("convnet", None, "cifar10", 0.05)
    assert extra.hidden == 1024  # TrialConfig's default: the grid's 64 is not applied
    # Varying: grid keys first, then the key only include changes.
    assert list(trials[-1].varying) == ["sigma", "hidden", "model"]
    assert trials[-1].varying == {"sigma": None, "hidden": 1024, "model": "convnet"}


def test_include_only_spec_runs_the_include_entries(tmp_path):
    trials = trials_of(tmp_path, """
        name: only
        include:
          - {sigma: 0.1}
          - {sigma: 1.0}
    """)
    assert [t.config.sigma for t in trials] == [0.1, 1.0]


def test_linked_keys_vary_together(tmp_path):
    spec = load_spec(write_spec(tmp_path, """
        name: linked
        grid:
          "sigma, temperature": [[0.1, 0.1], [1.0, 1.0], [10.0, 10.0]]
          seed: [0, 1]
    """))
    trials = expand_trials(spec)
    assert len(trials) == 6
    assert all(t.config.temperature == t.config.sigma for t in trials)
    assert [list(t.varying) for t in trials[:1]] == [["sigma", "temperature", "seed"]]
    assert list(spec.grid) == ["sigma,temperature", "seed"]  # spaces normalized


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    # Plain PyYAML reads 1e-3 as the string "1e-3", which sigma would reject.
    trials = trials_of(tmp_path, "name: e\ngrid:\n  sigma: [1e-3, 1E2]\n")
    assert [t.config.sigma for t in trials] == [0.001, 100.0]


def test_expansion_is_deterministic(tmp_path):
    first = trials_of(tmp_path, FIG1)
    second = trials_of(tmp_path, FIG1)
    assert [(t.trial_id, t.name) for t in first] == [(t.trial_id, t.name) for t in second]


# --- trial ids --------------------------------------------------------------------------

def test_trial_id_ignores_key_order_and_int_vs_float(tmp_path):
    a = trials_of(tmp_path, """
        name: a
        defaults: {dataset: cifar10, activation: sin, lr: 1}
        grid:
          sigma: [1, 10]
          seed: [0]
    """)
    b = trials_of(tmp_path, """
        name: b
        defaults: {lr: 1.0, activation: sin, dataset: cifar10}
        grid:
          seed: [0]
          sigma: [1.0, 10.0]
    """)
    assert sorted(t.trial_id for t in a) == sorted(t.trial_id for t in b)


def test_trial_id_changes_with_results_but_not_with_data_dir():
    base = TrialConfig.from_mapping({"sigma": 1.0, "seed": 0})
    tid = trial_id(base)
    assert len(tid) == 12 and all(c in "0123456789abcdef" for c in tid)
    assert trial_id(TrialConfig.from_mapping({"sigma": 1, "seed": 0})) == tid
    assert trial_id(base.replace(seed=1)) != tid
    assert trial_id(base.replace(sigma=2.0)) != tid
    assert trial_id(base.replace(activation="relu")) != tid
    assert trial_id(base.replace(data_dir="/elsewhere")) == tid
    assert trial_id(base.replace(download=True, checkpoint_every=5)) == tid


def test_trial_ids_are_stable_across_versions():
    """Resuming finds a trial's run by its id: a change to how ids are computed (key order,
    JSON separators, hash) would orphan every existing sweep. These ids were computed by
    xmem 0.1.0 before the restructure."""
    assert trial_id(TrialConfig()) == "815b7eab4f79"
    assert trial_id(TrialConfig.from_mapping({"sigma": 1.0})) == "6f708a118c1e"


def test_every_result_changing_key_changes_the_trial_id():
    """Only the keys written down here may leave the id alone; every other key, changed to
    another valid value, must change it (a key wrongly called non-result would merge two
    different trials into one run)."""
    import dataclasses

    from workers.config import NON_RESULT_KEYS, key_types

    assert set(NON_RESULT_KEYS) == {"data_dir", "download", "checkpoint_every"}
    base = TrialConfig.from_mapping({"dataset": "cifar10", "sigma": 1.0})
    tid = trial_id(base)
    for field in dataclasses.fields(TrialConfig):
        value = getattr(base, field.name)
        kind, _ = key_types()[field.name]
        choices = field.metadata["choices"]
        if choices:
            other = next(choice for choice in choices if choice != value)
        elif kind is bool:
            other = not value
        elif kind is int:
            other = 100 if value is None else value + 1
        elif kind is float:
            other = value * 2 if value else 0.5
        else:  # a path
            other = "/data/cifar10.parquet" if value is None else "/elsewhere"
        changed = trial_id(base.replace(**{field.name: other}))
        if field.name in NON_RESULT_KEYS:
            assert changed == tid, field.name
        else:
            assert changed != tid, field.name


# --- names ------------------------------------------------------------------------------

def test_names_follow_the_varying_keys(tmp_path):
    trials = trials_of(tmp_path, """
        name: n
        grid:
          activation: [sin, relu]
          sigma: [10, 0.001]
          dataset: [cifar10, svhn]
          seed: [0, 1]
    """)
    names = [t.name for t in trials]
    assert names[0] == "sin-sigma10-cifar10-seed0"
    assert "relu-sigma0.001-svhn-seed1" in names
    assert len(set(names)) == len(names) == 16


def test_names_of_bools_and_nulls(tmp_path):
    trials = trials_of(tmp_path, """
        name: n
        grid:
          shuffle_labels: [false, true]
          sigma: [null, 0.5]
    """)
    assert [t.name for t in trials] == [
        "no-shuffle_labels-sigma-default", "no-shuffle_labels-sigma0.5",
        "shuffle_labels-sigma-default", "shuffle_labels-sigma0.5"]


def test_a_single_trial_is_named_after_the_sweep(tmp_path):
    trials = trials_of(tmp_path, "name: just-one\ngrid: {sigma: [0.1]}\n")
    assert [(t.name, t.varying) for t in trials] == [("just-one", {})]


def test_clashing_names_get_an_id_suffix(tmp_path):
    # Both sigmas print as 0.123457 with :g.
    trials = trials_of(tmp_path, "name: c\ngrid: {sigma: [0.1234567, 0.1234568, 0.5]}\n")
    names = [t.name for t in trials]
    assert names[0] == f"sigma0.123457-{trials[0].trial_id[:6]}"
    assert names[1] == f"sigma0.123457-{trials[1].trial_id[:6]}"
    assert names[2] == "sigma0.5"


# --- problems ---------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message and "not found" in message
    assert f"xmem sweep {path} --dry-run" in message  # the hint names the next command


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    error = load_error(tmp_path, """
        name: s
        grid:
          sigma: [0.1, 0.2
          seed: [0]
    """)
    message = str(error)
    assert "line 4, column" in message and "line 3" in message
    assert "seed: [0]" in message  # the offending line, as written


@pytest.mark.parametrize("text, expected", [
    ("- name: x\n", "top level must be a mapping"),
    ("", "empty"),
])
def test_top_level_must_be_a_mapping(tmp_path, text, expected):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)


def test_name_missing_or_invalid(tmp_path):
    assert "name: missing" in str(load_error(tmp_path, "grid: {seed: [0]}\n"))
    assert "not a valid sweep name" in str(load_error(tmp_path, "name: -x y\ngrid: {seed: [0]}\n"))
    assert "name: must be a string" in str(load_error(tmp_path, "name: 2024\ngrid: {seed: [0]}\n"))


def test_unknown_top_level_key_suggests_and_lists_valid_keys(tmp_path):
    message = str(load_error(tmp_path, "name: x\ngrid: {seed: [0]}\nmax_failure: 3\n"))
    assert "unknown top-level key 'max_failure' (did you mean 'max_failures'?)" in message
    assert "valid keys: name, description, defaults, grid" in message


def test_duplicate_yaml_key_is_reported_with_its_lines(tmp_path):
    message = str(load_error(tmp_path, """
        name: x
        grid: {seed: [0]}
        grid: {sigma: [1.0]}
    """))
    assert "line 3: key 'grid' is also on line 2" in message


@pytest.mark.parametrize("line, expected", [
    ("defaults: [dataset]", "defaults: must be a mapping"),
    ("grid: [sigma]", "grid: must be a mapping"),
    ("exclude: {activation: sin}", "exclude: must be a list"),
    ("include: [convnet]", "include[0]: must be a mapping"),
    ("resources: 2", "resources: must be a mapping"),
    ("resources: {cpu: 0}", "resources.cpu: must be > 0"),
    ("resources: {gpu: -0.5}", "resources.gpu: must be >= 0"),
    ("resources: {gpu: half}", "resources.gpu: must be a number >= 0, got string 'half'"),
    ("resources: {gpus: 1}",
     "resources.gpus: unknown key (did you mean 'gpu'?); valid keys: cpu, gpu"),
    ("max_concurrent: 0", "max_concurrent: must be an integer >= 1 or null"),
    ("max_concurrent: 1.5", "max_concurrent: must be an integer >= 1 or null, got float 1.5"),
    ("max_failures: -1", "max_failures: must be an integer >= 0"),
    ("max_failures: true", "max_failures: must be an integer >= 0, got bool True"),
    ("tracking_uri: 5", "tracking_uri: must be a string or null"),
    ("storage: ''", "storage: must not be empty"),
    ("description: [a]", "description: must be a string or null"),
])
def test_wrong_types_and_ranges_of_sweep_settings(tmp_path, line, expected):
    message = str(load_error(tmp_path, f"name: x\ngrid: {{seed: [0]}}\n{line}\n"))
    assert expected in message


@pytest.mark.parametrize("section, expected", [
    ("defaults: {lr: -1}", ["defaults.lr: 'lr' must be > 0"]),
    ("defaults: {activaton: sin}",
     ["defaults.activaton: unknown key 'activaton' (did you mean 'activation'?)", "valid keys:"]),
    ("grid: {sigma: [0.1, 1.0, -1]}", ["grid.sigma[2]: 'sigma' must be > 0"]),
    ("grid: {activation: [sin, tanh]}",
     ["grid.activation[1]: 'activation' is 'tanh'; valid choices: sin, relu, sigmoid, linear"]),
    ("grid: {sigmaa: [1.0]}", ["grid.sigmaa: unknown key 'sigmaa' (did you mean 'sigma'?)"]),
    ("grid: {seed: 3}", ["grid.seed: must be a list of values, got int 3 (write [3]"]),
    ("grid: {seed: []}", ["grid.seed: empty list"]),
    ("grid: {seed: [0, 0.5]}", ["grid.seed[1]: 'seed' must be int, got float 0.5"]),
    ("grid: {'sigma,temperature': [[0.1, 0.1], [1.0]]}",
     ["grid.sigma,temperature[1]: must be a list of 2 values (sigma, temperature)"]),
    ("grid: {'sigma,temperature': [[0.1, -1]]}",
     ["grid.sigma,temperature[0].temperature: 'temperature' must be > 0"]),
    ("grid: {sigma: [0.1], 'sigma,temperature': [[1.0, 1.0]]}",
     ["grid: key 'sigma' is in grid.sigma and grid.sigma,temperature"]),
    ("grid: {'sigma,': [[1.0]]}", ["grid.sigma,: empty key name"]),
    ("grid: {seed: [0]}\ninclude: [{activation: tanh}]",
     ["include[0].activation: 'activation' is 'tanh'; valid choices: sin, relu"]),
    ("grid: {seed: [0]}\nexclude: [{lossy: hinge}]",
     ["exclude[0].lossy: unknown key 'lossy' (did you mean 'loss'?)"]),
])
def test_bad_trial_keys_and_values_name_their_key_path(tmp_path, section, expected):
    text = f"name: x\n{section}\n"
    if not section.startswith("grid") and "grid:" not in section:
        text += "grid: {seed: [0]}\n"
    message = str(load_error(tmp_path, text))
    for fragment in expected:
        assert fragment in message


def test_cross_key_rules_are_checked_on_merged_trials_not_single_keys(tmp_path):
    # convnet alone would clash with TrialConfig's default dataset (digits); the grid's
    # datasets make every trial valid.
    trials = trials_of(tmp_path, """
        name: conv
        defaults: {model: convnet}
        grid: {dataset: [cifar10, svhn]}
    """)
    assert [t.config.dataset for t in trials] == ["cifar10", "svhn"]


def test_cross_key_problem_is_reported_once_with_the_trials_it_hits(tmp_path):
    error = load_error(tmp_path, """
        name: conv
        defaults: {model: convnet}
        grid:
          dataset: [digits, cifar10]
          seed: [0, 1]
    """)
    assert len(error.problems) == 1
    (problem,) = error.problems
    assert problem.startswith("2 trials (grid point dataset=digits, seed=0; "
                              "grid point dataset=digits, seed=1)")
    assert "convnet" in problem


def test_nothing_to_run(tmp_path):
    assert "nothing to run" in str(load_error(tmp_path, "name: x\n"))
    assert "nothing to run" in str(load_error(tmp_path, "name: x\ngrid: {}\n"))


def test_everything_excluded(tmp_path):
    message = str(load_error(tmp_path, """
        name: x
        grid: {activation: [sin, relu]}
        exclude:
          - {activation: sin}
          - {activation: relu}
    """))
    assert "exclude: removes all 2 grid points; nothing to run" in message


def test_exclude_entry_matching_nothing(tmp_path):
    message = str(load_error(tmp_path, """
        name: x
        grid: {activation: [sin, relu]}
        exclude:
          - {activation: sine}
    """))
    assert "exclude[0]: matches no grid point ({activation: sine})" in message


def test_duplicate_trials_name_where_they_come_from(tmp_path):
    message = str(load_error(tmp_path, """
        name: x
        grid: {sigma: [0.1, 1.0]}
        include:
          - {sigma: 1}
    """))
    assert "grid point sigma=1; include[0] resolve to the same config" in message


def test_points_differing_only_in_data_dir_are_duplicates(tmp_path):
    message = str(load_error(tmp_path, "name: x\ngrid: {data_dir: [a, b]}\n"))
    assert "grid point data_dir=a; grid point data_dir=b resolve to the same config" in message
    assert "differ only in data_dir" in message


def test_repeated_grid_value_is_reported_once(tmp_path):
    error = load_error(tmp_path, "name: x\ngrid:\n  sigma: [1, 0.1, 1.0]\n  seed: [0, 1]\n")
    # Reported at its key path, not again for each duplicate trial it makes.
    assert error.problems == [
        "grid.sigma[2]: repeats grid.sigma[0] (1); every grid point would run twice"]


def test_several_problems_are_reported_together(tmp_path):
    error = load_error(tmp_path, """
        name: bad name
        defaults: {lr: -1}
        grid:
          sigma: [0.1, -1]
          seed: 3
        resources: {gpu: -1}
        max_failures: -1
        colour: blue
    """)
    message = str(error)
    for fragment in ("name:", "defaults.lr", "grid.sigma[1]", "grid.seed", "resources.gpu",
                     "max_failures", "colour"):
        assert fragment in message
    assert len(error.problems) == 7
    assert message.startswith(f"{tmp_path / 'spec.yaml'}: 7 problem(s):")


def test_expand_trials_rejects_a_hand_built_spec_with_bad_values():
    # A SweepSpec holds parsed axes (load_spec checks them); one built by hand with a bad
    # value still fails, naming the grid point and the key.
    with pytest.raises(ConfigError, match=r"grid point sigma=-1(.|\n)*'sigma' must be > 0"):
        expand_trials(SweepSpec(name="h", axes=(Axis(("sigma",), ((-1.0,),)),)))


# --- table and settings -----------------------------------------------------------------

def test_trial_table_lists_every_trial_and_the_varying_columns(tmp_path):
    trials = trials_of(tmp_path, FIG1)
    table = format_trial_table(trials)
    lines = table.splitlines()
    assert lines[0].split() == ["trial_id", "name", "sigma", "seed"]
    for trial in trials:
        assert trial.trial_id in table and trial.name in table
    assert lines[-1] == "10 trials"
    # Aligned: every row starts its name column at the same offset.
    offset = lines[0].index("name")
    assert all(line[offset:].startswith(t.name) for line, t in zip(lines[1:], trials))
    assert format_trial_table(trials[:1]).splitlines()[-1] == "1 trial"


def test_resolve_setting_precedence():
    env = {"MLFLOW_TRACKING_URI": "http://env"}
    assert resolve_setting("http://flag", "MLFLOW_TRACKING_URI", "http://spec", "file:./mlruns",
                           environ=env) == ("http://flag", "flag")
    assert resolve_setting(None, "MLFLOW_TRACKING_URI", "http://spec", "file:./mlruns",
                           environ=env) == ("http://env", "environment")
    assert resolve_setting(None, "MLFLOW_TRACKING_URI", "http://spec", "file:./mlruns",
                           environ={}) == ("http://spec", "spec")
    assert resolve_setting(None, "MLFLOW_TRACKING_URI", None, "file:./mlruns",
                           environ={}) == ("file:./mlruns", "default")
    # An empty variable is the usual way to unset one.
    assert resolve_setting(None, "RAY_ADDRESS", "ray://head:10001", None,
                           environ={"RAY_ADDRESS": ""}) == ("ray://head:10001", "spec")
    setting = resolve_setting(None, None, None, 7, environ=env)
    assert (setting.value, setting.source) == (7, "default")


def test_spec_module_imports_nothing_heavy():
    code = ("import sys, orchestrator.spec; "
            "heavy = sorted({'ray', 'mlflow', 'torch'} & set(sys.modules)); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_names_that_clash_on_six_id_characters_get_the_whole_id():
    from orchestrator.expand import _unique_names

    assert _unique_names(["a", "a", "b"], ["abcdef01", "abcdef02", "99"]) == \
        ["a-abcdef01", "a-abcdef02", "b"]
    assert _unique_names(["a", "a"], ["111111aa", "222222bb"]) == ["a-111111", "a-222222"]


def test_true_and_1_are_different_values_of_a_key():
    from orchestrator.expand import varying_keys

    assert varying_keys([{"k": True, "n": 1}, {"k": 1, "n": 1.0}], ["k", "n"]) == ["k"]


# --- grid size ----------------------------------------------------------------------------

def _hundred(key: str) -> str:
    return f"{key}: [{', '.join(str(i + (2 if key == 'probe_per_class' else 0)) for i in range(100))}]"


def test_a_million_point_grid_is_refused_from_its_axes_without_expanding(tmp_path, monkeypatch):
    import orchestrator.spec as spec_module

    def never(*args, **kwargs):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(spec_module, "expand_candidates", never)
    error = load_error(tmp_path, f"""
        name: typo
        grid:
          {_hundred("seed")}
          {_hundred("data_seed")}
          {_hundred("probe_per_class")}
        include: [{{seed: 7}}]
        """)
    message = str(error)
    assert "1,000,001 trials (seed 100 x data_seed 100 x probe_per_class 100 + 1 include entry)" in message
    assert "exceed max_trials (10,000)" in message
    assert "from seed=0, data_seed=0, probe_per_class=2 to seed=99, data_seed=99, probe_per_class=101" in message
    assert "set max_trials: 1000001" in message


def test_max_trials_lets_a_big_sweep_through_deliberately(tmp_path):
    grid = """
        name: big
        grid:
          sigma: [0.1, 1.0, 10.0]
          seed: [0, 1, 2, 3]
        """
    assert "12 trials (sigma 3 x seed 4) exceed max_trials (10)" in str(
        load_error(tmp_path, grid + "max_trials: 10\n"))
    assert len(trials_of(tmp_path, grid + "max_trials: 12\n")) == 12
    assert "max_trials: must be an integer >= 1" in str(load_error(tmp_path, grid + "max_trials: 0\n"))


def test_dry_run_of_a_million_point_grid_answers_with_the_count(tmp_path):
    from click.testing import CliRunner

    from conftest import assert_user_error
    from orchestrator.cli import main

    path = write_spec(tmp_path, f"""
        name: typo
        grid:
          {_hundred("seed")}
          {_hundred("data_seed")}
          {_hundred("probe_per_class")}
        """)
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    assert_user_error(result, "1,000,000 trials", "max_trials")
