"""The resume decision, the sweep plan and the checkpoint scan (pure, no servers); then, with
a real Ray cluster and MLflow server, resuming from another working directory and by name
(``xmem resume``: the spec stored with the sweep, its name checked)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from orchestrator.checkpoints import FoundCheckpoint, TrialCheckpoints, latest_checkpoints
from orchestrator.expand import TrialPoint, trial_id
from orchestrator.plan import Action, TrialState, decide, plan_sweep
from orchestrator.tracking.records import TrialRecord
from workers.checkpoint import CheckpointInfo
from workers.config import TrialConfig


@pytest.mark.parametrize("state, restart_failed, expected", [
    (TrialState(), False, Action.NEW),
    (TrialState(), True, Action.NEW),
    (TrialState("FINISHED", "finished", "/ckpt"), False, Action.SKIP),
    (TrialState("FINISHED", "diverged"), True, Action.SKIP),        # diverged is final
    (TrialState("FAILED", "failed", "/ckpt"), False, Action.RESUME),
    (TrialState("FAILED", "failed", "/ckpt"), True, Action.RESTART),
    (TrialState("FAILED", "failed"), False, Action.RESTART),
    (TrialState("RUNNING", "running", "/ckpt"), False, Action.RESUME),  # the driver died
    (TrialState("RUNNING", "running", "/ckpt"), True, Action.RESUME),   # not failed: resume
    # Tagged failed by its worker, but the run was never ended (the server was away as the
    # worker failed): failed all the same, so --restart-failed starts it over.
    (TrialState("RUNNING", "failed", "/ckpt"), True, Action.RESTART),
    (TrialState("RUNNING", "failed", "/ckpt"), False, Action.RESUME),
    # Ended FAILED without xmem's tag (a run ended from outside): failed all the same.
    (TrialState("FAILED", None, "/ckpt"), True, Action.RESTART),
    (TrialState("RUNNING", "running"), False, Action.RESTART),
    (TrialState("SCHEDULED"), False, Action.RESTART),
    (TrialState("FINISHED", None), False, Action.RESTART),   # ended without xmem's word
])
def test_decide_follows_the_documented_order(state, restart_failed, expected):
    assert decide(state, restart_failed) is expected


def test_decide_resumes_failed_trials_unless_asked_to_restart_them():
    assert decide(TrialState("FAILED", "failed", "/ckpt")) is Action.RESUME


def _point(sigma: float) -> TrialPoint:
    config = TrialConfig.from_mapping({"sigma": sigma})
    return TrialPoint(trial_id(config), f"sigma{sigma:g}", config, {"sigma": sigma})


def _checkpoints(trial: TrialPoint, path: str, epoch: int = 3) -> dict[str, TrialCheckpoints]:
    found = FoundCheckpoint(CheckpointInfo(trial.trial_id, epoch, "run"), path, path, 100)
    return {trial.trial_id: TrialCheckpoints(trial.trial_id, (found,))}


def _run(name: str, status: str, xmem_status: str | None):
    tags = {} if xmem_status is None else {"xmem.status": xmem_status}
    return TrialRecord(run_id=f"run-{name}", name=name, trial_id="", run_status=status, tags=tags,
                       params={}, latest={})


def test_plan_restarts_failed_runs_when_asked_and_drops_their_checkpoints():
    failed = _point(1.0)
    runs = {failed.trial_id: _run("sigma1", "FAILED", "failed")}
    plan = plan_sweep([failed], runs, _checkpoints(failed, "/c/3"), restart_failed=True)
    assert plan.actions == {failed.trial_id: Action.RESTART}
    assert plan.checkpoints == {} and plan.restarting == {failed.trial_id}
    assert "0 resumed from checkpoints, 1 restarted" in "\n".join(plan.describe())


def test_plan_keeps_finished_resumes_interrupted_runs_new_and_reports_stale_runs():
    done, interrupted, new = _point(0.1), _point(1.0), _point(10.0)
    runs = {done.trial_id: _run("sigma0.1", "FINISHED", "finished"),
            interrupted.trial_id: _run("sigma1", "RUNNING", "running"),
            "0123456789ab": _run("old-defaults", "FINISHED", "finished")}
    plan = plan_sweep([done, interrupted, new], runs, _checkpoints(interrupted, "/c/3"), False)
    assert plan.actions == {done.trial_id: Action.SKIP, interrupted.trial_id: Action.RESUME,
                            new.trial_id: Action.NEW}
    assert [t.trial_id for t in plan.to_run] == [interrupted.trial_id, new.trial_id]
    assert plan.checkpoints == {interrupted.trial_id: "/c/3"}
    assert plan.start_epochs == {interrupted.trial_id: 3}
    assert plan.stale_runs == ["old-defaults"]
    text = "\n".join(plan.describe())
    assert "1 finished (kept), 1 resumed from checkpoints, 0 restarted, 1 new" in text
    assert "no longer in the spec (old-defaults)" in text


def test_interrupted_trials_resume_even_under_restart_failed_and_never_count_as_failed():
    """Ctrl-C ends runs KILLED with xmem.status interrupted (or, after a second Ctrl-C, leaves
    them RUNNING): they continue from their checkpoint, or start over without one, and
    --restart-failed (meant for failed trials) does not send them back to epoch 0."""
    stopped, left_running, no_checkpoint, failed = _point(0.1), _point(1.0), _point(3.0), _point(10.0)
    runs = {stopped.trial_id: _run("sigma0.1", "KILLED", "interrupted"),
            left_running.trial_id: _run("sigma1", "RUNNING", "running"),
            no_checkpoint.trial_id: _run("sigma3", "KILLED", "interrupted"),
            failed.trial_id: _run("sigma10", "FAILED", "failed")}
    checkpoints = {**_checkpoints(stopped, "/c/5"), **_checkpoints(left_running, "/c/7"),
                   **_checkpoints(failed, "/c/9")}
    for restart_failed in (False, True):
        plan = plan_sweep([stopped, left_running, no_checkpoint, failed], runs, checkpoints,
                          restart_failed)
        assert plan.actions[stopped.trial_id] is Action.RESUME
        assert plan.actions[left_running.trial_id] is Action.RESUME
        assert plan.actions[no_checkpoint.trial_id] is Action.RESTART
        assert plan.checkpoints[stopped.trial_id] == "/c/5"
        assert plan.actions[failed.trial_id] is (Action.RESTART if restart_failed else Action.RESUME)
        # Only the failed trial's checkpoints are deleted under --restart-failed.
        assert plan.restarting == ({no_checkpoint.trial_id, failed.trial_id} if restart_failed
                                   else {no_checkpoint.trial_id})


def test_latest_checkpoint_is_the_highest_epoch_across_sessions(tmp_path):
    def write(trial_dir: str, checkpoint: str, trial: str, epoch: int) -> None:
        folder = tmp_path / "sw" / trial_dir / checkpoint
        folder.mkdir(parents=True)
        (folder / "xmem_checkpoint.json").write_text(json.dumps({"trial_id": trial, "epoch": epoch}))
        (folder / "trial_state.pt").write_bytes(b"state")

    write("a-aaa-s1", "checkpoint_000000", "aaa", 5)
    write("a-aaa-s1", "checkpoint_000001", "aaa", 10)
    write("a-aaa-s2", "checkpoint_000000", "aaa", 15)   # the resumed session got further
    write("b-bbb-s1", "checkpoint_000000", "bbb", 3)
    (tmp_path / "sw" / "b-bbb-s1" / "checkpoint_000001").mkdir()  # being written: no info file
    found = latest_checkpoints(str(tmp_path), "sw")
    assert found == {"aaa": str(tmp_path / "sw" / "a-aaa-s2" / "checkpoint_000000"),
                     "bbb": str(tmp_path / "sw" / "b-bbb-s1" / "checkpoint_000000")}
    assert latest_checkpoints(str(tmp_path), "no-such-sweep") == {}


def test_worker_config_makes_relative_paths_absolute_and_leaves_home_paths_to_the_worker(tmp_path, monkeypatch):
    from orchestrator.run import worker_config

    monkeypatch.chdir(tmp_path)
    config = TrialConfig.from_mapping({"data_dir": "data", "data_file": "tables/c.parquet"})
    sent = worker_config(config)
    assert sent.data_dir == str(tmp_path / "data")
    assert sent.data_file == str(tmp_path / "tables" / "c.parquet")
    home = worker_config(TrialConfig())
    assert home.data_dir == "~/.cache/xmem/data"       # expanded by each worker, in its own home
    remote = worker_config(TrialConfig.from_mapping({"data_file": "s3://bucket/c.parquet"}))
    assert remote.data_file == "s3://bucket/c.parquet"


def test_delete_checkpoints_removes_only_the_restarted_trials(tmp_path):
    from orchestrator.checkpoints import delete_checkpoints

    for trial_dir, trial in (("a-aaa-s1", "aaa"), ("a-aaa-s2", "aaa"), ("b-bbb-s1", "bbb")):
        folder = tmp_path / "sw" / trial_dir / "checkpoint_000000"
        folder.mkdir(parents=True)
        (folder / "xmem_checkpoint.json").write_text(json.dumps({"trial_id": trial, "epoch": 5}))
        (folder / "trial_state.pt").write_bytes(b"state")
    assert delete_checkpoints(str(tmp_path), "sw", {"aaa"}) == 2
    assert set(latest_checkpoints(str(tmp_path), "sw")) == {"bbb"}


def test_a_torn_copy_of_the_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    """A worker killed while Tune copies its checkpoint into storage leaves the info file
    complete and the state file short: that checkpoint is passed over, inside a pack's folder too."""
    from workers.checkpoint import TrialCheckpoint, save_checkpoint, save_pack_checkpoint

    def saved(epoch: int) -> TrialCheckpoint:
        return TrialCheckpoint("aaa", "run", {"epoch": epoch, "weights": list(range(1000))}, [], [])

    pack = tmp_path / "sw" / "p-p1-s1"
    for i, epoch in enumerate((5, 10)):
        folder = pack / f"checkpoint_00000{i}"
        folder.mkdir(parents=True)
        save_pack_checkpoint([saved(epoch)], folder)
    old = tmp_path / "sw" / "a-aaa-s0" / "checkpoint_000000"   # a lone trial's, older layout
    old.mkdir(parents=True)
    save_checkpoint(saved(3), old)
    assert latest_checkpoints(str(tmp_path), "sw") == {"aaa": str(pack / "checkpoint_000001" / "aaa")}
    state = pack / "checkpoint_000001" / "aaa" / "trial_state.pt"
    state.write_bytes(state.read_bytes()[:100])                 # the copy stopped half-way
    assert latest_checkpoints(str(tmp_path), "sw") == {"aaa": str(pack / "checkpoint_000000" / "aaa")}


