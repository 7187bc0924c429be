"""Checkpoints in storage: torn and corrupt copies, fallbacks, run ids, pruning, storage errors,
``weights_only`` loading. Real checkpoints of a real (tiny) trial, real folders."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from ray import tune

from conftest import assert_user_error
from orchestrator.checkpoints import prune_checkpoints, scan_checkpoints, trial_checkpoints
from orchestrator.expand import TrialPoint
from orchestrator.plan import Action, plan_sweep
from orchestrator.tracking.records import TrialRecord
from workers.checkpoint import (DamagedCheckpoint, TrialCheckpoint, load_checkpoint,
                                save_checkpoint, save_pack_checkpoint)
from workers.config import TrialConfig
from workers.contract import TrialPayload
from workers.errors import XmemError
from workers.mlflow_log import alignment_rows
from workers.pack import PackedTrials
from workers.trial import Trial
from workers.tune_trial import _restore_checkpoints

SMALL = {"dataset": "digits", "hidden": 32, "probe_per_class": 5, "batch_size": 64,
         "train_size": 200, "test_size": 100, "epochs": 6, "eval_every": 1, "align_every": 2}
STATES: dict[tuple[str, int], TrialCheckpoint] = {}  # (data dir, epoch) -> a real checkpoint


def _config(data_dir: Path, **values) -> TrialConfig:
    return TrialConfig.from_mapping({**SMALL, "data_dir": str(data_dir), **values})


def _real(data_dir: Path, epoch: int, trial_id: str = "aaa", run_id: str = "run-a",
          **values) -> TrialCheckpoint:
    """A real pack member's checkpoint at ``epoch``, with its history and per-class rows."""
    pack = PackedTrials([(trial_id, _config(data_dir, **values))])
    history, rows = [], []
    for step in pack.run():
        for record in step.records.values():
            history.append(record.flat())
            rows += alignment_rows(record)
        if step.epoch == epoch:
            break
    return TrialCheckpoint(trial_id, run_id, pack.member_state(trial_id), history, rows)


def _write(store: Path, pack: str, index: int, *members: TrialCheckpoint) -> Path:
    """``members`` saved as ``<store>/sw/<pack>/checkpoint_<index>/`` (a pack's checkpoint)."""
    folder = store / "sw" / pack / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    save_pack_checkpoint(list(members), folder)
    return folder


def _tear(state: Path) -> None:
    state.write_bytes(state.read_bytes()[:1000])


