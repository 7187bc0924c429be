"""A trial's checkpoint: what it holds, saving it, loading it, and checking that it fits.

One trial's checkpoint is one folder::

    trial_state.pt        torch.save of {"trial": Trial.state_dict(), "history", "alignment_rows",
                          "run_id"}: the engine's full state and the rows logged so far
    xmem_checkpoint.json  {"trial_id", "epoch", "run_id", "state_bytes"}: read by the driver without torch
                          (``orchestrator.checkpoints``) to find each trial's latest checkpoint

A pack's checkpoint (the folder Tune copies into the sweep's storage) holds one such folder
per member still training, named by its trial id (``save_pack_checkpoint``): each member
resumes from its own, in any pack or alone.

torch is imported only by the functions that need it, so the driver can read the info file
without loading torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.config import DATA_LOCATION_KEYS, TrialConfig
from workers.contract import CHECKPOINT_INFO_FILE, CHECKPOINT_STATE_FILE
from workers.errors import XmemError

# The version of ``Trial.state_dict()``'s layout; a checkpoint of another one is refused.
STATE_FORMAT = 1


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

    @classmethod
    def parse(cls, text: str | bytes) -> "CheckpointInfo | None":
        """The info in ``text``, or None when it is not a complete info file (being written,
        or not xmem's)."""
        try:
            values = json.loads(text)
            run_id, size = values.get("run_id"), values.get("state_bytes")
            return cls(str(values["trial_id"]), int(values["epoch"]),
                       None if run_id is None else str(run_id), None if size is None else int(size))
        except (TypeError, KeyError, ValueError):
            return None


def save_checkpoint(checkpoint: TrialCheckpoint, folder: str | Path) -> None:
    """Write ``checkpoint`` into the existing folder ``folder`` (state first, then the info
    file that makes it findable)."""
    import torch

    folder = Path(folder)
    torch.save({"trial": checkpoint.trial_state, "history": checkpoint.history,
                "alignment_rows": checkpoint.alignment_rows, "run_id": checkpoint.run_id},
               folder / CHECKPOINT_STATE_FILE)
    info = CheckpointInfo(checkpoint.trial_id, checkpoint.epoch, checkpoint.run_id,
                          (folder / CHECKPOINT_STATE_FILE).stat().st_size)
    (folder / CHECKPOINT_INFO_FILE).write_text(json.dumps(dataclasses.asdict(info)))


def load_checkpoint(folder: str | Path, trial_id: str) -> TrialCheckpoint:
    """Read the checkpoint in ``folder`` (a local folder) of trial ``trial_id``."""
    import torch

    saved = torch.load(Path(folder) / CHECKPOINT_STATE_FILE, weights_only=False)
    return TrialCheckpoint(trial_id=trial_id, run_id=saved["run_id"], trial_state=saved["trial"],
                           history=saved["history"], alignment_rows=saved["alignment_rows"])


def check_state_fits(state: dict[str, Any], config: TrialConfig) -> None:
    """Refuse a ``Trial.state_dict()`` that the trial of ``config`` cannot continue.

    The device may differ: a checkpoint written on a GPU resumes on a CPU and back. So may
    where the data is read from (``DATA_LOCATION_KEYS``: the absolute paths a driver resolved
    relative ones to): the trial id, which the checkpoint's folder is named after, already
    holds ``data_file`` as the spec wrote it.

    Raises:
        XmemError: another state format, or a config that differs in a result-changing key.
    """
    if state.get("format") != STATE_FORMAT:
        raise XmemError(f"checkpoint format {state.get('format')!r} is not {STATE_FORMAT}; "
                        "it was written by another xmem version: restart the trial from scratch")
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


def load_pack_checkpoint(folder: str | Path, trial_ids: list[str]) -> dict[str, TrialCheckpoint]:
    """The checkpoints of those ``trial_ids`` that ``folder`` (a pack's checkpoint) holds."""
    found = {}
    for trial_id in trial_ids:
        member_folder = Path(folder) / trial_id
        if (member_folder / CHECKPOINT_INFO_FILE).is_file():
            found[trial_id] = load_checkpoint(member_folder, trial_id)
    return found