def test_a_checkpoint_fits_a_config_that_reads_the_same_data_from_elsewhere():
    from workers.checkpoint import STATE_FORMAT, check_state_fits
    from workers.errors import XmemError

    saved = TrialConfig.from_mapping({"data_file": "/first/cwd/tables/d.parquet", "sigma": 1.0,
                                      "data_dir": "/first/cwd/data"})
    state = {"format": STATE_FORMAT, "config": saved.to_dict()}
    check_state_fits(state, saved.replace(data_file="/second/cwd/tables/d.parquet",
                                          data_dir="/second/cwd/data", device="cpu"))
    with pytest.raises(XmemError, match="differs in: sigma"):
        check_state_fits(state, saved.replace(data_file="/second/cwd/tables/d.parquet", sigma=2.0))


# --- end to end: another working directory, xmem resume ------------------------------------

RELATIVE_DATA_SPEC = """name: {name}
defaults:
  dataset: digits
  data_file: tables/d.parquet
  data_dir: {data_dir}
  hidden: 16
  epochs: 4
  eval_every: 2
  align_every: 2
  probe_per_class: 2
  checkpoint_every: 2
grid:
  sigma: [1.0]
"""


def _table(folder: Path) -> None:
    """A small digits-like Parquet table at ``folder/tables/d.parquet`` (same bytes each call)."""
    from test_data import write_image_table

    rng = np.random.default_rng(0)
    (folder / "tables").mkdir(parents=True)
    labels = [i % 10 for i in range(80)]
    images = [rng.integers(0, 17, size=(8, 8, 1), dtype=np.uint8) for _ in labels]
    write_image_table(folder / "tables" / "d.parquet", ["train"] * 60 + ["test"] * 20, labels,
                      images)


