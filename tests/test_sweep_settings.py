"""Where a sweep runs and logs: bad settings are user errors (exit 2) caught before anything
is created."""

from __future__ import annotations

import socket
import uuid

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.spec import load_spec
from orchestrator.settings import resolve_settings

SPEC = """name: {name}
defaults: {{dataset: digits, hidden: 8, epochs: 1, train_size: 100, test_size: 50, probe_per_class: 2}}
grid: {{sigma: [1.0]}}
resources: {resources}
"""


def _spec(tmp_path, resources: str = "{cpu: 1}"):
    name = f"s-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, resources=resources))
    return path, name


def _user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in result.output


def test_flag_beats_environment_beats_spec_beats_default(tmp_path):
    path, _ = _spec(tmp_path)
    spec = load_spec(path)
    env = {"RAY_ADDRESS": "127.0.0.1:6379", "MLFLOW_TRACKING_URI": "http://env:5000"}
    settings = resolve_settings(spec, None, None, None, environ=env)
    assert (settings.address, settings.tracking_uri) == ("127.0.0.1:6379", "http://env:5000")
    assert settings.sources == {"address": "environment", "tracking_uri": "environment", "storage": "default"}
    settings = resolve_settings(spec, "localhost:1", "http://flag:5000", str(tmp_path / "s"), environ=env)
    assert (settings.address, settings.tracking_uri, settings.storage) == (
        "localhost:1", "http://flag:5000", str(tmp_path / "s"))


def test_remote_cluster_without_a_tracking_server_is_refused(tmp_path):
    path, _ = _spec(tmp_path)
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["sweep", str(path), "--address", "ray://head.example:10001",
                                       "--storage", str(store)], env={"MLFLOW_TRACKING_URI": ""})
    _user_error(result, "ray://head.example:10001", "--tracking-uri")
    assert not store.exists()


def test_unusable_storage_uri_is_refused(tmp_path):
    path, _ = _spec(tmp_path)
    result = CliRunner().invoke(main, ["sweep", str(path), "--storage", "foo://bucket/x"],
                                env={"MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": ""})
    _user_error(result, "foo://bucket/x", "s3://")


def test_unreachable_tracking_server_is_refused_before_ray_starts(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]        # closed again: nothing listens there
    path, _ = _spec(tmp_path)
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["sweep", str(path), "--tracking-uri", f"http://127.0.0.1:{port}",
                                       "--storage", str(store)], env={"RAY_ADDRESS": ""})
    _user_error(result, f"http://127.0.0.1:{port}", "does not answer")
    assert not store.exists()


@pytest.mark.slow
def test_trials_bigger_than_the_cluster_are_refused_before_any_run(tmp_path, ray_cluster, mlflow_server):
    path, name = _spec(tmp_path, resources="{cpu: 64}")
    result = CliRunner().invoke(main, ["sweep", str(path), "--address", ray_cluster, "--tracking-uri",
                                       mlflow_server.uri, "--storage", str(tmp_path / "store")])
    _user_error(result, "cpu 64 (the cluster has 2)")
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name(name) is None
