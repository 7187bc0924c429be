"""MLflow tracking against a real ``mlflow server``: the driver's SweepTracker, the worker's
TrialRunLogger, and the local server's start-up errors. Results are read back with
``mlflow.MlflowClient``, the way a user (or ``xmem status``) would see them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import workers
from orchestrator.tracking.params import config_params
from orchestrator.tracking.server import start_local_server
from orchestrator.tracking.writer import SweepTracker
from workers import contract, mlflow_log
from workers.config import TrialConfig
from workers.errors import XmemError
from workers.mlflow_log import TrialRunLogger
from workers.trial import EpochRecord

REPO = Path(__file__).resolve().parents[1]


@dataclass
class FakeTrial:
    trial_id: str
    name: str
    config: TrialConfig


def _sweep_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _trials() -> list[FakeTrial]:
    return [FakeTrial("aaaa00000001", "sin-sigma0.01", TrialConfig(sigma=0.01, epochs=3)),
            FakeTrial("aaaa00000002", "sin-sigmanull", TrialConfig(sigma=None, epochs=3))]


def _records() -> list[EpochRecord]:
    """Epochs 0..2; alignment (means and per-class) on epochs 0 and 2 only."""
    records = []
    for epoch in range(3):
        values = {contract.TRAIN_LOSS: 2.0 - 0.5 * epoch, contract.TEST_ACC: 0.1 * (epoch + 1)}
        per_class = {}
        if epoch != 1:
            values[contract.ALIGN_GRAD] = 0.25 + epoch
            per_class = {contract.ALIGN_GRAD: [0.5 + epoch, None, 0.75]}
        records.append(EpochRecord(epoch, values, per_class))
    return records


@pytest.fixture
def client(mlflow_server) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=mlflow_server.uri)


@pytest.fixture
def trial_run(mlflow_server) -> tuple[SweepTracker, str]:
    """A fresh sweep with one SCHEDULED trial run: (tracker, run id)."""
    tracker = SweepTracker(mlflow_server.uri, _sweep_name("logger"))
    tracker.ensure_experiment()
    parent = tracker.start_parent_run({"name": tracker.sweep_name}, trial_count=1)
    trial = _trials()[0]
    return tracker, tracker.create_trial_runs([trial], parent)[trial.trial_id]


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# --- driver: experiment, parent run, trial runs ----------------------------------------

def test_experiment_is_created_once_and_reused(mlflow_server, client):
    name = _sweep_name("exp")
    first = SweepTracker(mlflow_server.uri, name).ensure_experiment("Sin, sigma sweep")
    again = SweepTracker(mlflow_server.uri, name).ensure_experiment("Sin, sigma sweep")
    assert first == again
    assert len(client.search_experiments(filter_string=f"name = '{name}'")) == 1
    assert client.get_experiment(first).tags[contract.TAG_NOTE] == "Sin, sigma sweep"


def test_deleted_experiment_is_a_clear_error(mlflow_server, client):
    name = _sweep_name("deleted")
    client.delete_experiment(SweepTracker(mlflow_server.uri, name).ensure_experiment())
    with pytest.raises(XmemError, match="was deleted.*mlflow experiments restore"):
        SweepTracker(mlflow_server.uri, name).ensure_experiment()


def test_parent_run_is_reused_and_set_running_again(mlflow_server, client, tmp_path):
    name = _sweep_name("parent")
    tracker = SweepTracker(mlflow_server.uri, name)
    spec = {"name": name, "grid": {"sigma": [0.01, 10.0]}}
    run_id = tracker.start_parent_run(spec, trial_count=2)
    tracker.finish_parent_run()
    assert client.get_run(run_id).info.status == "FINISHED"

    rerun = SweepTracker(mlflow_server.uri, name)
    grown = {**spec, "grid": {"sigma": [0.01, 1.0, 10.0]}}
    assert rerun.start_parent_run(grown, trial_count=3) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == name
    assert run.data.tags[contract.TAG_SWEEP] == name
    assert run.data.tags[contract.TAG_ROLE] == "parent"
    assert run.data.tags[contract.TAG_TRIAL_COUNT] == "3"
    runs = client.search_runs([rerun.ensure_experiment()])
    assert [r.info.run_id for r in runs] == [run_id]
    spec_file = client.download_artifacts(run_id, "spec.yaml", str(tmp_path))
    assert yaml.safe_load(Path(spec_file).read_text())["grid"]["sigma"] == [0.01, 1.0, 10.0]


def test_trial_runs_are_scheduled_children_with_params_and_tags(mlflow_server, client):
    tracker = SweepTracker(mlflow_server.uri, _sweep_name("children"))
    parent = tracker.start_parent_run({}, trial_count=2)
    trials = _trials()
    run_ids = tracker.create_trial_runs(trials, parent)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or None

    assert set(run_ids) == {t.trial_id for t in trials}
    for trial in trials:
        run = client.get_run(run_ids[trial.trial_id])
        assert run.info.status == "SCHEDULED"
        assert run.info.run_name == trial.name
        assert run.data.params == config_params(trial.config)
        assert set(run.data.params) == set(TrialConfig.keys())
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert tags["xmem.sweep"] == tracker.sweep_name
        assert tags["xmem.trial_id"] == trial.trial_id
        assert tags["xmem.version"] == workers.__version__
        assert tags["xmem.attempts"] == "0"
        assert tags.get("xmem.git_commit") == commit
    by_name = {t.name: client.get_run(run_ids[t.trial_id]).data.params for t in trials}
    assert by_name["sin-sigmanull"]["sigma"] == "null"
    assert by_name["sin-sigma0.01"]["sigma"] == "0.01"
    assert by_name["sin-sigma0.01"]["download"] == "false"
    assert by_name["sin-sigma0.01"]["dataset"] == "digits"


def test_creating_trial_runs_again_reuses_them(mlflow_server, client):
    name = _sweep_name("again")
    tracker = SweepTracker(mlflow_server.uri, name)
    parent = tracker.start_parent_run({}, trial_count=2)
    first = tracker.create_trial_runs(_trials(), parent)

    rerun = SweepTracker(mlflow_server.uri, name)
    parent_again = rerun.start_parent_run({}, trial_count=3)
    extra = FakeTrial("aaaa00000003", "sin-sigma10", TrialConfig(sigma=10.0, epochs=3))
    second = rerun.create_trial_runs(_trials() + [extra], parent_again)

    assert parent_again == parent
    assert {k: second[k] for k in first} == first
    assert second[extra.trial_id] not in first.values()
    found = rerun.trial_runs()
    assert {k: record.run_id for k, record in found.items()} == second
    all_runs = client.search_runs([rerun.ensure_experiment()])
    assert len(all_runs) == 4  # the parent and three trials, nothing twice


def test_trial_runs_follow_a_replaced_parent_run(mlflow_server, client):
    tracker = SweepTracker(mlflow_server.uri, _sweep_name("reparent"))
    old_parent = tracker.start_parent_run({}, trial_count=2)
    run_ids = tracker.create_trial_runs(_trials(), old_parent)
    client.delete_run(old_parent)

    new_parent = tracker.start_parent_run({}, trial_count=2)
    assert new_parent != old_parent
    assert tracker.create_trial_runs(_trials(), new_parent) == run_ids
    for run_id in run_ids.values():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == new_parent


def test_experiment_url_points_at_the_runs_in_model_training_mode(mlflow_server, client):
    tracker = SweepTracker(mlflow_server.uri, _sweep_name("url"))
    experiment_id = tracker.ensure_experiment()
    runs = f"{mlflow_server.uri}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    assert tracker.experiment_url() == runs            # no trials view yet: the plain runs page
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    tracker.publish_trials_view([], ["sigma"])
    assert tracker.experiment_url() == runs + "&viewStateShareKey=xmem-trials"


def test_trials_view_is_rewritten_only_when_it_changes_and_runs_follow_the_spec_order(
        mlflow_server, client):
    tracker, trials = SweepTracker(mlflow_server.uri, _sweep_name("view")), _trials()
    tracker.ensure_experiment()
    parent = tracker.start_parent_run({"name": tracker.sweep_name}, trial_count=2)
    run_ids = tracker.create_trial_runs(trials, parent, {t.trial_id: i for i, t in enumerate(trials)})
    tracker.publish_trials_view([t.trial_id for t in trials], ["sigma"])
    experiment = client.get_experiment(tracker.experiment_id)
    first = experiment.tags["mlflow.sharedViewState.xmem-trials"]
    again = SweepTracker(mlflow_server.uri, tracker.sweep_name)
    again.ensure_experiment()
    again.publish_trials_view([t.trial_id for t in trials], ["sigma"])
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.sharedViewState.xmem-trials"] == first
    # The spec reordered: the runs' places follow, the view's creation time stays.
    again.publish_trials_view([t.trial_id for t in reversed(trials)], ["sigma", "seed"])
    indices = {tid: client.get_run(run_id).data.tags["xmem.trial_index"] for tid, run_id in run_ids.items()}
    assert indices == {trials[0].trial_id: "0001", trials[1].trial_id: "0000"}
    rewritten = json.loads(client.get_experiment(tracker.experiment_id).tags[
        "mlflow.sharedViewState.xmem-trials"])
    assert rewritten["createdAt"] == json.loads(first)["createdAt"]
    assert "params.`seed`" in json.loads(rewritten["state"])["selectedColumns"]


# --- worker: the trial's run ------------------------------------------------------------

def test_logger_logs_one_value_per_step(mlflow_server, client, trial_run):
    _, run_id = trial_run
    logger = TrialRunLogger(mlflow_server.uri, run_id)
    logger.start({"xmem.device": "cpu", "xmem.ray_node_id": "node-1"})
    for record in _records():
        logger.log_record(record)
    assert client.get_metric_history(run_id, contract.TRAIN_LOSS) == []  # queued, not sent
    logger.flush()

    assert logger.pending == []
    assert _history(client, run_id, contract.TRAIN_LOSS) == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert _history(client, run_id, contract.TEST_ACC) == [(0, pytest.approx(0.1)),
                                                          (1, pytest.approx(0.2)),
                                                          (2, pytest.approx(0.3))]
    assert _history(client, run_id, contract.ALIGN_GRAD) == [(0, 0.25), (2, 2.25)]
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["xmem.device"] == "cpu"
    assert run.data.tags["xmem.ray_node_id"] == "node-1"
    assert run.data.tags["xmem.attempts"] == "1"
    assert run.data.tags["xmem.status"] == "running"


def test_flush_sends_batches_of_at_most_1000_and_drops_only_what_was_sent(
        mlflow_server, client, trial_run):
    _, run_id = trial_run
    logger = TrialRunLogger(mlflow_server.uri, run_id)
    logger.start({})
    for epoch in range(250):  # 250 x 10 metrics = 2500 values: 3 requests
        logger.log_record(EpochRecord(epoch, {f"m/{i}": float(epoch * 10 + i) for i in range(10)}))
    sizes: list[int] = []
    send = logger.client.log_batch

    def fail_on_second_request(run_id, metrics=(), **kwargs):
        sizes.append(len(metrics))
        if len(sizes) == 2:
            raise ConnectionError("server away")
        return send(run_id, metrics=metrics, **kwargs)

    logger.client.log_batch = fail_on_second_request
    with pytest.raises(ConnectionError):
        logger.flush()
    assert len(logger.pending) == 1500  # the first 1000 were accepted, the rest kept
    logger.flush()

    assert sizes == [1000, 1000, 1000, 500]
    assert logger.pending == []
    for i in (0, 9):
        assert _history(client, run_id, f"m/{i}") == [(e, float(e * 10 + i)) for e in range(250)]


def test_restarted_worker_continues_the_same_run(mlflow_server, client, trial_run):
    _, run_id = trial_run
    records = _records()
    first = TrialRunLogger(mlflow_server.uri, run_id)
    first.start({"xmem.device": "cpu"})
    for record in records[:2]:
        first.log_record(record)
    first.flush()
    # The worker dies here, after a checkpoint of epoch 1; a new process makes a new logger
    # on the same run and resumes after epoch 1 (the run holds nothing beyond it).
    second = TrialRunLogger(mlflow_server.uri, run_id)
    second.history = list(first.history)
    second.start({"xmem.device": "cpu"}, start_epoch=1)
    second.log_record(records[2])
    second.finish("finished")

    assert second.attempt == 2 and second.run_id == run_id
    assert client.get_run(run_id).data.tags["xmem.attempts"] == "2"
    assert _history(client, run_id, contract.TRAIN_LOSS) == [(0, 2.0), (1, 1.5), (2, 1.0)]


def test_replayed_steps_are_not_logged_twice_and_unsent_restored_steps_are_sent(
        mlflow_server, client, trial_run):
    """Attempt 1 sends epochs 0-1, queues epoch 2 and dies before sending it (the server was
    away); its checkpoint holds the history of 0-2. Attempt 2 restores that history, then
    replays epoch 2 (from the checkpoint's state) and goes on: each step once, none lost."""
    _, run_id = trial_run
    records = _records()
    first = TrialRunLogger(mlflow_server.uri, run_id)
    first.start({})
    for record in records:
        first.log_record(record)
    first.pending = [m for m in first.pending if m.step < 2]
    first.flush()                                    # epoch 2 never reached the server
    checkpoint_history = list(first.history)

    second = TrialRunLogger(mlflow_server.uri, run_id)
    second.history = checkpoint_history
    second.start({}, start_epoch=2)
    assert {m.step for m in second.pending} == {2}   # restored, unsent: queued again
    second.log_record(records[1])                    # a replayed, already logged step
    second.finish("finished")
    assert _history(client, run_id, contract.TRAIN_LOSS) == [(0, 2.0), (1, 1.5), (2, 1.0)]


def test_only_transient_server_errors_are_waited_out():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    assert mlflow_log.is_transient(ConnectionError("refused"))
    assert mlflow_log.is_transient(MlflowException("API request to http://x failed: Max retries exceeded"))
    assert mlflow_log.is_transient(MlflowException("try later", error_code=TEMPORARILY_UNAVAILABLE))
    assert not mlflow_log.is_transient(MlflowException("Run 'abc' not found", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not mlflow_log.is_transient(ValueError("bad value"))


def test_a_server_away_is_transient_and_a_local_disk_error_is_not(tmp_path, monkeypatch):
    """What MLflow really raises with no server on the port is waited out; a full disk, a
    denied or a read-only folder on the worker's side are not (waiting cures none of them)."""
    import errno

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:       # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Exception) as away:
        MlflowClient(f"http://127.0.0.1:{port}").get_run("0" * 32)
    assert mlflow_log.is_transient(away.value), repr(away.value)
    with pytest.raises(OSError) as full:
        with open("/dev/full", "w") as stream:   # ENOSPC, for real
            stream.write("x" * 100_000)
    assert full.value.errno == errno.ENOSPC and not mlflow_log.is_transient(full.value)
    for code in (errno.EACCES, errno.EROFS):
        assert not mlflow_log.is_transient(OSError(code, os.strerror(code), str(tmp_path)))
    try:
        try:
            raise full.value
        except OSError as local:
            raise MlflowException("could not write the artifact") from local
    except MlflowException as wrapped:
        assert not mlflow_log.is_transient(wrapped)


def test_a_worker_fails_at_once_on_a_full_disk_instead_of_waiting(monkeypatch):
    """The worker's patient tracking re-raises a local disk error at once; before, it was taken
    for a server outage and waited on (here 3 s, by default 600 s)."""
    import errno
    import time

    from workers.tune_trial import _PatientTracking

    monkeypatch.setenv("XMEM_TRACKING_WAIT_S", "3")
    tracking = _PatientTracking(TrialRunLogger("http://127.0.0.1:9", "0" * 32))

    def write_artifact():
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/xmem-artifacts/history.parquet")

    started = time.monotonic()
    with pytest.raises(OSError, match="No space left"):
        tracking.call(write_artifact)
    assert time.monotonic() - started < 1.0


def test_final_artifacts_hold_config_history_alignment_and_weights(
        mlflow_server, client, trial_run, tmp_path):
    _, run_id = trial_run
    config = TrialConfig(sigma=0.01, epochs=2)
    logger = TrialRunLogger(mlflow_server.uri, run_id)
    logger.start({})
    for record in _records():
        logger.log_record(record)
    weights = {"hidden.weight": torch.arange(6.0).reshape(2, 3)}
    logger.log_final_artifacts(config, logger.history, logger.alignment_rows, weights)

    assert {f.path for f in client.list_artifacts(run_id)} == {
        "config.yaml", "history.parquet", "alignment.parquet", "weights.pt"}
    local = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    assert yaml.safe_load((local / "config.yaml").read_text()) == config.to_dict()
    history = pq.read_table(local / "history.parquet").to_pylist()
    assert history == [
        {"epoch": 0, contract.TRAIN_LOSS: 2.0, contract.TEST_ACC: 0.1, contract.ALIGN_GRAD: 0.25},
        {"epoch": 1, contract.TRAIN_LOSS: 1.5, contract.TEST_ACC: 0.2, contract.ALIGN_GRAD: None},
        {"epoch": 2, contract.TRAIN_LOSS: 1.0, contract.TEST_ACC: pytest.approx(0.3),
         contract.ALIGN_GRAD: 2.25},
    ]
    alignment = pq.read_table(local / "alignment.parquet").to_pylist()
    assert alignment == [
        {"epoch": 0, "metric": contract.ALIGN_GRAD, "class": 0, "omega": 0.5},
        {"epoch": 0, "metric": contract.ALIGN_GRAD, "class": 1, "omega": None},
        {"epoch": 0, "metric": contract.ALIGN_GRAD, "class": 2, "omega": 0.75},
        {"epoch": 2, "metric": contract.ALIGN_GRAD, "class": 0, "omega": 2.5},
        {"epoch": 2, "metric": contract.ALIGN_GRAD, "class": 1, "omega": None},
        {"epoch": 2, "metric": contract.ALIGN_GRAD, "class": 2, "omega": 0.75},
    ]
    loaded = torch.load(local / "weights.pt")
    assert torch.equal(loaded["hidden.weight"], weights["hidden.weight"])


@pytest.mark.parametrize("status", ["finished", "diverged"])
def test_finish_flushes_and_ends_the_run_finished(mlflow_server, client, trial_run, status):
    _, run_id = trial_run
    logger = TrialRunLogger(mlflow_server.uri, run_id)
    logger.start({})
    logger.log_record(_records()[0])
    logger.finish(status)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["xmem.status"] == status
    assert _history(client, run_id, contract.TRAIN_LOSS) == [(0, 2.0)]


def test_fail_ends_the_run_failed_with_the_error_text(mlflow_server, client, trial_run, tmp_path):
    _, run_id = trial_run
    logger = TrialRunLogger(mlflow_server.uri, run_id)
    logger.start({})
    logger.log_record(_records()[0])
    logger.fail("Traceback (most recent call last):\nRuntimeError: boom\n", "RuntimeError: boom",
                contract.ERROR_CRASH)

    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["xmem.status"] == "failed"
    assert run.data.tags["xmem.error"] == "RuntimeError: boom"
    assert run.data.tags["xmem.error_kind"] == "crash"
    assert _history(client, run_id, contract.TRAIN_LOSS) == [(0, 2.0)]
    error_file = client.download_artifacts(run_id, "error.txt", str(tmp_path))
    assert "RuntimeError: boom" in Path(error_file).read_text()


def test_client_env_applies_only_inside_and_yields_to_the_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with mlflow_log.client_env():
        assert mlflow.environment_variables.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 3
        assert mlflow.environment_variables.MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 5
    assert mlflow.environment_variables.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 7  # MLflow's
    assert mlflow.environment_variables.MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 5


# --- the local server -------------------------------------------------------------------

def test_server_on_a_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(XmemError, match=f"port {port} on 127.0.0.1 is in use"):
            start_local_server(tmp_path, port=port)


def test_server_on_an_unusable_root_is_a_clear_error(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(XmemError, match="cannot use .*file for the MLflow store"):
        start_local_server(not_a_folder)


def test_server_that_exits_early_reports_its_log_and_command(tmp_path):
    (tmp_path / "mlflow.db").write_text("this is not a SQLite database " * 100)
    with pytest.raises(XmemError) as raised:
        start_local_server(tmp_path, timeout_s=60)
    message = str(raised.value)
    assert "exited with code" in message
    assert "server.log" in message and "mlflow server" in message
    assert "--backend-store-uri sqlite:///" in message
