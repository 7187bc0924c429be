"""One attempt lineage per run: a metric series in MLflow never mixes two attempts.

An attempt that cannot continue its run's series (it starts over, or resumes from a
checkpoint older than what the run holds) moves to a new run that supersedes the old one;
readers, the driver and the UI's trials view skip superseded runs. Real ``mlflow server``.
"""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest

import workers
from orchestrator.tracking import runs_view
from orchestrator.tracking.writer import SweepTracker
from test_tracking import FakeTrial, _records, _trials
from workers import contract
from workers.config import TrialConfig
from workers.mlflow_log import TrialRunLogger
from workers.provenance import code_commit
from workers.trial import EpochRecord


@pytest.fixture
def client(mlflow_server) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=mlflow_server.uri)


@pytest.fixture
def sweep(mlflow_server) -> tuple[SweepTracker, str]:
    """A sweep with one SCHEDULED trial run: (tracker, its run id)."""
    tracker = SweepTracker(mlflow_server.uri, f"lineage-{uuid.uuid4().hex[:8]}")
    tracker.ensure_experiment()
    parent = tracker.start_parent_run({"name": tracker.sweep_name}, trial_count=1)
    trial = _trials()[0]
    return tracker, tracker.create_trial_runs([trial], parent, {trial.trial_id: 0})[trial.trial_id]


def _series(client, run_id: str, key: str = contract.TRAIN_LOSS) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _attempt(uri: str, run_id: str, records: list[EpochRecord], *, history=(), start_epoch=-1,
             finish: bool = False) -> TrialRunLogger:
    """One worker attempt: restore ``history``, start after ``start_epoch``, log ``records``."""
    logger = TrialRunLogger(uri, run_id)
    logger.history = list(history)
    logger.start({"xmem.device": "cpu"}, start_epoch=start_epoch)
    for record in records:
        logger.log_record(record)
    if finish:
        logger.finish("finished")
    else:
        logger.flush()
    return logger


def _shifted(records: list[EpochRecord], by: float) -> list[EpochRecord]:
    """The same epochs with other values: another attempt (on a GPU, say) computes others."""
    return [EpochRecord(r.epoch, {k: v + by for k, v in r.metrics.items()}, r.per_class) for r in records]


def test_a_restart_from_scratch_moves_to_a_new_run_that_supersedes_the_old(mlflow_server, client, sweep):
    tracker, old_id = sweep
    records = _records()
    _attempt(mlflow_server.uri, old_id, records[:2])          # killed after epoch 1, no checkpoint
    again = _attempt(mlflow_server.uri, old_id, _shifted(records, 10.0), finish=True)

    new_id = again.run_id
    assert new_id != old_id
    old, new = client.get_run(old_id), client.get_run(new_id)
    # Each run holds exactly one attempt's series.
    assert _series(client, old_id) == [(0, 2.0), (1, 1.5)]
    assert _series(client, new_id) == [(0, 12.0), (1, 11.5), (2, 11.0)]
    assert old.data.tags[contract.TAG_SUPERSEDED_BY] == new_id and old.info.status == "KILLED"
    assert new.data.tags[contract.TAG_SUPERSEDES] == old_id
    # The new run is the trial's: same name, params, identity, parent, place; its own outcome.
    assert new.info.run_name == old.info.run_name and new.data.params == old.data.params
    for tag in (contract.TAG_TRIAL_ID, contract.TAG_SWEEP, contract.TAG_ROLE, contract.TAG_PARENT_RUN,
                contract.TAG_TRIAL_INDEX):
        assert new.data.tags[tag] == old.data.tags[tag], tag
    assert new.info.status == "FINISHED" and new.data.tags[contract.TAG_STATUS] == "finished"
    assert new.data.tags[contract.TAG_ATTEMPTS] == "2"
    assert new.info.start_time == old.info.start_time          # the trial's place in time order
    # Every reader sees the new run only: the driver's plan, status, export, report.
    trial_id = _trials()[0].trial_id
    assert tracker.trial_runs()[trial_id].run_id == new_id
    assert [r.run_id for r in tracker.trial_records()] == [new_id]
    # ... and so does the MLflow UI's trials view (its filter, asked of the real server).
    state = runs_view.trials_view_state(["sigma"], trial_count=1)
    shown = client.search_runs([tracker.experiment_id], state["searchFilter"])
    assert [r.info.run_id for r in shown] == [new_id]
    # A rerun of the driver finds the trial's run, not the superseded one.
    assert tracker.create_trial_runs([_trials()[0]], tracker.parent_run_id) == {trial_id: new_id}


