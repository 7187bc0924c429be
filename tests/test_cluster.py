"""xmem on a Ray cluster of several nodes: real ``ray start`` nodes on this machine, a real
``mlflow server``, read back with ``MlflowClient``.

- Trials run on both nodes of a two-node cluster, and a node that dies mid-trial costs
  nothing: its trial resumes from its checkpoint in the shared ``--storage`` folder on the
  node left, one run per trial, one value per step.
- The embedded tracking server is refused when the cluster Ray joined (by RAY_ADDRESS, or by
  Ray's current-cluster file with no address at all) has a node on another host, and a
  ``--storage`` folder that a node does not see is refused before anything is created.
- A trial that fails before its first report is still named, with its whole reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.run import run_sweep
from ray_nodes import RayCluster, can_fake_another_host
from workers import contract

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

# About 0.03 s per epoch on one core of this 2-core machine (all 1,198 digits, 150 steps of a
# 1024-wide MLP): a few seconds per trial, long enough to overlap the other node's start-up
# and to be caught mid-training.
SPEC = """name: {name}
defaults:
  dataset: digits
  hidden: 1024
  batch_size: 8
  test_size: 200
  probe_per_class: 5
  epochs: {epochs}
  eval_every: 1
  align_every: 10
  checkpoint_every: 10
  data_dir: {data_dir}
grid:
  sigma: {sigmas}
max_failures: 2
"""
# Ray notices a dead node after health_check_failure_threshold missed checks, one every
# health_check_period_ms (defaults 5 x 3 s plus time-outs): shortened so that the dead node's
# trial is retried within seconds.
FAST_NODE_FAILURE = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                     "RAY_health_check_failure_threshold": "3"}


def _spec(tmp_path: Path, sigmas: str, epochs: int) -> tuple[Path, str]:
    name = f"c-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, epochs=epochs, sigmas=sigmas,
                                data_dir=tmp_path / "data"))
    return path, name


def _trial_runs(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name(name)
    return [run for run in client.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" in run.data.tags and contract.TAG_SUPERSEDED_BY not in run.data.tags]


def _steps(client: MlflowClient, run_id: str, key: str = contract.TRAIN_LOSS) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


def test_trials_run_on_both_nodes_and_survive_a_node_killed_mid_trial(tmp_path, mlflow_server):
    """Two nodes of one CPU each (``ray start --head``, ``ray start --address``, each in its
    own session). Sweep 1: two trials run at once, one on each. Sweep 2: the second node's
    processes are all SIGKILLed while it trains a trial; the sweep finishes on the head, the
    killed trial resumed from its checkpoint in the shared storage folder."""
    client = MlflowClient(mlflow_server.uri)
    storage = str(tmp_path / "shared-storage")   # one folder every node sees: a shared filesystem
    with RayCluster(node_env=FAST_NODE_FAILURE) as cluster:
        address = cluster.start_head(cpus=1)
        second = cluster.add_node(cpus=1)
        head_id, second_id = cluster.nodes[0].node_id(), second.node_id()

        # Sweep 1: each trial (~5 s) outlasts the start of a worker process on the other node,
        # so the second trial does not wait for the first one's worker.
        spec, name = _spec(tmp_path, "[0.01, 10.0]", epochs=150)
        outcome = run_sweep(str(spec), address=address, tracking_uri=mlflow_server.uri,
                            storage=storage, echo=lambda line: None)
        assert [row["status"] for row in outcome.rows] == ["finished"] * 2
        runs = _trial_runs(client, name)
        assert len(runs) == 2
        assert {run.data.tags[contract.TAG_RAY_NODE] for run in runs} == {head_id, second_id}

        # Sweep 2: trials of ~10 s (300 epochs, a checkpoint every 10): the one on the second
        # node is caught after its checkpoints at epochs 10 and 20 and well before its end.
        spec, name = _spec(tmp_path, "[0.1, 1.0, 10.0]", epochs=300)
        killed: dict = {}

        def kill_the_second_node_mid_trial() -> None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not killed:
                experiment = client.get_experiment_by_name(name)
                for run in _trial_runs(client, name) if experiment else []:
                    if (run.data.tags.get(contract.TAG_RAY_NODE) == second_id
                            and run.data.tags.get(contract.TAG_STATUS) == "running"
                            and 30 <= (_steps(client, run.info.run_id) or [-1])[-1] < 250):
                        second.kill()
                        killed["trial_id"] = run.data.tags[contract.TAG_TRIAL_ID]
                        break
                time.sleep(0.3)

        killer = threading.Thread(target=kill_the_second_node_mid_trial, daemon=True)
        killer.start()
        outcome = run_sweep(str(spec), address=address, tracking_uri=mlflow_server.uri,
                            storage=storage, echo=lambda line: None)
        killer.join(timeout=5)
        assert killed, "no trial was caught training on the second node"
        assert not second.processes()

    assert [row["status"] for row in outcome.rows] == ["finished"] * 3
    runs = {run.data.tags[contract.TAG_TRIAL_ID]: run for run in _trial_runs(client, name)}
    assert len(runs) == 3                                           # one run per trial, ever
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert _steps(client, run.info.run_id) == list(range(301))  # one value per step
    survivor = runs[killed["trial_id"]]
    assert survivor.data.tags[contract.TAG_RAY_NODE] == head_id      # finished on the head
    assert int(survivor.data.tags[contract.TAG_ATTEMPTS]) >= 2
    assert int(survivor.data.tags[contract.TAG_START_EPOCH]) >= 20    # from its checkpoint


def _xmem(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``xmem ARGS`` in a process of its own, as a user runs it: ``ray.init()`` then reads
    RAY_ADDRESS and Ray's current-cluster file from a fresh process (Ray keeps state per
    process, which would leak into later tests)."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **env}, timeout=300)


def _assert_user_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, (fragment, output)


@pytest.mark.skipif(not can_fake_another_host(),
                    reason="needs unshare --uts --mount (root) to stand in for a second machine")
def test_a_cluster_with_a_node_on_another_host_refuses_the_embedded_server_and_unshared_storage(
        tmp_path, mlflow_server):
    """Stand-in, named as such, for a node on another machine, which cannot run here: a node
    started with a host name of its own (``xmem-stand-in-host``) and an empty tmpfs over the
    folder ``hidden/``. The driver finds the cluster (1) through Ray's current-cluster file
    with no address at all, (2) through RAY_ADDRESS set to an address on 127.0.0.1: both
    times the address looks local, and the embedded server is refused all the same, nothing
    created. (3) With a tracking server, a storage folder the node does not see is refused."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    spec, name = _spec(tmp_path, "[1.0]", epochs=2)   # never runs
    store = tmp_path / "store"
    with RayCluster() as cluster:
        address = cluster.start_head(cpus=1)
        cluster.add_node(cpus=1, hostname="xmem-stand-in-host", hidden=[hidden])
        no_address = {"RAY_TMPDIR": str(cluster.temp_dir), "RAY_ADDRESS": "", "MLFLOW_TRACKING_URI": ""}

        done = _xmem("sweep", str(spec), "--storage", str(store), env=no_address)
        _assert_user_error(done, "runs trials on other machines", "127.0.0.1",
                           "found through Ray's current-cluster file", "xmem-stand-in-host",
                           "--tracking-uri", "Nothing was created")
        assert not store.exists()

        done = _xmem("sweep", str(spec), "--storage", str(store),
                     env={**no_address, "RAY_ADDRESS": address})
        _assert_user_error(done, "runs trials on other machines", "(RAY_ADDRESS;",
                           "xmem-stand-in-host")
        assert not store.exists()

        done = _xmem("sweep", str(spec), "--address", address, "--tracking-uri", mlflow_server.uri,
                     "--storage", str(hidden / "store"), env={})
        _assert_user_error(done, f"storage {hidden / 'store'}: not visible on node",
                           "host xmem-stand-in-host", "s3://")
        assert "other machines" not in done.stdout + done.stderr    # a tracking server is given
        assert not (hidden / "store").exists()
        assert MlflowClient(mlflow_server.uri).get_experiment_by_name(name) is None


