"""One driver per sweep (``orchestrator.tracking.lease``), against a real MLflow server: a second
driver refuses and names the holder, a dead holder on this host is taken over at once, the
heartbeat renews, a release frees, two first runs racing end with one parent run and one
holder, and ``xmem sweep`` refuses before it creates or changes anything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import assert_user_error
from orchestrator.cli import main
from orchestrator.tracking.lease import LeaseHolder, LeaseTimes, SweepLease, take_lease
from orchestrator.tracking.writer import SweepTracker
from workers.contract import TAG_LEASE_EXPIRES, TAG_LEASE_HOLDER
from workers.errors import XmemError

FAST = LeaseTimes(duration=30, heartbeat=0.3, settle=0.5)
COMMAND = "xmem sweep s.yaml"


def _sweep() -> str:
    return f"lease-{uuid.uuid4().hex[:8]}"


def _lease_tags(uri: str, run_id: str) -> tuple[LeaseHolder | None, float]:
    tags = MlflowClient(uri).get_run(run_id).data.tags
    return LeaseHolder.parse(tags.get(TAG_LEASE_HOLDER)), float(tags.get(TAG_LEASE_EXPIRES, 0))


def _plant_holder(uri: str, name: str, holder: LeaseHolder, expires: float) -> str:
    """A parent run whose lease another driver holds (as that driver would have written it)."""
    run_id = SweepTracker(uri, name).open_or_create_parent_run()
    client = MlflowClient(uri)
    client.set_tag(run_id, TAG_LEASE_HOLDER, holder.to_tag())
    client.set_tag(run_id, TAG_LEASE_EXPIRES, f"{expires:.0f}")
    return run_id


def _other_host(pid: int = 4242) -> LeaseHolder:
    return LeaseHolder("far-away-host", pid, uuid.uuid4().hex, time.time() - 60)


def test_second_driver_refuses_naming_the_holder_and_takes_over_only_when_asked(mlflow_server):
    name = _sweep()
    first = take_lease(SweepTracker(mlflow_server.uri, name), command=COMMAND, times=FAST)
    try:
        with pytest.raises(XmemError) as refused:
            take_lease(SweepTracker(mlflow_server.uri, name), command=COMMAND, times=FAST)
        message = str(refused.value)
        for fragment in (f"host {socket.gethostname()}", f"pid {os.getpid()}", "expires at",
                         f"{COMMAND} --take-over", f"xmem status {name}"):
            assert fragment in message, (fragment, message)
        assert _lease_tags(mlflow_server.uri, first.run_id)[0].token == first.holder.token

        notes: list[str] = []
        second = take_lease(SweepTracker(mlflow_server.uri, name), command=COMMAND, times=FAST,
                            take_over=True, echo=notes.append)
        assert any("--take-over" in note for note in notes), notes
        time.sleep(1.0)  # the first driver's heartbeat sees that its lease was taken
        assert first.lost_to is not None and first.lost_to.token == second.holder.token
        second.release()
        holder, expires = _lease_tags(mlflow_server.uri, second.run_id)
        assert holder.token == second.holder.token and expires == 0   # released
    finally:
        first.release()
    # Released: the next driver takes it without a word.
    notes = []
    third = take_lease(SweepTracker(mlflow_server.uri, name), command=COMMAND, times=FAST,
                       echo=notes.append)
    third.release()
    assert notes == []


def test_a_dead_driver_on_this_host_is_taken_over_at_once(mlflow_server):
    """A driver killed with kill -9 must not block the rerun that follows it."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = LeaseHolder.this_process()
    cases = {
        "no such process": LeaseHolder(here.host, gone.pid, uuid.uuid4().hex, time.time(),
                                       here.process_start, here.pid_ns),
        # The pid now belongs to another process (this one): its start time differs.
        "pid reused": LeaseHolder(here.host, os.getpid(), uuid.uuid4().hex, time.time(),
                                  here.process_start - 100, here.pid_ns),
    }
    for case, holder in cases.items():
        name = _sweep()
        run_id = _plant_holder(mlflow_server.uri, name, holder, time.time() + 3600)
        notes: list[str] = []
        lease = take_lease(SweepTracker(mlflow_server.uri, name), command=COMMAND, times=FAST,
                           echo=notes.append)
        lease.release()
        assert lease.run_id == run_id, case
        assert any(f"pid {holder.pid}" in note and "gone" in note for note in notes), (case, notes)