def _garble(state: Path) -> None:
    """Same size, other bytes (a copy that wrote the right length of the wrong data)."""
    data = bytearray(state.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4096):
        data[i] ^= 0xFF
    state.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Real checkpoints of trial aaa at epochs 2 and 4 (and of trial bbb at 4)."""
    data_dir = tmp_path_factory.mktemp("data")
    return {2: _real(data_dir, 2), 4: _real(data_dir, 4),
            "bbb": _real(data_dir, 4, "bbb", "run-b", seed=1), "data_dir": data_dir}


# --- weights_only, initial_hidden -------------------------------------------------------------

def test_a_real_checkpoint_loads_weights_only_and_resumes_exactly(tmp_path, checkpoints):
    """A pack member's and a lone trial's checkpoints load with weights_only=True; neither
    stores W1(0) (the seed rebuilds it), and a restored trial continues exactly."""
    config = _config(checkpoints["data_dir"])
    saved = checkpoints[4]
    assert "initial_hidden" not in saved.trial_state
    save_checkpoint(saved, tmp_path)
    loaded = load_checkpoint(tmp_path, "aaa")
    assert loaded.history == saved.history and loaded.alignment_rows == saved.alignment_rows
    for name, tensor in saved.trial_state["model"].items():
        assert torch.equal(loaded.trial_state["model"][name], tensor)
    restored = PackedTrials([("aaa", config)])
    restored.load_member_state("aaa", loaded.trial_state)
    assert _records(restored) == _records(PackedTrials([("aaa", config)]))[5:]  # dyn/* needs W1(0)

    lone = Trial(config)
    for record in lone.run():
        if record.epoch == 3:
            break
    (tmp_path / "lone").mkdir()
    save_checkpoint(TrialCheckpoint("aaa", "r", lone.state_dict(), [], []), tmp_path / "lone")
    assert load_checkpoint(tmp_path / "lone", "aaa").epoch == 3


def test_an_old_checkpoint_with_initial_hidden_still_loads(checkpoints):
    """Format 1 stored W1(0) as "initial_hidden"; format 2 leaves it to the seed. Both load,
    alone and in a pack; a format this xmem does not know is refused by its number."""
    config = _config(checkpoints["data_dir"])
    assert checkpoints[2].trial_state["format"] == 2
    old = dict(checkpoints[2].trial_state, format=1,
               initial_hidden=Trial(config).model.hidden.weight.detach().clone())
    pack = PackedTrials([("aaa", config)])
    pack.load_member_state("aaa", old)
    assert _records(pack) == _records(PackedTrials([("aaa", config)]))[3:]
    lone = Trial(config)
    lone.load_state_dict(old)
    assert lone.epoch == 2
    with pytest.raises(XmemError, match="checkpoint format 3 is not one this xmem reads"):
        Trial(config).load_state_dict(dict(old, format=3))


def _records(pack: PackedTrials) -> list[dict]:
    return [step.records["aaa"].flat() for step in pack.run() if "aaa" in step.records]


class _Planted:
    """A pickle that runs code when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_in_it_is_refused(tmp_path, checkpoints):
    save_checkpoint(checkpoints[2], tmp_path)
    marker = tmp_path / "ran"
    state = tmp_path / "trial_state.pt"
    torch.save({"trial": _Planted(marker), "history": [], "alignment_rows": [], "run_id": "r"}, state)
    info = json.loads((tmp_path / "xmem_checkpoint.json").read_text())
    with open(state, "rb") as stream:
        from workers.checkpoint import sha256_of
        info.update(state_bytes=state.stat().st_size, state_sha256=sha256_of(stream))
    (tmp_path / "xmem_checkpoint.json").write_text(json.dumps(info))   # a consistent, planted copy
    with pytest.raises(DamagedCheckpoint, match="cannot be loaded"):
        load_checkpoint(tmp_path, "aaa")
    assert not marker.exists()


# --- the scan: torn and corrupt copies, fallbacks, run ids ------------------------------------

@pytest.mark.parametrize("damage", [_tear, _garble])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(tmp_path, checkpoints, damage):
    old = _write(tmp_path, "p-p1-s1", 0, checkpoints[2])
    new = _write(tmp_path, "p-p1-s1", 1, checkpoints[4])
    damage(new / "aaa" / "trial_state.pt")
    found = trial_checkpoints(str(tmp_path), "sw")["aaa"]
    assert found.path == str(old / "aaa") and found.epoch == 2 and found.fallbacks == []
    assert found.newest_damaged.path == str(new / "aaa")
    with pytest.raises(DamagedCheckpoint, match="damaged"):   # the worker checks it too
        load_checkpoint(new / "aaa", "aaa")


def test_hashes_are_checked_lazily_newest_first(tmp_path, checkpoints):
    older = _write(tmp_path, "p-p1-s1", 0, checkpoints[2])
    newer = _write(tmp_path, "p-p1-s1", 1, checkpoints[4])
    _garble(older / "aaa" / "trial_state.pt")      # right size: only its hash would tell
    found = trial_checkpoints(str(tmp_path), "sw")["aaa"]
    assert found.path == str(newer / "aaa")         # verified
    assert found.fallbacks == [str(older / "aaa")]  # not hashed: the worker checks it if needed
    _garble(newer / "aaa" / "trial_state.pt")
    unverified = trial_checkpoints(str(tmp_path), "sw", verify=set())["aaa"]
    assert unverified.path == str(newer / "aaa")   # a trial not asked about is not hashed
    assert trial_checkpoints(str(tmp_path), "sw")["aaa"].newest is None


