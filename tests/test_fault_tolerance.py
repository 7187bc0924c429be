"""Fault injection with real processes (Ray cluster, ``mlflow server``): nothing lost, nothing
duplicated, checked through ``MlflowClient``. Each test states what it breaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import assert_user_error
from orchestrator.cli import main
from orchestrator.expand import expand_trials
from orchestrator.spec import load_spec
from orchestrator.run import run_sweep
from orchestrator.tracking.server import start_local_server
from workers import contract
from workers.pack import PackedTrials

pytestmark = pytest.mark.slow

LONG_ENOUGH = """
defaults:
  dataset: digits
  hidden: 256
  batch_size: 16
  train_size: 400
  test_size: 200
  probe_per_class: 5
  epochs: {epochs}
  eval_every: 1
  align_every: 5
  checkpoint_every: 5
  data_dir: {data_dir}
"""


def _spec(tmp_path: Path, grid: str, epochs: int = 30, extra: str = "") -> tuple[Path, str]:
    name = f"f-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + LONG_ENOUGH.format(epochs=epochs, data_dir=tmp_path / "data")
                    + grid + extra)
    return path, name


def _runs(uri: str, name: str) -> dict[str, object]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {}
    return {r.data.tags["xmem.trial_id"]: r for r in client.search_runs([experiment.experiment_id])
            if "xmem.trial_id" in r.data.tags and contract.TAG_SUPERSEDED_BY not in r.data.tags}


def _steps(uri: str, run_id: str, key: str = contract.TRAIN_LOSS) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def _wait_for(condition, timeout_s: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _running_pid_at_step(uri: str, name: str, step: int, trial_id: str | None = None):
    """(trial id, worker pid) of a trial whose run logged at least ``step`` and is running."""
    for tid, run in _runs(uri, name).items():
        if trial_id not in (None, tid) or run.data.tags.get("xmem.status") != "running":
            continue
        pid = run.data.tags.get("xmem.pid")
        if pid and (_steps(uri, run.info.run_id) or [-1])[-1] >= step:
            return tid, int(pid)
    return None


def _kill_worker_when_at(uri: str, name: str, step: int, killed: dict) -> threading.Thread:
    def kill() -> None:
        found = _wait_for(lambda: _running_pid_at_step(uri, name, step), what=f"a trial at step {step}")
        killed["trial_id"], killed["pid"] = found
        os.kill(found[1], signal.SIGKILL)
    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _reference_metrics(spec_path: Path, trial_id: str, pack_with: tuple[str, ...] = ()) -> list[dict]:
    """An uninterrupted in-process run of the same config by the sweep's engine (a pack, of one
    or with the trials ``pack_with``), on one thread like a Ray worker."""
    configs = {t.trial_id: t.config.replace(device="cpu") for t in expand_trials(load_spec(spec_path))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pack = PackedTrials([(tid, configs[tid]) for tid in (trial_id, *pack_with)])
        return [step.records[trial_id].flat() for step in pack.run() if trial_id in step.records]
    finally:
        torch.set_num_threads(threads)


def assert_history_matches(uri: str, run_id: str, reference: list[dict], keys, rel: float) -> None:
    """Each metric of ``keys`` in the run has exactly one value per step of ``reference`` (the
    records of an uninterrupted run), equal to it within ``rel``."""
    client = MlflowClient(uri)
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        expected = [(r[contract.EPOCH], r[key]) for r in reference if key in r]
        assert [m.step for m in history] == [step for step, _ in expected], key  # one value per step
        assert [m.value for m in history] == pytest.approx([v for _, v in expected], rel=rel), key


def test_killed_worker_is_retried_from_its_checkpoint_and_matches_an_uninterrupted_run(
        tmp_path, ray_cluster, mlflow_server):
    """Breaks: SIGKILL of a trial's worker process mid-training."""
    # 50 epochs: the killer (polling every 0.3 s) has a wide window after step 12.
    spec, name = _spec(tmp_path, "grid:\n  sigma: [1.0]\n", epochs=50, extra="max_failures: 2\n")
    killed: dict = {}
    killer = _kill_worker_when_at(mlflow_server.uri, name, 12, killed)
    run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri,
              storage=str(tmp_path / "store"), echo=lambda line: None)
    killer.join(timeout=5)
    assert killed, "the worker was never killed"

    run = _runs(mlflow_server.uri, name)[killed["trial_id"]]
    assert run.info.status == "FINISHED" and run.data.tags["xmem.status"] == "finished"
    assert run.data.tags["xmem.attempts"] == "2"
    assert int(run.data.tags["xmem.start_epoch"]) >= 10          # resumed, not restarted
    assert int(run.data.tags["xmem.pid"]) != killed["pid"]
    assert_history_matches(mlflow_server.uri, run.info.run_id, _reference_metrics(spec, killed["trial_id"]),
                           (contract.TRAIN_LOSS, contract.TEST_ACC, contract.ALIGN_GRAD,
                            contract.DYN_WEIGHT_CHANGE_HIDDEN), rel=1e-6)


