"""A trial's checkpoint: what it holds, saving it, loading it, and checking that it fits.

One trial's checkpoint is one folder::

    trial_state.pt        torch.save of {"trial": Trial.state_dict(), "history", "alignment_rows",
                          "run_id"}: the engine's full state and the rows logged so far (plain
                          values and tensors only: it loads with ``weights_only=True``)
    xmem_checkpoint.json  {"trial_id", "epoch", "run_id", "state_bytes", "state_sha256"}: read by
                          the driver without torch (``orchestrator.checkpoints``) to find each
                          trial's latest complete checkpoint

Ray copies a checkpoint into storage with no temp-and-rename step, so a kill during the copy
can leave the info file complete beside a short or garbled state file: the size and hash in the
info file tell (``verify_state``); ``load_checkpoint`` refuses such a copy with
``DamagedCheckpoint`` and the caller falls back to an older checkpoint.

A pack's checkpoint (the folder Tune copies into the sweep's storage) holds one such folder
per member still training, named by its trial id (``save_pack_checkpoint``): each member
resumes from its own, in any pack or alone.

torch is imported only by the functions that need it, so the driver can read the info file
without loading torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.config import DATA_LOCATION_KEYS, TrialConfig
from workers.contract import CHECKPOINT_INFO_FILE, CHECKPOINT_STATE_FILE
from workers.errors import XmemError

# The version of ``Trial.state_dict()``'s layout, and those this version reads; a checkpoint
# of another one is refused with a clear message. Format 2 leaves out "initial_hidden" (the
# seed regenerates W1(0)); format 1 states hold it, and still load. (An xmem that reads only
# format 1 refuses format 2 by its number instead of failing on the missing key.)
STATE_FORMAT = 2
READABLE_STATE_FORMATS = (1, 2)
HASH_CHUNK_BYTES = 1 << 20  # the state file is hashed 1 MiB at a time


class DamagedCheckpoint(Exception):
    """A checkpoint whose state file is incomplete, corrupt or not loadable as plain data:
    not a user error; the caller falls back to an older checkpoint."""


@dataclass
class TrialCheckpoint:
    """Everything needed to continue a trial in a fresh process."""

    trial_id: str
    run_id: str
    """The MLflow run the trial logs into."""
    trial_state: dict[str, Any]
    """``Trial.state_dict()``: model, optimizer, shuffle stream, counters (CPU tensors)."""
    history: list[dict[str, Any]]
    """``EpochRecord.flat()`` of every evaluated epoch so far."""
    alignment_rows: list[dict[str, Any]]
    """Per-class alignment rows so far (``workers.mlflow_log.alignment_rows``)."""

    @property
    def epoch(self) -> int:
        return int(self.trial_state["epoch"])


@dataclass(frozen=True)
class CheckpointInfo:
    """The small JSON file beside the state: which trial, which epoch, which run."""

    trial_id: str
    epoch: int
    run_id: str | None
    state_bytes: int | None = None
    """The state file's size when it was written: a copy interrupted half-way (a worker killed
    while Tune copied the folder into storage) has a complete info file beside a shorter state
    file, and is passed over. None in checkpoints of earlier versions."""
    state_sha256: str | None = None
    """The state file's SHA-256 (hex) when it was written: catches a copy of the right size
    with wrong bytes. None in checkpoints of earlier versions."""

    @classmethod
    def parse(cls, text: str | bytes) -> "CheckpointInfo | None":
        """The info in ``text``, or None when it is not a complete info file (being written,
        or not xmem's)."""
        try:
            values = json.loads(text)
            run_id, size, digest = (values.get("run_id"), values.get("state_bytes"),
                                    values.get("state_sha256"))
            return cls(str(values["trial_id"]), int(values["epoch"]),
                       None if run_id is None else str(run_id), None if size is None else int(size),
                       None if digest is None else str(digest))
        except (TypeError, KeyError, ValueError, AttributeError):
            return None

    def state_problem(self, size: int | None, digest: str | None = None) -> str | None:
        """Why a state file of ``size`` bytes (None: missing) and SHA-256 ``digest`` (None: not
        computed) is not the one this info describes; None when it may be."""
        if size is None:
            return f"{CHECKPOINT_STATE_FILE} is missing"
        if self.state_bytes is not None and size != self.state_bytes:
            return f"{CHECKPOINT_STATE_FILE} has {size} bytes, {self.state_bytes} were written"
        if digest is not None and self.state_sha256 is not None and digest != self.state_sha256:
            return f"{CHECKPOINT_STATE_FILE}'s bytes differ from those written (SHA-256 mismatch)"
        return None


def sha256_of(stream) -> str:
    """The SHA-256 (hex) of what a binary file-like ``stream`` holds from its position on."""
    digest = hashlib.sha256()
    while chunk := stream.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(checkpoint: TrialCheckpoint, folder: str | Path) -> None:
    """Write ``checkpoint`` into the existing folder ``folder`` (state first, then the info
    file that makes it findable, with the state's size and hash)."""
    import torch

    folder = Path(folder)
    state_path = folder / CHECKPOINT_STATE_FILE
    torch.save({"trial": checkpoint.trial_state, "history": checkpoint.history,
                "alignment_rows": checkpoint.alignment_rows, "run_id": checkpoint.run_id},
               state_path)
    with open(state_path, "rb") as stream:  # ~50 ms for a 25 MB state
        digest = sha256_of(stream)
    info = CheckpointInfo(checkpoint.trial_id, checkpoint.epoch, checkpoint.run_id,
                          state_path.stat().st_size, digest)
    (folder / CHECKPOINT_INFO_FILE).write_text(json.dumps(dataclasses.asdict(info)))


def verify_state(folder: str | Path) -> CheckpointInfo | None:
    """Check the state file in ``folder`` (a local folder) against the size and hash its info
    file recorded; the info (None when the folder has no readable info file).

    Raises:
        DamagedCheckpoint: the state file is missing, short or has other bytes.
    """
    folder = Path(folder)
    try:
        info = CheckpointInfo.parse((folder / CHECKPOINT_INFO_FILE).read_bytes())
    except FileNotFoundError:
        info = None
    if info is None:
        return None
    state = folder / CHECKPOINT_STATE_FILE
    size = state.stat().st_size if state.is_file() else None
    digest = None
    if size is not None and size == info.state_bytes and info.state_sha256 is not None:
        with open(state, "rb") as stream:
            digest = sha256_of(stream)
    problem = info.state_problem(size, digest)
    if problem is not None:
        raise DamagedCheckpoint(f"checkpoint {folder} is damaged: {problem}")
    return info


def load_checkpoint(folder: str | Path, trial_id: str) -> TrialCheckpoint:
    """Read the checkpoint in ``folder`` (a local folder) of trial ``trial_id``.

    The state is checked against its info file first, then loaded with ``weights_only=True``:
    storage is shared, and a pickle that carries code is refused, not run.

    Raises:
        DamagedCheckpoint: a torn or corrupt state file, or one that is not plain data.
    """
    import pickle

    import torch

    verify_state(folder)
    path = Path(folder) / CHECKPOINT_STATE_FILE
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
        return TrialCheckpoint(trial_id=trial_id, run_id=saved["run_id"], trial_state=saved["trial"],
                               history=saved["history"], alignment_rows=saved["alignment_rows"])
    except FileNotFoundError as error:
        raise DamagedCheckpoint(f"checkpoint {folder} is damaged: {error}") from error
    except (RuntimeError, ValueError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as error:
        # A short or garbled zip (RuntimeError from torch's reader), or a pickle that is not
        # plain data (weights_only refuses it with an UnpicklingError).
        first_line = (str(error).splitlines() or [type(error).__name__])[0][:300]
        raise DamagedCheckpoint(f"checkpoint {folder} cannot be loaded: {first_line}") from error


def check_state_fits(state: dict[str, Any], config: TrialConfig) -> None:
    """Refuse a ``Trial.state_dict()`` that the trial of ``config`` cannot continue.

    The device may differ: a checkpoint written on a GPU resumes on a CPU and back. So may
    where the data is read from (``DATA_LOCATION_KEYS``: the absolute paths a driver resolved
    relative ones to): the trial id, which the checkpoint's folder is named after, already
    holds ``data_file`` as the spec wrote it.

    Raises:
        XmemError: another state format, or a config that differs in a result-changing key.
    """
    if state.get("format") not in READABLE_STATE_FORMATS:
        raise XmemError(f"checkpoint format {state.get('format')!r} is not one this xmem reads "
                        f"({', '.join(map(str, READABLE_STATE_FORMATS))}); it was written by another "
                        "xmem version: restart the trial from scratch")
    saved = TrialConfig.from_mapping(state["config"], source="checkpoint").identity()
    current = config.identity()
    ignored = ("device", *DATA_LOCATION_KEYS)
    changed = sorted(k for k in saved if k not in ignored and saved[k] != current[k])
    if changed:
        raise XmemError(f"checkpoint belongs to a different trial config (differs in: "
                        f"{', '.join(changed)}); restart the trial from scratch")


def save_pack_checkpoint(members: list[TrialCheckpoint], folder: str | Path) -> None:
    """Write each member's checkpoint into ``folder/<trial id>/`` (``folder`` exists)."""
    for checkpoint in members:
        member_folder = Path(folder) / checkpoint.trial_id
        member_folder.mkdir()
        save_checkpoint(checkpoint, member_folder)