def test_a_checkpoint_counts_only_for_one_of_its_trials_runs(tmp_path, checkpoints):
    _write(tmp_path, "p-p1-s1", 0, checkpoints[2])              # written for run-a
    assert set(trial_checkpoints(str(tmp_path), "sw", {"aaa": {"run-a", "run-a2"}})) == {"aaa"}
    assert trial_checkpoints(str(tmp_path), "sw", {"aaa": {"run-new"}}) == {}
    assert trial_checkpoints(str(tmp_path), "sw", {}) == {}


def _point(trial_id: str, name: str) -> TrialPoint:
    return TrialPoint(trial_id, name, TrialConfig(), {})


def test_the_plan_names_trials_whose_newest_checkpoint_is_damaged(tmp_path, checkpoints):
    _write(tmp_path, "p-p1-s1", 0, checkpoints[2])
    new = _write(tmp_path, "p-p1-s1", 1, checkpoints[4], checkpoints["bbb"])
    _tear(new / "aaa" / "trial_state.pt")
    _garble(new / "bbb" / "trial_state.pt")
    running = {tid: TrialRecord(run_id=f"run-{tid[0]}", name=tid, trial_id=tid, run_status="RUNNING",
                                tags={"xmem.status": "running"}, params={}, latest={})
               for tid in ("aaa", "bbb")}
    found = trial_checkpoints(str(tmp_path), "sw", {"aaa": {"run-a"}, "bbb": {"run-b"}})
    plan = plan_sweep([_point("aaa", "sigma1"), _point("bbb", "sigma2")], running, found, False)
    assert plan.actions == {"aaa": Action.RESUME, "bbb": Action.RESTART}
    assert plan.start_epochs == {"aaa": 2}
    text = "\n".join(plan.describe())
    assert "trial sigma1 (aaa): its newest checkpoint (epoch 4" in text
    assert "resuming from its newest complete one, at epoch 2" in text
    assert "trial sigma2 (bbb)" in text and "starting over from epoch 0" in text


# --- the worker's fallbacks ---------------------------------------------------------------

def _payload(trial_id: str, resume_from: str | None = None, fallbacks=()) -> TrialPayload:
    return TrialPayload(trial={}, trial_id=trial_id, name=trial_id, run_id="r", tracking_uri="",
                        resume_from=resume_from, resume_fallbacks=list(fallbacks))


def test_the_worker_falls_back_from_a_checkpoint_it_cannot_load(tmp_path, checkpoints, caplog):
    old = _write(tmp_path, "p-p1-s1", 0, checkpoints[2])
    new = _write(tmp_path, "p-p1-s1", 1, checkpoints[4])
    _garble(new / "aaa" / "trial_state.pt")
    # The driver's candidates, newest first (a resumed sweep).
    restored = _restore_checkpoints([_payload("aaa", str(new / "aaa"), [str(old / "aaa")])])
    assert restored["aaa"].epoch == 2
    # Tune's own checkpoint (an automatic retry): the older one of the same pack folder.
    restored = _restore_checkpoints([_payload("aaa")], own=tune.Checkpoint(str(new)))
    assert restored["aaa"].epoch == 2
    # Nothing loadable: the trial starts over, and says so.
    _tear(old / "aaa" / "trial_state.pt")
    with caplog.at_level(logging.WARNING, logger="workers.tune_trial"):
        assert _restore_checkpoints([_payload("aaa", str(new / "aaa"), [str(old / "aaa")])]) == {}
    assert "starts over from epoch 0" in caplog.text


def test_a_packs_members_fall_back_together(tmp_path, checkpoints):
    """One member's newest copy is torn: the pack resumes both from the epoch before."""
    _write(tmp_path, "p-p1-s1", 0, checkpoints[2], _real(checkpoints["data_dir"], 2, "bbb", "run-b", seed=1))
    new = _write(tmp_path, "p-p1-s1", 1, checkpoints[4], checkpoints["bbb"])
    _tear(new / "aaa" / "trial_state.pt")
    restored = _restore_checkpoints([_payload("aaa"), _payload("bbb")], own=tune.Checkpoint(str(new)))
    assert {tid: saved.epoch for tid, saved in restored.items()} == {"aaa": 2, "bbb": 2}