def test_driver_killed_mid_sweep_then_rerun_finishes_without_rerunning_finished_trials(
        tmp_path, ray_cluster, mlflow_server):
    """Breaks: SIGKILL of the `xmem sweep` driver while trials run."""
    spec, name = _spec(tmp_path, "grid:\n  sigma: [0.1, 1.0, 10.0]\n", epochs=30,
                       extra="max_concurrent: 1\n")
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "sweep", str(spec), "--address", ray_cluster,
         "--tracking-uri", mlflow_server.uri, "--storage", str(tmp_path / "store")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def one_finished_and_one_running():
            runs = _runs(mlflow_server.uri, name)
            finished = [r for r in runs.values() if r.info.status == "FINISHED"]
            return finished and _running_pid_at_step(mlflow_server.uri, name, 10)
        _wait_for(one_finished_and_one_running, timeout_s=180, what="one finished and one running trial")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = {tid: (r.info.run_id, r.info.end_time) for tid, r in _runs(mlflow_server.uri, name).items()
              if r.info.status == "FINISHED"}
    time.sleep(3)  # Ray ends a dead driver's actors; give it a moment

    lines: list[str] = []
    run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri,
              storage=str(tmp_path / "store"), echo=lines.append)
    runs = _runs(mlflow_server.uri, name)
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(name)
    trial_runs = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    current = [r for r in trial_runs if contract.TAG_SUPERSEDED_BY not in r.data.tags]
    assert len(current) == 3                                            # one current run per trial
    # Any other run was superseded by a later attempt of the same trial (its series ends there).
    assert {r.data.tags["xmem.trial_id"] for r in trial_runs} == set(runs)
    assert all(r.info.status == "FINISHED" and r.data.tags["xmem.status"] == "finished" for r in runs.values())
    for tid, (run_id, end_time) in before.items():
        assert runs[tid].info.run_id == run_id and runs[tid].info.end_time == end_time  # not rerun
    for run in runs.values():
        assert _steps(mlflow_server.uri, run.info.run_id) == list(range(31))
    assert any("resumed from checkpoints" in line for line in lines)


def test_added_grid_points_run_alone(tmp_path, ray_cluster, mlflow_server):
    """Changes: two sigmas added to a finished sweep's grid."""
    spec, name = _spec(tmp_path, "grid:\n  sigma: [0.1, 10.0]\n", epochs=3)
    storage = str(tmp_path / "store")
    run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri, storage=storage,
              echo=lambda line: None)
    first = {tid: (r.info.run_id, r.info.end_time) for tid, r in _runs(mlflow_server.uri, name).items()}
    spec.write_text(spec.read_text().replace("sigma: [0.1, 10.0]", "sigma: [0.1, 1.0, 3.0, 10.0]"))
    lines: list[str] = []
    run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri, storage=storage, echo=lines.append)
    runs = _runs(mlflow_server.uri, name)
    assert len(runs) == 4
    for tid, (run_id, end_time) in first.items():
        assert runs[tid].info.run_id == run_id and runs[tid].info.end_time == end_time
        assert runs[tid].data.tags["xmem.attempts"] == "1"
    new = [r for tid, r in runs.items() if tid not in first]
    assert sorted(r.data.params["sigma"] for r in new) == ["1.0", "3.0"]
    assert all(r.data.tags["xmem.status"] == "finished" for r in new)
    assert any("2 finished (kept), 0 resumed from checkpoints, 0 restarted, 2 new" in line for line in lines)