def test_a_trial_that_fails_before_its_first_report_is_named_with_its_whole_reason(
        tmp_path, ray_cluster):
    """A trial that fails in its worker before reporting anything, as on a node that cannot
    set up the storage (Tune's result then holds no config: the driver used to crash on it;
    results are now matched to trials by their folders). Here, for real, a payload whose
    trial config the worker rejects before it starts: the driver learns which trial failed,
    with the config error's whole message (it used to arrive one problem per character)."""
    from orchestrator import tune_runner
    from workers.contract import PackPayload, TrialPayload

    tune_runner.connect(ray_cluster)
    try:
        payload = TrialPayload(trial={"sigma": "not a number"}, trial_id="0123456789ab",
                               name="broken", run_id="no-run", tracking_uri="http://127.0.0.1:9")
        pack = PackPayload(pack_id=payload.trial_id, name=payload.name, members=[payload.to_dict()])
        ran = tune_runner.run_trials("broken", [pack], storage=str(tmp_path / "store"), cpu=1,
                                     gpu=0, max_concurrent=None, max_failures=0,
                                     events=tune_runner.TrialEvents(), session="s1")
    finally:
        tune_runner.disconnect()
    assert list(ran.errors) == ["0123456789ab"]
    assert "sweep trial: 1 problem(s)" in ran.errors["0123456789ab"]   # the whole reason
    assert "sigma" in ran.errors["0123456789ab"]