def _interrupt_at_epoch_2(uri: str, name: str, spec: Path, resolved_in: Path, storage: str) -> None:
    """Leave the sweep's one trial as a driver killed with kill -9 after a checkpoint of epoch 2
    leaves it: its current run RUNNING, tagged running, and a checkpoint of epoch 2 in the
    storage (its config's relative paths resolved in ``resolved_in``, as the driver there did).
    (A real kill of a 4-epoch trial would be a race; the checkpoint is the engine's own.)"""
    from mlflow import MlflowClient

    from orchestrator.expand import expand_trials
    from orchestrator.run import worker_config
    from orchestrator.spec import load_spec
    from workers.checkpoint import TrialCheckpoint, save_pack_checkpoint
    from workers.mlflow_log import alignment_rows
    from workers.trial import Trial

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`xmem.role` = 'trial' AND "
                                "tags.`xmem.superseded_by` IS NULL")
    client.update_run(run.info.run_id, status="RUNNING")
    client.set_tag(run.info.run_id, "xmem.status", "running")
    (point,) = expand_trials(load_spec(spec))
    trial = Trial(worker_config(point.config, resolved_in).replace(device="cpu"))
    records = []
    for record in trial.run():
        records.append(record)
        if record.epoch == 2:
            break
    folder = Path(storage) / name / f"planted-{uuid.uuid4().hex[:6]}" / "checkpoint_000000"
    folder.mkdir(parents=True)
    save_pack_checkpoint([TrialCheckpoint(point.trial_id, run.info.run_id, trial.state_dict(),
                                          [r.flat() for r in records],
                                          [row for r in records for row in alignment_rows(r)])],
                         folder)


