"""Finding trials' latest checkpoints in a sweep's Tune storage (local, NFS or s3://).

Layout written by Tune and ``workers.checkpoint``::

    <storage>/<sweep>/<pack name>-<pack id>-<session>/checkpoint_000003/<trial id>/
        trial_state.pt          the engine's state, history, per-class rows, MLflow run id
        xmem_checkpoint.json    {"trial_id", "epoch", "run_id", "state_bytes"}: read here
                                without torch; a state file of another size (a copy torn
                                by a kill) makes the checkpoint invisible

One folder per member of the pack that was still training; each is a trial's own checkpoint,
resumable in any pack. (Checkpoints of xmem before packing hold the two files directly in
``checkpoint_N/``; they are found too.) Every ``xmem sweep`` invocation (a session) gets its
own pack folders, so a resumed trial never writes into the folder it resumes from.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from workers.checkpoint import CheckpointInfo
from workers.contract import CHECKPOINT_INFO_FILE, CHECKPOINT_STATE_FILE


def scan_checkpoints(storage: str, sweep_name: str) -> list[tuple[str, int, str]]:
    """Every readable checkpoint of the sweep: (trial id, epoch, folder URI or path).

    ``storage`` is an absolute local path or a URI (``s3://bucket/prefix``).
    """
    filesystem, root = pafs.FileSystem.from_uri(storage)
    scheme = storage.split("://", 1)[0] + "://" if "://" in storage else ""
    found = []
    for trial_dir in _children(filesystem, f"{root.rstrip('/')}/{sweep_name}"):
        for checkpoint_dir in _children(filesystem, trial_dir):
            if not checkpoint_dir.rsplit("/", 1)[-1].startswith("checkpoint_"):
                continue
            for folder in [checkpoint_dir, *_children(filesystem, checkpoint_dir)]:
                info = _read_info(filesystem, f"{folder}/{CHECKPOINT_INFO_FILE}")
                # None: being written, a pack's folder, or not xmem's
                if info is not None and _state_complete(filesystem, folder, info):
                    found.append((info.trial_id, info.epoch, scheme + folder))
    return found


def latest_checkpoints(storage: str, sweep_name: str) -> dict[str, str]:
    """trial id -> the folder of its checkpoint with the highest epoch."""
    return {trial_id: path for trial_id, (_, path) in latest_checkpoint_epochs(storage, sweep_name).items()}


def latest_checkpoint_epochs(storage: str, sweep_name: str) -> dict[str, tuple[int, str]]:
    """trial id -> (epoch, folder) of its checkpoint with the highest epoch."""
    best: dict[str, tuple[int, str]] = {}
    for trial_id, epoch, path in scan_checkpoints(storage, sweep_name):
        if epoch > best.get(trial_id, (-1, ""))[0]:
            best[trial_id] = (epoch, path)
    return best


def delete_checkpoints(storage: str, sweep_name: str, trial_ids: set[str]) -> int:
    """Delete every checkpoint of these trials (they start over); returns how many."""
    deleted = 0
    for trial_id, _, path in scan_checkpoints(storage, sweep_name):
        if trial_id in trial_ids:
            filesystem, local = pafs.FileSystem.from_uri(path)
            filesystem.delete_dir(local)
            deleted += 1
    return deleted


def _children(filesystem: pafs.FileSystem, path: str) -> list[str]:
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return [info.path for info in infos if info.type == pafs.FileType.Directory]


def _state_complete(filesystem: pafs.FileSystem, folder: str, info: CheckpointInfo) -> bool:
    """Whether the state file has the size the info file recorded (a torn copy does not)."""
    if info.state_bytes is None:
        return True
    try:
        state = filesystem.get_file_info(f"{folder}/{CHECKPOINT_STATE_FILE}")
    except OSError:
        return False
    return state.type == pafs.FileType.File and state.size == info.state_bytes


def _read_info(filesystem: pafs.FileSystem, path: str) -> CheckpointInfo | None:
    try:
        with filesystem.open_input_stream(path) as stream:
            return CheckpointInfo.parse(stream.read())
    except OSError:
        return None