def test_tracking_server_outage_mid_trial_loses_no_step(tmp_path, ray_cluster):
    """Breaks: the MLflow server is stopped for a while mid-trial, then restarted on the same store."""
    server = start_local_server(tmp_path / "mlflow")
    port = int(server.uri.rsplit(":", 1)[1])
    spec, name = _spec(tmp_path, "grid:\n  sigma: [1.0]\n", epochs=60)
    outage: dict = {}
    sweep_done = threading.Event()

    def blip() -> None:
        nonlocal server
        _wait_for(lambda: _running_pid_at_step(server.uri, name, 5), what="the trial at step 5")
        server.stop()
        outage["stopped"] = time.monotonic()
        time.sleep(5)
        server = start_local_server(tmp_path / "mlflow", port=port)
        outage["back"] = time.monotonic()
        # The server dies with the thread that started it: keep this one alive meanwhile.
        sweep_done.wait(timeout=300)

    thread = threading.Thread(target=blip, daemon=True)
    thread.start()
    try:
        run_sweep(str(spec), address=ray_cluster, tracking_uri=server.uri,
                  storage=str(tmp_path / "store"), echo=lambda line: None)
        assert "back" in outage, "the server was never restarted"
        (run,) = _runs(server.uri, name).values()
        assert run.info.status == "FINISHED" and run.data.tags["xmem.status"] == "finished"
        assert run.data.tags["xmem.attempts"] == "1"          # rode out the outage, no retry
        for key in (contract.TRAIN_LOSS, contract.TEST_ACC):
            assert _steps(server.uri, run.info.run_id, key) == list(range(61))
    finally:
        server.stop()
        sweep_done.set()


def test_restart_failed_reruns_a_failed_trial_from_scratch_in_a_run_that_supersedes_it(
        tmp_path, ray_cluster, mlflow_server):
    """Breaks: a worker killed with no retries left (the trial fails with a checkpoint)."""
    spec, name = _spec(tmp_path, "grid:\n  sigma: [1.0]\n", epochs=50, extra="max_failures: 0\n")
    storage = str(tmp_path / "store")
    killed: dict = {}
    killer = _kill_worker_when_at(mlflow_server.uri, name, 12, killed)
    first = run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri, storage=storage,
                      echo=lambda line: None)
    killer.join(timeout=5)
    assert [row["status"] for row in first.rows] == ["failed"]
    (failed,) = _runs(mlflow_server.uri, name).values()

    status = CliRunner().invoke(main, ["status", name, "--tracking-uri", mlflow_server.uri])
    assert status.exit_code == 0, status.output
    assert "failed" in status.output and "1 failed" in status.output

    # By name, without the YAML path: `xmem resume` finds the spec and storage of the sweep.
    resumed = CliRunner().invoke(main, ["resume", name, "--tracking-uri", mlflow_server.uri,
                                        "--address", ray_cluster, "--restart-failed"])
    assert resumed.exit_code == 0, resumed.output
    lines = resumed.output.splitlines()
    (run,) = _runs(mlflow_server.uri, name).values()
    # One attempt lineage per run: the failed attempt's series stays in its run, superseded.
    assert run.info.run_id != failed.info.run_id
    assert run.data.tags[contract.TAG_SUPERSEDES] == failed.info.run_id
    old = MlflowClient(mlflow_server.uri).get_run(failed.info.run_id)
    assert old.data.tags[contract.TAG_SUPERSEDED_BY] == run.info.run_id
    assert old.info.status == "FAILED" and run.info.run_name == old.info.run_name
    assert run.info.status == "FINISHED" and run.data.tags["xmem.status"] == "finished"
    assert run.data.tags["xmem.start_epoch"] == "0"                # from scratch
    assert run.data.tags["xmem.attempts"] == "2"
    assert _steps(mlflow_server.uri, run.info.run_id) == list(range(51))
    assert any("1 restarted" in line for line in lines)
    status = CliRunner().invoke(main, ["status", name, "--tracking-uri", mlflow_server.uri])
    assert "1 finished" in status.output and "50/50" in status.output


def test_status_of_an_unknown_sweep_lists_the_known_ones(mlflow_server):
    result = CliRunner().invoke(main, ["status", "no-such-sweep", "--tracking-uri", mlflow_server.uri])
    assert_user_error(result, "no sweep named 'no-such-sweep'")
