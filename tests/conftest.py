"""Shared fixtures. ``mlflow_server``: one real ``mlflow server`` for the whole session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A running local tracking server (SQLite store, served artifacts) in a temp folder.

    Started once per session (about 10 s); tests keep apart by using unique experiment
    names. Yields ``orchestrator.tracking.server.LocalTrackingServer``.
    """
    from orchestrator.tracking.server import start_local_server

    server = start_local_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """One real single-node Ray cluster (``ray start --head``, 2 CPUs) for the whole session.

    Sweeps join it by address, exactly as they would join a remote cluster; disconnecting a
    driver leaves it running for the next test. Yields its address (``127.0.0.1:<port>``).
    Torn down by its own process ids (``tests/ray_nodes.py``), never with ``ray stop``.
    """
    from ray_nodes import RayCluster

    with RayCluster() as cluster:
        yield cluster.start_head(cpus=2)


# A sin MLP on 200 digits, sigma 0.01 vs 10, two seeds: 4 trials of 20 epochs (about 30 s on
# 2 cores). Its outcome is known (measured): sigma 0.01 generalizes (best test about 91%),
# sigma 10 memorizes (train 100%, final test about 12%, chance 10%), alignment falls with sigma.
FINISHED_SWEEP_SPEC = """
name: {name}
defaults:
  dataset: digits
  activation: sin
  hidden: 64
  lr: 0.1
  batch_size: 16
  train_size: 200
  test_size: 200
  probe_per_class: 5
  epochs: 20
  eval_every: 5
  align_every: 10
  data_dir: {data_dir}
grid:
  sigma: [0.01, 10.0]
  seed: [0, 1]
max_failures: 0
"""


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory, ray_cluster, mlflow_server):
    """One small real sweep, run once per session on ``ray_cluster`` and tracked in
    ``mlflow_server``, for the tests that read sweeps back (export, report). Yields the
    ``orchestrator.run.SweepOutcome``; the sweep's name is ``outcome.spec.name``."""
    import uuid

    from orchestrator.run import run_sweep

    folder = tmp_path_factory.mktemp("finished-sweep")
    spec = folder / "finished.yaml"
    spec.write_text(FINISHED_SWEEP_SPEC.format(name=f"finished-{uuid.uuid4().hex[:8]}",
                                               data_dir=folder / "data"))
    outcome = run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri,
                        storage=str(folder / "store"), echo=lambda line: None)
    assert [row["status"] for row in outcome.rows] == ["finished"] * 4
    return outcome


def assert_user_error(result, *fragments: str) -> None:
    """A ``CliRunner`` result of a user error: exit code 2, no exception escaped the command
    (the runner keeps an escaped exception in ``result.exception`` instead of printing its
    traceback, so checking the output for "Traceback" alone proves nothing), and every
    fragment in the output."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