def test_a_resume_from_an_older_checkpoint_than_the_run_holds_moves_to_a_new_run(
        mlflow_server, client, sweep):
    """Attempt 1 checkpoints after epoch 0, logs epochs 1 and 2, and dies. Attempt 2 resumes
    from the checkpoint: its epochs 1-2 are not attempt 1's (on a GPU they differ), so they go
    to a new run that holds the checkpoint's epoch 0 and attempt 2's epochs after it."""
    _, old_id = sweep
    records = _records()
    first = _attempt(mlflow_server.uri, old_id, records)
    checkpoint_history = first.history[:1]
    second = _attempt(mlflow_server.uri, old_id, _shifted(records[1:], 10.0),
                      history=checkpoint_history, start_epoch=0, finish=True)

    assert second.run_id != old_id
    assert _series(client, old_id) == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert _series(client, second.run_id) == [(0, 2.0), (1, 11.5), (2, 11.0)]
    assert _series(client, second.run_id, contract.ALIGN_GRAD) == [(0, 0.25), (2, 12.25)]


def test_a_resume_from_the_runs_own_last_epoch_continues_the_same_run(mlflow_server, client, sweep):
    _, run_id = sweep
    records = _records()
    first = _attempt(mlflow_server.uri, run_id, records[:2])
    second = _attempt(mlflow_server.uri, run_id, records[2:], history=first.history,
                      start_epoch=1, finish=True)
    assert second.run_id == run_id
    assert _series(client, run_id) == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert contract.TAG_SUPERSEDED_BY not in client.get_run(run_id).data.tags


def test_every_attempt_records_the_code_that_ran_it(mlflow_server, client, sweep):
    _, run_id = sweep
    records = _records()
    first = _attempt(mlflow_server.uri, run_id, records[:2])
    # The driver's tags said another version when the run was created; the attempt's own win.
    client.set_tag(run_id, contract.TAG_VERSION, "0.0.1-old")
    second = _attempt(mlflow_server.uri, run_id, records[2:], history=first.history, start_epoch=1)
    third = _attempt(mlflow_server.uri, run_id, [], start_epoch=-1)    # starts over: a new run

    tags = client.get_run(third.run_id).data.tags
    assert tags[contract.TAG_VERSION] == workers.__version__
    assert tags.get(contract.TAG_GIT_COMMIT) == code_commit()
    attempts = {int(k.rsplit(".", 1)[1]): json.loads(v) for k, v in tags.items()
                if k.startswith(contract.TAG_ATTEMPT_PREFIX)}
    assert sorted(attempts) == [1, 2, 3]               # the old run's records came along
    assert [attempts[n]["start_epoch"] for n in (1, 2, 3)] == [-1, 1, -1]
    assert all(a["version"] == workers.__version__ and a["git_commit"] == code_commit()
               for a in attempts.values())
    assert second.run_id == run_id != third.run_id


def test_a_worker_killed_between_the_two_writes_leaves_one_current_run(mlflow_server, client, sweep):
    """``_supersede`` creates the new run (naming the old one) before it tags the old one: a
    kill in between leaves an untagged old run, which readers skip all the same, and which the
    next attempt (given the old run id by Tune's retry) follows to the new run and tags."""
    tracker, old_id = sweep
    _attempt(mlflow_server.uri, old_id, _records()[:2])
    logger = TrialRunLogger(mlflow_server.uri, old_id)
    tag = logger.client.set_tag
    logger.client.set_tag = lambda *args: (_ for _ in ()).throw(ConnectionError("killed"))
    with pytest.raises(ConnectionError):
        logger.start({}, start_epoch=-1)
    logger.client.set_tag = tag
    (new,) = client.search_runs([tracker.experiment_id],
                                f"tags.`{contract.TAG_SUPERSEDES}` = '{old_id}'")
    new_id = new.info.run_id
    assert contract.TAG_SUPERSEDED_BY not in client.get_run(old_id).data.tags
    assert [r.run_id for r in tracker.trial_records()] == [new_id]

    retry = TrialRunLogger(mlflow_server.uri, old_id)
    assert retry.ended_with() is None and retry.run_id == new_id
    assert client.get_run(old_id).data.tags[contract.TAG_SUPERSEDED_BY] == new_id