# --- pruning --------------------------------------------------------------------------------

def test_prune_keeps_the_newest_two_good_checkpoints_of_unfinished_trials_only(tmp_path, checkpoints,
                                                                              monkeypatch):
    from orchestrator import checkpoints as scan

    hashed: list[int] = []
    hash_matches = scan._Storage.hash_matches
    monkeypatch.setattr(scan._Storage, "hash_matches",
                        lambda self, found: hashed.append(found.epoch) or hash_matches(self, found))
    c2, c4 = checkpoints[2], checkpoints[4]
    c3 = TrialCheckpoint("aaa", "run-a", dict(c2.trial_state, epoch=3), [], [])
    c5 = TrialCheckpoint("aaa", "run-a", dict(c4.trial_state, epoch=5), [], [])
    _write(tmp_path, "p-p1-s1", 0, c2, checkpoints["bbb"])
    _write(tmp_path, "p-p1-s1", 1, c3)
    _write(tmp_path, "p-p1-s2", 0, c4)
    newest = _write(tmp_path, "p-p1-s2", 1, c5)
    _garble(newest / "aaa" / "trial_state.pt")                     # corrupt: not one of the two
    _write(tmp_path, "q-q1-s2", 0, TrialCheckpoint("ccc", "gone", c2.trial_state, [], []))  # run gone
    _write(tmp_path, "r-r1-s2", 0, TrialCheckpoint("ddd", "run-d", c2.trial_state, [], []))  # no run
    (tmp_path / "sw" / "t-t1-s2").mkdir()
    (tmp_path / "sw" / "t-t1-s2" / "params.json").write_text("{}")  # Tune's, never checkpointed
    (tmp_path / "sw" / "mine").mkdir()                                # not Tune's: left alone
    pruned = prune_checkpoints(str(tmp_path), "sw", {"aaa": {"run-a"}, "bbb": {"run-b"}, "ccc": {"run-c"}},
                               ended={"bbb"})
    left = {(f.trial_id, f.epoch) for f in scan_checkpoints(str(tmp_path), "sw")}
    assert left == {("aaa", 4), ("aaa", 3)}
    assert pruned.kept == 2 and pruned.removed == 5
    # Hashed newest first until one matched (5 is garbled, 4 is sound); 3 kept by its size: one
    # good hash per unfinished trial, not a read of every checkpoint of an interrupted sweep.
    assert hashed == [5, 4]
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == ["mine", "p-p1-s1", "p-p1-s2"]
    assert not (tmp_path / "sw" / "p-p1-s1" / "checkpoint_000000").exists()  # emptied: removed


# --- storage errors ---------------------------------------------------------------------------

def test_a_missing_sweep_folder_has_no_checkpoints_and_an_unreadable_one_is_an_error(tmp_path):
    assert scan_checkpoints(str(tmp_path), "no-such-sweep") == []
    (tmp_path / "sw").write_text("not a folder")          # bites root too
    with pytest.raises(XmemError, match=f"cannot read the sweep's checkpoint storage at {tmp_path / 'sw'}"):
        scan_checkpoints(str(tmp_path), "sw")


requires_non_root = pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root")


@requires_non_root
def test_an_unreadable_pack_folder_is_an_error(tmp_path, checkpoints):
    _write(tmp_path, "p-p1-s1", 0, checkpoints[2])
    locked = tmp_path / "sw" / "p-p2-s1"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(XmemError, match="credentials"):
            scan_checkpoints(str(tmp_path), "sw")
    finally:
        locked.chmod(0o755)


SPEC = """name: {name}
defaults:
  dataset: digits
  hidden: 32
  train_size: 200
  test_size: 100
  probe_per_class: 5
  batch_size: 64
  epochs: 6
  eval_every: 1
  align_every: 2
  checkpoint_every: 2
  data_dir: {data_dir}
grid:
  sigma: [1.0]
"""


