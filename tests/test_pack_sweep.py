"""Packed sweeps through the whole product (real Ray, real ``mlflow server``), read back with
``MlflowClient``: packed equals unpacked, a killed pack resumes every member, a resumed sweep
trains only its unfinished members, and a member's own failure stays its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from orchestrator.checkpoints import latest_checkpoint_epochs, latest_checkpoints
from orchestrator.run import run_sweep
from test_fault_tolerance import _reference_metrics, assert_history_matches, _runs, _spec, _steps, _wait_for
from workers import contract
from workers.checkpoint import sha256_of

pytestmark = pytest.mark.slow


def _histories(uri: str, name: str, key: str = contract.TEST_ACC) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(uri)
    return {tid: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for tid, run in _runs(uri, name).items()}


def _assert_pack_shares_system_metrics_and_data(uri: str, runs: dict) -> None:
    """A pack's system metrics are logged once, into one member's run, which every member's
    run names; every member records the data it shared (one digest for all)."""
    client = MlflowClient(uri)
    by_pack: dict[str, list] = {}
    for run in runs.values():
        by_pack.setdefault(run.data.tags[contract.TAG_PACK], []).append(run)
    for members in by_pack.values():
        holders = [r.info.run_id for r in members
                   if any(key.startswith("system/") for key in r.data.metrics)]
        assert len(holders) == 1, holders
        assert {r.data.tags[contract.TAG_SYSTEM_METRICS_RUN] for r in members} == set(holders)
    digests = {i.dataset.digest for r in runs.values()
               for i in client.get_run(r.info.run_id).inputs.dataset_inputs}
    assert len(digests) == 1


def test_packed_and_unpacked_sweeps_give_the_same_runs_and_histories(tmp_path, ray_cluster, mlflow_server):
    """The held-out check: the same grid with packing {max_size: 4} and {max_size: 1}."""
    grid = "grid:\n  sigma: [0.1, 1.0, 10.0]\n  seed: [0, 1]\n"
    results = {}
    for size in (4, 1):
        spec, name = _spec(tmp_path, grid, epochs=6, extra=f"packing: {{max_size: {size}}}\n")
        lines: list[str] = []
        outcome = run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri,
                            storage=str(tmp_path / "store"), echo=lines.append)
        assert outcome.exit_code == 0, lines
        runs = _runs(mlflow_server.uri, name)
        assert len(runs) == 6                                     # one run per trial
        assert {r.data.tags["xmem.status"] for r in runs.values()} == {"finished"}
        sizes = sorted(r.data.tags[contract.TAG_PACK_SIZE] for r in runs.values())
        packs = {r.data.tags[contract.TAG_PACK] for r in runs.values()}
        if size == 4:
            assert sizes == ["3"] * 6 and len(packs) == 2          # 6 compatible trials: 3 + 3
            assert any("6 trials in 2 packs" in line for line in lines), lines
            _assert_pack_shares_system_metrics_and_data(mlflow_server.uri, runs)
        else:
            assert sizes == ["1"] * 6 and len(packs) == 6
        for run in runs.values():
            assert _steps(mlflow_server.uri, run.info.run_id) == list(range(7))
        results[size] = _histories(mlflow_server.uri, name)
    assert results[4].keys() == results[1].keys()                 # the same trial ids
    for tid, packed in results[4].items():
        alone = results[1][tid]
        assert [s for s, _ in packed] == [s for s, _ in alone]
        assert [v for _, v in packed] == pytest.approx([v for _, v in alone], abs=0.01)


def test_a_killed_pack_resumes_every_member_with_no_duplicate_step(tmp_path, ray_cluster, mlflow_server):
    """Breaks: SIGKILL of the worker process training a pack of three."""
    spec, name = _spec(tmp_path, "grid:\n  sigma: [0.1, 1.0, 10.0]\n", epochs=40,
                       extra="packing: {max_size: 3}\nmax_failures: 2\n")
    killed: dict = {}

    def kill_when_checkpointed() -> None:
        def at_step_12():
            runs = _runs(mlflow_server.uri, name)
            if len(runs) == 3 and all(r.data.tags.get("xmem.status") == "running" for r in runs.values()):
                run = next(iter(runs.values()))
                if (_steps(mlflow_server.uri, run.info.run_id) or [-1])[-1] >= 12:
                    return int(run.data.tags["xmem.pid"])
            return None
        killed["pid"] = _wait_for(at_step_12, what="the pack at step 12")
        os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_when_checkpointed, daemon=True)
    killer.start()
    run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri,
              storage=str(tmp_path / "store"), echo=lambda line: None)
    killer.join(timeout=5)
    assert killed, "the pack's worker was never killed"

    # the killed worker's checkpoint scratch folder went with the next attempt
    assert not list(Path(tempfile.gettempdir()).glob(f"xmem-ckpt-{killed['pid']}-*"))
    runs = _runs(mlflow_server.uri, name)
    assert len(runs) == 3
    ids = list(runs)
    for tid, run in runs.items():
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["xmem.status"] == "finished"
        assert tags["xmem.attempts"] == "2" and tags[contract.TAG_PACK_SIZE] == "3"
        assert int(tags["xmem.start_epoch"]) >= 10                 # resumed, not restarted
        assert int(tags["xmem.pid"]) != killed["pid"]
        reference = _reference_metrics(spec, tid, tuple(t for t in ids if t != tid))
        assert_history_matches(mlflow_server.uri, run.info.run_id, reference,
                               (contract.TRAIN_LOSS, contract.TEST_ACC, contract.ALIGN_GRAD), rel=1e-5)


def test_a_resumed_sweep_trains_only_unfinished_members_and_a_bad_checkpoint_fails_alone(
        tmp_path, ray_cluster, mlflow_server):
    """Breaks: SIGKILL of the driver while a pack of four trains, in which one member already
    diverged; then one member's checkpoint is made unreadable for this xmem (another format)."""
    grid = ('grid:\n  "sigma,lr": [[0.1, 0.01], [0.5, 0.01], [1.0, 0.01], [30.0, 10.0]]\n'
            "packing: {max_size: 4}\n")
    spec, name = _spec(tmp_path, grid, epochs=40)
    # ReLU with the squared loss: the last member (sigma 30, lr 10) blows up in its first epoch.
    spec.write_text(spec.read_text().replace("  epochs: 40", "  epochs: 40\n  loss: squared\n  activation: relu"))
    storage = tmp_path / "store"
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "sweep", str(spec), "--address", ray_cluster,
         "--tracking-uri", mlflow_server.uri, "--storage", str(storage)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def diverged_and_checkpointed_twice():
            # Two checkpoints (epochs 5 and 10): if the kill tears the copy of the newer one,
            # the older one is complete (checkpoints.py passes torn copies over).
            runs = _runs(mlflow_server.uri, name)
            diverged = [r for r in runs.values() if r.data.tags.get("xmem.status") == "diverged"]
            epochs = latest_checkpoint_epochs(str(storage), name)
            return diverged and len(epochs) == 3 and min(e for e, _ in epochs.values()) >= 10
        _wait_for(diverged_and_checkpointed_twice, timeout_s=180, what="a diverged member and two checkpoints")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    # Ray ends a dead driver's workers shortly after; until then the pack may checkpoint again.
    worker = int(next(iter(_runs(mlflow_server.uri, name).values())).data.tags["xmem.pid"])
    _wait_for(lambda: not _alive(worker), timeout_s=60, what="the pack's worker to end")
    before = {tid: (r.info.run_id, r.info.end_time) for tid, r in _runs(mlflow_server.uri, name).items()
              if r.data.tags.get("xmem.status") == "diverged"}
    assert len(before) == 1
    checkpoints = latest_checkpoints(str(storage), name)
    spoiled = sorted(checkpoints)[0]
    state_file = Path(checkpoints[spoiled]) / contract.CHECKPOINT_STATE_FILE
    saved = torch.load(state_file, weights_only=False)
    saved["trial"]["format"] = -1
    torch.save(saved, state_file)
    info_file = state_file.parent / contract.CHECKPOINT_INFO_FILE   # keep it a complete copy
    info = json.loads(info_file.read_text())
    with state_file.open("rb") as stream:                           # ... size and hash
        digest = sha256_of(stream)
    info_file.write_text(json.dumps({**info, "state_bytes": state_file.stat().st_size,
                                     "state_sha256": digest}))

    lines: list[str] = []
    outcome = run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri,
                        storage=str(storage), echo=lines.append)
    runs = _runs(mlflow_server.uri, name)
    assert len(runs) == 4
    for tid, (run_id, end_time) in before.items():                 # the diverged member: untouched
        assert runs[tid].info.run_id == run_id and runs[tid].info.end_time == end_time
    bad = runs[spoiled]
    assert bad.info.status == "FAILED" and bad.data.tags[contract.TAG_ERROR_KIND] == contract.ERROR_USER
    assert "format" in bad.data.tags[contract.TAG_ERROR]
    resumed = [r for tid, r in runs.items() if tid not in before and tid != spoiled]
    assert len(resumed) == 2
    for run in resumed:
        tags = run.data.tags
        assert tags["xmem.status"] == "finished" and tags[contract.TAG_PACK_SIZE] == "2"
        assert int(tags["xmem.start_epoch"]) > 0
        assert _steps(mlflow_server.uri, run.info.run_id) == list(range(41))
    assert outcome.exit_code == 1                                  # one trial failed
    assert any("resumed from checkpoints" in line for line in lines)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