def test_a_live_holder_elsewhere_is_refused_until_its_lease_expires(mlflow_server):
    name = _sweep()
    holder = _other_host()
    run_id = _plant_holder(mlflow_server.uri, name, holder, time.time() + 3600)
    with pytest.raises(XmemError, match="host far-away-host, pid 4242"):
        take_lease(SweepTracker(mlflow_server.uri, name), command=COMMAND, times=FAST)
    assert _lease_tags(mlflow_server.uri, run_id)[0] == holder            # nothing changed
    status = CliRunner().invoke(main, ["status", name, "--tracking-uri", mlflow_server.uri])
    assert status.exit_code == 0, status.output
    assert "run now by the driver on host far-away-host, pid 4242" in status.output
    MlflowClient(mlflow_server.uri).set_tag(run_id, TAG_LEASE_EXPIRES, f"{time.time() - 1:.0f}")
    lease = take_lease(SweepTracker(mlflow_server.uri, name), command=COMMAND, times=FAST)
    lease.release()


def test_the_heartbeat_renews_the_lease_past_its_duration(mlflow_server):
    times = LeaseTimes(duration=2, heartbeat=0.3, settle=0.1)
    lease = take_lease(SweepTracker(mlflow_server.uri, _sweep()), command=COMMAND, times=times)
    try:
        time.sleep(3.5)
        holder, expires = _lease_tags(mlflow_server.uri, lease.run_id)
        assert holder.token == lease.holder.token and expires > time.time()
    finally:
        lease.release()


def test_two_first_runs_racing_end_with_one_parent_run_and_one_holder(mlflow_server):
    name = _sweep()
    start = threading.Barrier(2)
    outcomes: list = []

    def driver() -> None:
        tracker = SweepTracker(mlflow_server.uri, name)
        start.wait()
        try:
            outcomes.append(take_lease(tracker, command=COMMAND, times=FAST))
        except XmemError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=driver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    leases = [o for o in outcomes if isinstance(o, SweepLease)]
    try:
        assert len(outcomes) == 2 and len(leases) == 1, outcomes
        assert "being run by another driver" in str(next(o for o in outcomes if o not in leases))
        client = MlflowClient(mlflow_server.uri)
        experiment = client.get_experiment_by_name(name)
        parents = client.search_runs([experiment.experiment_id], "tags.`xmem.role` = 'parent'")
        assert [run.info.run_id for run in parents] == [leases[0].run_id]
    finally:
        for lease in leases:
            lease.release()


def test_lease_times_come_from_the_environment_and_are_checked():
    assert LeaseTimes.from_environment({}) == LeaseTimes(90, 20, 1)
    assert LeaseTimes.from_environment({"XMEM_LEASE_SECONDS": "5",
                                        "XMEM_LEASE_HEARTBEAT_SECONDS": "1"}).duration == 5
    for bad in ({"XMEM_LEASE_SECONDS": "soon"}, {"XMEM_LEASE_SECONDS": "10",
                                                 "XMEM_LEASE_HEARTBEAT_SECONDS": "10"}):
        with pytest.raises(XmemError, match="XMEM_LEASE"):
            LeaseTimes.from_environment(bad)


def test_xmem_sweep_refuses_while_another_driver_holds_the_lease_and_changes_nothing(
        tmp_path, ray_cluster, mlflow_server):
    name = _sweep()
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: {name}\ndefaults:\n  dataset: digits\n  epochs: 1\n  hidden: 8\n"
                    f"  data_dir: {tmp_path / 'data'}\ngrid:\n  sigma: [0.1, 1.0]\n")
    run_id = _plant_holder(mlflow_server.uri, name, _other_host(), time.time() + 3600)
    client = MlflowClient(mlflow_server.uri)
    before = client.get_run(run_id)

    result = CliRunner().invoke(main, ["sweep", str(spec), "--address", ray_cluster,
                                       "--tracking-uri", mlflow_server.uri,
                                       "--storage", str(tmp_path / "store")])
    assert_user_error(result, "being run by another driver", "host far-away-host, pid 4242",
                      f"xmem sweep {spec} --take-over")
    runs = client.search_runs([before.info.experiment_id])
    assert [run.info.run_id for run in runs] == [run_id]                  # no trial run
    after = client.get_run(run_id)
    assert after.info.status == before.info.status
    assert after.data.tags == before.data.tags
    assert json.loads(after.data.tags[TAG_LEASE_HOLDER])["host"] == "far-away-host"
