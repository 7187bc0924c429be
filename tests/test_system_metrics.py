"""System metrics: MLflow's own monitor, one per pack, logged into one member's run and named
in every member's (``workers.mlflow_log.PackSystemMetrics``), on a real ``mlflow server``."""

from __future__ import annotations

import time
import uuid

import mlflow
import pytest

from workers import contract
from workers.mlflow_log import PackSystemMetrics, TrialRunLogger

CPU, MEMORY = "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"


def _runs(client: mlflow.MlflowClient, count: int) -> list[str]:
    experiment = client.create_experiment(f"system-{uuid.uuid4().hex[:8]}")
    return [client.create_run(experiment).info.run_id for _ in range(count)]


def _steps(client: mlflow.MlflowClient, run_id: str, key: str = CPU) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_pack_logs_its_system_metrics_once_and_hands_over_when_the_host_ends(mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    first, second, third = _runs(client, 3)
    system = PackSystemMetrics(mlflow_server.uri, [first, second, third], interval_s=0.5)
    loggers = {run_id: TrialRunLogger(mlflow_server.uri, run_id) for run_id in (first, second, third)}
    for logger in loggers.values():
        logger.start(system.host_tags())
    system.start()
    time.sleep(1.8)
    system.members_ending([first])          # the host diverged; the others go on
    loggers[first].finish(contract.STATUS_DIVERGED)
    time.sleep(1.3)
    system.members_ending([second, third])  # the pack ends
    for run_id in (second, third):
        loggers[run_id].finish(contract.STATUS_FINISHED)
    system.stop()
    system.stop()                           # safe twice

    assert len(_steps(client, first)) >= 3 and _steps(client, first, MEMORY)
    assert len(_steps(client, second)) >= 2         # after the hand-over
    assert _steps(client, third) == []              # logged once: never twice
    tags = {run_id: client.get_run(run_id).data.tags[contract.TAG_SYSTEM_METRICS_RUN]
            for run_id in (first, second, third)}
    assert tags == {first: first, second: second, third: second}
    # Every sample is a measurement: psutil's meaningless first 0.0 is not among them.
    assert all(m.value > 0 for m in client.get_metric_history(first, CPU))


def test_a_pack_shorter_than_one_interval_still_gets_a_sample(mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    (run_id,) = _runs(client, 1)
    system = PackSystemMetrics(mlflow_server.uri, [run_id], interval_s=60)
    TrialRunLogger(mlflow_server.uri, run_id).start(system.host_tags())
    system.start()
    time.sleep(0.3)
    system.members_ending([run_id])
    assert _steps(client, run_id) == [0] and _steps(client, run_id, MEMORY) == [0]


def test_interval_zero_turns_system_metrics_off(mlflow_server, monkeypatch):
    monkeypatch.setenv("XMEM_SYSTEM_METRICS_INTERVAL_S", "0")
    client = mlflow.MlflowClient(mlflow_server.uri)
    (run_id,) = _runs(client, 1)
    system = PackSystemMetrics(mlflow_server.uri, [run_id])
    assert system.host is None and system.host_tags() == {}
    system.start()
    system.members_ending([run_id])
    assert _steps(client, run_id) == []


@pytest.mark.slow
def test_each_trial_of_a_finished_sweep_holds_its_own_system_metrics(finished_sweep, mlflow_server):
    """On CPUs every trial is a pack of one: its own run holds the metrics and names itself."""
    client = mlflow.MlflowClient(mlflow_server.uri)
    for row in finished_sweep.rows:
        run = client.get_run(row["run_id"])
        assert run.data.tags[contract.TAG_SYSTEM_METRICS_RUN] == row["run_id"]
        assert CPU in run.data.metrics and MEMORY in run.data.metrics, sorted(run.data.metrics)
