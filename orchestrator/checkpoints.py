"""Finding, checking and pruning trials' checkpoints in a sweep's Tune storage (local, NFS or s3://).

Layout written by Tune and ``workers.checkpoint``::

    <storage>/<sweep>/<pack name>-<pack id>-<session>/checkpoint_000003/<trial id>/
        trial_state.pt          the engine's state, history, per-class rows, MLflow run id
        xmem_checkpoint.json    {"trial_id", "epoch", "run_id", "state_bytes", "state_sha256"}:
                                read here without torch

One folder per member of the pack that was still training; each is a trial's own checkpoint,
resumable in any pack. (Checkpoints of xmem before packing hold the two files directly in
``checkpoint_N/``; they are found too.) Every ``xmem sweep`` invocation (a session) gets its
own pack folders, so a resumed trial never writes into the folder it resumes from.

Which checkpoints count (``resume_candidates``):

- **complete**: Ray copies a checkpoint into storage with no temp-and-rename step, so a kill
  during the copy leaves a complete info file beside a short or garbled state file. The state
  file's size is checked for every checkpoint (it comes with the folder listing); its SHA-256
  only lazily, per trial newest first until one matches (hashing every 25 MB file on S3 would
  be slow). The older complete ones are the trial's fallbacks, tried in order by the worker
  when the newest fails to load after all.
- **of the trial's runs**: a checkpoint names the MLflow run it was written for; it counts only
  while that run is one of the trial's active runs (its current run, or an older attempt's).
  A checkpoint of a run that is gone (the experiment was deleted and made again) is ignored.

Storage errors are errors: a missing sweep folder only means no checkpoints yet, but any
other failure to read the storage (expired S3 credentials, a stale NFS mount) raises an
``XmemError`` naming the location, before anything restarts or is deleted.

``prune_checkpoints`` removes, at the end of each invocation, every checkpoint that no run
needs: those of trials whose run ended with a result, those of runs that are not the trial's,
torn ones, and all but the newest two complete ones of every other trial (the newer of the two
is the newest whose hash matches; the older is checked by size); then checkpoint and pack
folders left without checkpoints.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Container, Iterator, Mapping

import pyarrow.fs as pafs

from workers.checkpoint import CheckpointInfo, sha256_of
from workers.contract import CHECKPOINT_INFO_FILE, CHECKPOINT_STATE_FILE
from workers.errors import XmemError

CHECKPOINT_PREFIX = "checkpoint_"   # Tune's checkpoint folders: checkpoint_000000, ...
KEEP_PER_TRIAL = 2                  # complete checkpoints kept per unfinished trial by the prune
TUNE_TRIAL_FILE = "params.json"     # Tune writes it into every trial (pack) folder


@dataclass(frozen=True)
class FoundCheckpoint:
    """One checkpoint folder in storage, as its info file and the folder listing describe it."""

    info: CheckpointInfo
    path: str
    """The folder, as a local path or a URI (``s3://...``): what the worker is given."""
    location: str
    """The same folder as a path of the storage's filesystem (no scheme)."""
    state_size: int | None
    """The state file's size in the listing; None when it is missing."""

    @property
    def trial_id(self) -> str:
        return self.info.trial_id

    @property
    def epoch(self) -> int:
        return self.info.epoch

    @property
    def torn(self) -> bool:
        """The state file is missing or not the size the info file recorded."""
        return self.info.state_problem(self.state_size) is not None


@dataclass(frozen=True)
class TrialCheckpoints:
    """One trial's usable checkpoints: complete ones to resume from, and damaged ones."""

    trial_id: str
    good: tuple[FoundCheckpoint, ...] = ()
    """Complete checkpoints, newest first. The first one's hash was checked (when it has one
    and the scan was asked to verify this trial); the others are the fallbacks."""
    damaged: tuple[FoundCheckpoint, ...] = ()
    """Torn copies or corrupt bytes, newest first."""

    @property
    def newest(self) -> FoundCheckpoint | None:
        return self.good[0] if self.good else None

    @property
    def path(self) -> str | None:
        """The folder to resume from; None when no complete checkpoint is left."""
        return self.good[0].path if self.good else None

    @property
    def epoch(self) -> int:
        """The epoch the trial resumes from (0: it starts over)."""
        return self.good[0].epoch if self.good else 0

    @property
    def fallbacks(self) -> list[str]:
        """The older complete checkpoints, newest first: the worker's next tries."""
        return [found.path for found in self.good[1:]]

    @property
    def newest_damaged(self) -> FoundCheckpoint | None:
        """The damaged checkpoint that is newer than every complete one (so the trial loses
        epochs to it), if any."""
        if self.damaged and (not self.good or self.damaged[0].epoch > self.good[0].epoch):
            return self.damaged[0]
        return None


@dataclass
class PruneResult:
    removed: int = 0
    """Checkpoint folders removed (each trial's checkpoint in a pack folder counts once)."""
    kept: int = 0
    folders_removed: list[str] = field(default_factory=list)
    """Checkpoint and pack folders removed because no checkpoint was left in them."""


# --- the scan -----------------------------------------------------------------------------

def scan_checkpoints(storage: str, sweep_name: str) -> list[FoundCheckpoint]:
    """Every checkpoint of the sweep that has a readable info file, torn ones included.

    ``storage`` is an absolute local path or a URI (``s3://bucket/prefix``).

    Raises:
        XmemError: the storage cannot be read (anything but a missing sweep folder).
    """
    store = _Storage(storage, sweep_name)
    return [found for folder in store.walk() if (found := folder.found) is not None]


def check_storage_readable(storage: str, sweep_name: str) -> None:
    """List the sweep's folder once (a missing one is fine): expired credentials or a stale
    mount fail here, before the driver takes the sweep or changes anything.

    Raises:
        XmemError: as ``scan_checkpoints``.
    """
    store = _Storage(storage, sweep_name)
    store._dirs(store.root)


def resume_candidates(found: list[FoundCheckpoint], run_ids: Mapping[str, set[str]] | None = None,
                      verify: Container[str] | None = None, storage: str | None = None
                      ) -> dict[str, TrialCheckpoints]:
    """trial id -> its checkpoints to resume from, for every trial with any.

    ``run_ids``: trial id -> the ids of its active runs (``SweepReader.run_ids_by_trial``); a
    checkpoint written for another run is left out (None: no filter). ``verify``: the trials
    whose newest complete checkpoint's hash is checked (read from ``storage``), newest first
    until one matches (None: every trial; a trial that will not resume needs no check).

    Raises:
        XmemError: a state file cannot be read to check its hash.
    """
    by_trial: dict[str, list[FoundCheckpoint]] = {}
    for checkpoint in found:
        if run_ids is None or _of_trial_runs(checkpoint, run_ids):
            by_trial.setdefault(checkpoint.trial_id, []).append(checkpoint)
    hasher = _Storage(storage, "") if storage is not None else None
    result = {}
    for trial_id, checkpoints in by_trial.items():
        checkpoints.sort(key=lambda c: (c.epoch, c.path), reverse=True)
        good, damaged = [], []
        check = hasher is not None and (verify is None or trial_id in verify)
        for checkpoint in checkpoints:
            if checkpoint.torn or (check and not good and not hasher.hash_matches(checkpoint)):
                damaged.append(checkpoint)
            else:
                good.append(checkpoint)
        result[trial_id] = TrialCheckpoints(trial_id, tuple(good), tuple(damaged))
    return result


def trial_checkpoints(storage: str, sweep_name: str, run_ids: Mapping[str, set[str]] | None = None,
                      verify: Container[str] | None = None) -> dict[str, TrialCheckpoints]:
    """``resume_candidates`` of the sweep's storage (scanned, hashes checked there)."""
    return resume_candidates(scan_checkpoints(storage, sweep_name), run_ids, verify, storage)


def latest_checkpoints(storage: str, sweep_name: str,
                       run_ids: Mapping[str, set[str]] | None = None) -> dict[str, str]:
    """trial id -> the folder of its newest complete checkpoint."""
    return {tid: path for tid, (_, path) in latest_checkpoint_epochs(storage, sweep_name, run_ids).items()}


def latest_checkpoint_epochs(storage: str, sweep_name: str,
                             run_ids: Mapping[str, set[str]] | None = None) -> dict[str, tuple[int, str]]:
    """trial id -> (epoch, folder) of its newest complete checkpoint."""
    return {tid: (found.epoch, found.path)
            for tid, checkpoints in trial_checkpoints(storage, sweep_name, run_ids).items()
            if (found := checkpoints.newest) is not None}


def delete_checkpoints(storage: str, sweep_name: str, trial_ids: set[str]) -> int:
    """Delete every checkpoint of these trials (they start over); returns how many."""
    store = _Storage(storage, sweep_name)
    doomed = [found.location for found in scan_checkpoints(storage, sweep_name)
              if found.trial_id in trial_ids]
    for location in doomed:
        store.delete(location)
    return len(doomed)


# --- pruning ------------------------------------------------------------------------------

def prune_checkpoints(storage: str, sweep_name: str, run_ids: Mapping[str, set[str]],
                      ended: set[str], keep: int = KEEP_PER_TRIAL) -> PruneResult:
    """Remove the checkpoints no run needs (see the module doc); returns what went.

    ``run_ids``: trial id -> its active runs' ids; ``ended``: the trials whose run ended with
    a result (finished or diverged). Call it only when no trial of the sweep is running: a
    checkpoint being copied would look torn.

    Raises:
        XmemError: the storage cannot be read or written.
    """
    store = _Storage(storage, sweep_name)
    folders = list(store.walk())
    doomed: list[str] = []
    keepers: dict[str, list[FoundCheckpoint]] = {}
    for folder in folders:
        found = folder.found
        if found is None or found.torn or found.trial_id in ended or not _of_trial_runs(found, run_ids):
            doomed.append(folder.location)
        else:
            keepers.setdefault(found.trial_id, []).append(found)
    result = PruneResult()
    for checkpoints in keepers.values():
        checkpoints.sort(key=lambda c: (c.epoch, c.path), reverse=True)
        good, verified = 0, False
        for checkpoint in checkpoints:
            # Newest first, hashed until one matches: the one a resume starts from is sound.
            # The older ones kept are only its fallbacks, checked by size (hashing every one
            # of a large interrupted sweep would read gigabytes); their hash is checked when
            # they are needed.
            if good < keep and (verified or store.hash_matches(checkpoint)):
                good, verified = good + 1, True
            else:
                doomed.append(checkpoint.location)
        result.kept += good
    for location in doomed:
        store.delete(location)
    result.removed = len(doomed)
    result.folders_removed = store.remove_emptied({f.checkpoint_dir for f in folders},
                                                  {f.pack_dir for f in folders})
    return result


def _of_trial_runs(found: FoundCheckpoint, run_ids: Mapping[str, set[str]]) -> bool:
    """Whether the checkpoint's run is one of its trial's runs (a checkpoint of an xmem that
    recorded no run id is taken to be)."""
    return found.info.run_id is None or found.info.run_id in run_ids.get(found.trial_id, ())


# --- the storage --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Folder:
    """A folder that holds (or held) one checkpoint: a member folder of a pack's
    ``checkpoint_N/``, or ``checkpoint_N/`` itself in the layout before packing."""

    location: str
    checkpoint_dir: str
    pack_dir: str
    found: FoundCheckpoint | None
    """None: no readable info file (a copy torn before it was written)."""


class _Storage:
    """The sweep's folder on its filesystem; every read error but "not found" is an XmemError."""

    def __init__(self, storage: str, sweep_name: str):
        self.storage = storage
        self.filesystem, root = pafs.FileSystem.from_uri(storage)
        self.scheme = storage.split("://", 1)[0] + "://" if "://" in storage else ""
        self.root = posixpath.join(root.rstrip("/"), sweep_name) if sweep_name else root

    def walk(self) -> Iterator[_Folder]:
        """Every checkpoint folder under the sweep's folder (a missing folder holds none)."""
        for pack_dir in self._dirs(self.root):
            for checkpoint_dir in self._dirs(pack_dir):
                if not posixpath.basename(checkpoint_dir).startswith(CHECKPOINT_PREFIX):
                    continue
                entries = self._list(checkpoint_dir)
                members = [e.path for e in entries if e.type == pafs.FileType.Directory]
                if any(e.type == pafs.FileType.File for e in entries) or not members:
                    # the layout before packing (or an empty folder: a copy torn at its start)
                    yield self._folder(checkpoint_dir, checkpoint_dir, pack_dir, entries)
                for member in members:
                    yield self._folder(member, checkpoint_dir, pack_dir, self._list(member))

    def hash_matches(self, found: FoundCheckpoint) -> bool:
        """Whether the state file's SHA-256 is the one recorded (True when none was)."""
        if found.info.state_sha256 is None:
            return True
        path = posixpath.join(found.location, CHECKPOINT_STATE_FILE)
        try:
            with self.filesystem.open_input_stream(path) as stream:
                digest = sha256_of(stream)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise storage_error(self.scheme + path, error) from error
        return found.info.state_problem(found.state_size, digest) is None

    def delete(self, location: str) -> None:
        try:
            self.filesystem.delete_dir(location)
        except FileNotFoundError:
            pass  # gone already
        except OSError as error:
            raise storage_error(self.scheme + location, error, "delete") from error

    def remove_emptied(self, checkpoint_dirs: set[str], pack_dirs: set[str]) -> list[str]:
        """Remove the ``checkpoint_N`` folders left with no checkpoint, then the pack folders
        left with no ``checkpoint_N`` that are Tune's (hold ``params.json``) or held one."""
        removed = []
        for checkpoint_dir in sorted(checkpoint_dirs):
            if not self._exists(checkpoint_dir):
                continue  # removed whole (the layout before packing)
            entries = self._list(checkpoint_dir)
            if not any(e.type == pafs.FileType.Directory or posixpath.basename(e.path)
                       in (CHECKPOINT_INFO_FILE, CHECKPOINT_STATE_FILE) for e in entries):
                self.delete(checkpoint_dir)
                removed.append(self.scheme + checkpoint_dir)
        for pack_dir in sorted(pack_dirs | set(self._dirs(self.root))):
            entries = self._list(pack_dir)
            names = {posixpath.basename(e.path) for e in entries}
            held = pack_dir in pack_dirs
            if not any(name.startswith(CHECKPOINT_PREFIX) for name in names) and \
                    (held or TUNE_TRIAL_FILE in names):
                self.delete(pack_dir)
                removed.append(self.scheme + pack_dir)
        return removed

    # --- internals ----------------------------------------------------------------------
    def _folder(self, location: str, checkpoint_dir: str, pack_dir: str,
                entries: list[pafs.FileInfo]) -> _Folder:
        files = {posixpath.basename(e.path): e for e in entries if e.type == pafs.FileType.File}
        info = self._read_info(posixpath.join(location, CHECKPOINT_INFO_FILE)) \
            if CHECKPOINT_INFO_FILE in files else None
        found = None
        if info is not None:
            state = files.get(CHECKPOINT_STATE_FILE)
            found = FoundCheckpoint(info, self.scheme + location, location,
                                    None if state is None else state.size)
        return _Folder(location, checkpoint_dir, pack_dir, found)

    def _list(self, path: str) -> list[pafs.FileInfo]:
        try:
            return self.filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except OSError as error:
            raise storage_error(self.scheme + path, error) from error

    def _exists(self, path: str) -> bool:
        try:
            return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound
        except OSError as error:
            raise storage_error(self.scheme + path, error) from error

    def _dirs(self, path: str) -> list[str]:
        return sorted(e.path for e in self._list(path) if e.type == pafs.FileType.Directory)

    def _read_info(self, path: str) -> CheckpointInfo | None:
        """The info file's content; None when it vanished or is not complete JSON (being
        written, or not xmem's)."""
        try:
            with self.filesystem.open_input_stream(path) as stream:
                return CheckpointInfo.parse(stream.read())
        except FileNotFoundError:
            return None
        except OSError as error:
            raise storage_error(self.scheme + path, error) from error


def storage_error(location: str, error: OSError, action: str = "read") -> XmemError:
    """The XmemError for a failure to read (or delete in) the checkpoint storage."""
    first_line = (str(error).splitlines() or [type(error).__name__])[0][:300]
    return XmemError(
        f"cannot {action} the sweep's checkpoint storage at {location}: {first_line}\n"
        "Check that the storage is reachable: for s3:// that the credentials are valid and not "
        "expired (AWS_ACCESS_KEY_ID / AWS_PROFILE), for a network mount (NFS) that it is up and "
        "readable, and that --storage (or the spec's storage) names the sweep's storage; then "
        "rerun the sweep (it resumes where it stopped).")