def test_a_finished_lineage_is_recognised_from_the_first_run_id(mlflow_server, sweep):
    """Tune retries a pack with the run ids the driver sent: a member whose attempt moved to
    a new run and finished there is recognised as finished (not trained again)."""
    _, old_id = sweep
    _attempt(mlflow_server.uri, old_id, _records()[:1])
    _attempt(mlflow_server.uri, old_id, _records(), finish=True)
    assert TrialRunLogger(mlflow_server.uri, old_id).ended_with() == "finished"


def test_system_metrics_do_not_count_as_epochs(mlflow_server, client, sweep):
    """``system/*`` metrics count samples: a resumed attempt is not moved to a new run because
    the pack's monitor logged sample 40 into a run at epoch 1."""
    _, run_id = sweep
    first = _attempt(mlflow_server.uri, run_id, _records()[:2])
    client.log_metric(run_id, "system/cpu_utilization_percentage", 50.0, step=40)
    second = _attempt(mlflow_server.uri, run_id, [], history=first.history, start_epoch=1)
    assert second.run_id == run_id


def test_new_trials_are_unaffected(mlflow_server, client):
    """A first attempt in a fresh run stays in it (nothing to supersede)."""
    tracker = SweepTracker(mlflow_server.uri, f"lineage-{uuid.uuid4().hex[:8]}")
    parent = tracker.start_parent_run({}, trial_count=1)
    trial = FakeTrial("bbbb00000001", "fresh", TrialConfig(sigma=1.0, epochs=3))
    run_id = tracker.create_trial_runs([trial], parent)[trial.trial_id]
    logger = _attempt(mlflow_server.uri, run_id, _records(), finish=True)
    assert logger.run_id == run_id
    assert len(client.search_runs([tracker.experiment_id])) == 2      # the parent and the trial


def test_a_resumed_attempt_drops_the_error_of_the_attempt_that_failed(mlflow_server, client, sweep):
    _, run_id = sweep
    first = _attempt(mlflow_server.uri, run_id, _records()[:2])
    first.fail("Traceback ...", "RuntimeError: boom", contract.ERROR_CRASH)
    assert client.get_run(run_id).data.tags[contract.TAG_ERROR] == "RuntimeError: boom"
    second = _attempt(mlflow_server.uri, run_id, _records()[2:], history=first.history,
                      start_epoch=1, finish=True)
    tags = client.get_run(second.run_id).data.tags
    assert second.run_id == run_id and tags[contract.TAG_STATUS] == "finished"
    assert contract.TAG_ERROR not in tags and contract.TAG_ERROR_KIND not in tags


def test_a_start_retried_after_a_server_error_counts_the_attempt_once(mlflow_server, client, sweep):
    """The worker retries ``start`` while the server blips (``_PatientTracking``): the run it
    opened is kept, so a retry after half the writes went through counts one attempt."""
    _, run_id = sweep
    first = _attempt(mlflow_server.uri, run_id, _records()[:2])
    first.fail("Traceback ...", "RuntimeError: boom", contract.ERROR_CRASH)
    second = TrialRunLogger(mlflow_server.uri, run_id)
    second.history = list(first.history)
    send = second.client.log_batch
    calls = []

    def blip_once(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise ConnectionError("server away")   # after the error tags were deleted
        return send(*args, **kwargs)

    second.client.log_batch = blip_once
    with pytest.raises(ConnectionError):
        second.start({}, start_epoch=1)
    second.start({}, start_epoch=1)
    tags = client.get_run(run_id).data.tags
    assert second.run_id == run_id and tags[contract.TAG_ATTEMPTS] == "2"
    assert contract.TAG_ERROR not in tags and tags[contract.TAG_STATUS] == "running"
