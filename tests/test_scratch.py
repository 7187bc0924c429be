"""Checkpoint scratch folders of killed workers are removed by the next attempt on the machine."""

from __future__ import annotations

import os
import subprocess
import sys

from workers.tune_trial import SCRATCH_PREFIX, remove_orphaned_scratch


def test_only_the_scratch_folders_of_dead_processes_are_removed(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid now names no process
    dead = tmp_path / f"{SCRATCH_PREFIX}{ended.pid}-abc123"
    alive = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def456"
    other = tmp_path / "xmem-ckpt-notapid"
    unrelated = tmp_path / f"something-{ended.pid}-else"
    for folder in (dead, alive, other, unrelated):
        (folder / "tmp1").mkdir(parents=True)
        (folder / "tmp1" / "trial_state.pt").write_bytes(b"x" * 100)
    assert remove_orphaned_scratch(str(tmp_path)) == [str(dead)]
    assert not dead.exists()
    assert alive.exists() and other.exists() and unrelated.exists()