def _current_trial_run(uri: str, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`xmem.role` = 'trial' AND "
                                "tags.`xmem.superseded_by` IS NULL")
    return run


@pytest.mark.slow
def test_a_trial_with_a_relative_data_file_resumes_from_another_folder_and_by_name(
        tmp_path, monkeypatch, ray_cluster, mlflow_server):
    """Breaks: the sweep is rerun from another working directory (holding the same table), then
    resumed by name from a third one (holding none) after its spec file was overwritten."""
    from orchestrator.cli import main
    from orchestrator.run import run_sweep

    name = f"cwd-{uuid.uuid4().hex[:8]}"
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    for folder in (first, second):
        _table(folder)
    third.mkdir()
    spec = first / "s.yaml"
    spec.write_text(RELATIVE_DATA_SPEC.format(name=name, data_dir=tmp_path / "data"))
    storage = str(tmp_path / "store")
    uri = mlflow_server.uri
    quiet = dict(address=ray_cluster, tracking_uri=uri, storage=storage, echo=lambda line: None)

    monkeypatch.chdir(first)
    assert [row["status"] for row in run_sweep("s.yaml", **quiet).rows] == ["finished"]
    _interrupt_at_epoch_2(uri, name, spec, first, storage)

    # Another folder with the same table: the checkpoint (which holds first/tables/d.parquet)
    # fits the trial, which now reads second/tables/d.parquet.
    monkeypatch.chdir(second)
    outcome = run_sweep(str(spec), **quiet)
    assert [row["status"] for row in outcome.rows] == ["finished"], outcome.rows
    run = _current_trial_run(uri, name)
    assert run.data.tags["xmem.status"] == "finished"
    assert int(run.data.tags["xmem.start_epoch"]) == 2                    # resumed
    _interrupt_at_epoch_2(uri, name, spec, second, storage)

    # By name, from a folder without the table, the spec file now another sweep's: the spec
    # stored with the sweep runs, its relative path resolved where the last run resolved it.
    spec.write_text(RELATIVE_DATA_SPEC.format(name="another-sweep", data_dir=tmp_path / "data")
                    .replace("[1.0]", "[1.0, 2.0, 3.0]"))
    monkeypatch.chdir(third)
    result = CliRunner().invoke(main, ["resume", name, "--tracking-uri", uri,
                                       "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    run = _current_trial_run(uri, name)
    assert run.data.tags["xmem.status"] == "finished"
    assert int(run.data.tags["xmem.start_epoch"]) == 2
    assert "1 trial(s)" in result.output and "3 trial(s)" not in result.output
    assert not list(third.iterdir())                                      # nothing left here
    assert str(spec) in result.output                                     # the spec it ran from


def test_resume_refuses_a_stored_spec_of_another_name(mlflow_server):
    from conftest import assert_user_error
    from orchestrator.cli import main
    from orchestrator.tracking.writer import SweepTracker

    name = f"named-{uuid.uuid4().hex[:8]}"
    tracker = SweepTracker(mlflow_server.uri, name)
    tracker.start_parent_run({"name": "someone-else", "grid": {"sigma": [1.0]}}, trial_count=1)
    tracker.tag_parent_run({"xmem.storage": "/nowhere", "xmem.spec_path": "/nowhere/s.yaml"})
    result = CliRunner().invoke(main, ["resume", name, "--tracking-uri", mlflow_server.uri])
    assert_user_error(result, f"sweep {name}: the spec stored with it is named 'someone-else'",
                      "xmem sweep SPEC.yaml")