@pytest.mark.parametrize("how", ["a file in the way", pytest.param("chmod 000", marks=requires_non_root)])
def test_xmem_sweep_stops_on_an_unreadable_storage_before_anything_restarts(
        tmp_path, how, checkpoints, ray_cluster, mlflow_server):
    from mlflow import MlflowClient

    from orchestrator.cli import main

    name = f"s-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(name=name, data_dir=checkpoints["data_dir"]))
    storage = tmp_path / "store"
    storage.mkdir()
    if how == "chmod 000":
        _write(tmp_path / "store", "p-p1-s1", 0, checkpoints[2])
        shutil.move(str(storage / "sw"), str(storage / name))
        (storage / name / "p-p2-s1").mkdir()
        (storage / name / "p-p2-s1").chmod(0)
    else:
        (storage / name).write_text("a file where the sweep's folder goes")
    try:
        result = CliRunner().invoke(main, ["sweep", str(spec), "--address", ray_cluster,
                                           "--tracking-uri", mlflow_server.uri, "--storage", str(storage)])
    finally:
        if how == "chmod 000":
            (storage / name / "p-p2-s1").chmod(0o755)
    assert_user_error(result, "cannot read the sweep's checkpoint storage at", str(storage / name),
                      "credentials", "--storage")
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name(name) is None  # nothing made
    if how == "chmod 000":
        assert (storage / name / "p-p1-s1" / "checkpoint_000000" / "aaa" / "trial_state.pt").exists()


# --- end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_sweep_resumes_from_the_newest_good_checkpoint_and_prunes_after(
        tmp_path, checkpoints, ray_cluster, mlflow_server):
    """Breaks: the newest checkpoint of an interrupted trial is torn (a kill during Tune's copy)."""
    from mlflow import MlflowClient

    from orchestrator.expand import expand_trials
    from orchestrator.run import run_sweep
    from orchestrator.spec import load_spec
    from orchestrator.tracking.writer import SweepTracker
    from test_fault_tolerance import _reference_metrics, assert_history_matches
    from workers import contract

    name = f"e-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(name=name, data_dir=checkpoints["data_dir"]))
    (trial,) = expand_trials(load_spec(spec))
    # An interrupted first session: the trial's run exists, with checkpoints at epochs 2 and 4.
    tracker = SweepTracker(mlflow_server.uri, name)
    tracker.ensure_experiment()
    parent = tracker.start_parent_run(load_spec(spec).raw, 1)
    run_id = tracker.create_trial_runs([trial], parent)[trial.trial_id]
    storage = tmp_path / "store"
    for index, epoch in enumerate((2, 4)):
        saved = _real(checkpoints["data_dir"], epoch, trial.trial_id, run_id, sigma=1.0,
                      checkpoint_every=2)
        _write(storage, "x-x1-s1", index, saved)
    shutil.move(str(storage / "sw"), str(storage / name))
    _tear(storage / name / "x-x1-s1" / "checkpoint_000001" / trial.trial_id / "trial_state.pt")

    lines: list[str] = []
    run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri, storage=str(storage),
              echo=lines.append)
    text = "\n".join(lines)
    assert "its newest checkpoint (epoch 4" in text and "at epoch 2" in text, text
    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    assert run.data.tags["xmem.status"] == "finished" and run.data.tags["xmem.start_epoch"] == "2"
    # Epochs 0-2 come from the checkpoint's history (sent on resume), 3-6 from the resumed state.
    reference = _reference_metrics(spec, trial.trial_id)
    assert_history_matches(mlflow_server.uri, run_id, reference,
                           (contract.TRAIN_LOSS, contract.DYN_WEIGHT_CHANGE_HIDDEN), rel=1e-6)
    assert scan_checkpoints(str(storage), name) == []        # finished: its checkpoints pruned
    assert "x-x1-s1" not in {p.name for p in (storage / name).iterdir()}
