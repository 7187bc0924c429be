"""The Ray Tune trainable: one pack of xmem trials inside a Ray worker. The only worker module
that imports ray.

A pack (``workers.pack``) is one Tune trial training M trials together; a pack of one is a
trial alone. What one call does, in order:
1. rebuild each member's ``TrialConfig``; run on CUDA only when Ray gave this trial a GPU;
2. leave out members whose run already ended with a result (an earlier attempt of this pack
   finished them before it crashed);
3. restore each member's newest loadable checkpoint: Tune's own (an automatic retry; one
   folder per member) and the older ones of the same pack folder, then those the driver found
   in storage (a resumed sweep: ``resume_from``, then ``resume_fallbacks``). A torn or corrupt
   checkpoint is passed over with a warning; a member with none loadable starts at epoch 0.
   The members of a pack resume from one epoch. A member whose checkpoint does not fit fails
   alone (a user error);
4. continue each member's MLflow run (created by the driver) through ``workers.mlflow_log``;
   steps an earlier attempt already logged are not logged again. Each run records the pack's
   dataset (described once: the members share the data); the pack's system metrics go to
   one member's run, which every member's run names (``PackSystemMetrics``);
5. train, sending metrics to MLflow every few seconds and saving a checkpoint every
   ``checkpoint_every`` epochs (or adaptively, ~5% of the time). Tune hears of progress at
   each checkpoint and otherwise at most every ``SECONDS_BETWEEN_REPORTS``: each report
   blocks training until the driver takes it, and MLflow, not Tune, stores the metrics;
6. as each member ends, log its final artifacts and end its run FINISHED (finished or
   diverged). A user error (``XmemError``) shared by the pack ends every member FAILED at once;
   anything else ends the running members FAILED and is re-raised so that Tune retries the
   pack from its checkpoint. A stop by the driver (Ctrl-C or SIGTERM there: Tune raises
   ``SystemExit`` from ``tune.report``) ends them *interrupted* (MLflow KILLED, no
   ``error.txt``): a rerun of the sweep resumes them from their checkpoints.

While the tracking server is unreachable the trial keeps training and queues its metrics; it
fails (to be resumed later) only when the server stays away longer than
``XMEM_TRACKING_WAIT_S`` seconds (default 600).
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from workers.checkpoint import (DamagedCheckpoint, TrialCheckpoint, check_state_fits,
                                load_checkpoint, save_pack_checkpoint)
from workers.config import TrialConfig
from workers.contract import (ERROR_CRASH, ERROR_USER, REPORT_EPOCH, REPORT_MEMBERS, REPORT_STATUS,
                              STATUS_FAILED, STATUS_FINISHED, STATUS_RUNNING, TAG_ATTEMPT_SECONDS,
                              TAG_CHECKPOINT_SECONDS, TAG_CHECKPOINTS, TAG_DEVICE, TAG_HOST,
                              TAG_PACK, TAG_PACK_SIZE, TAG_PID, TAG_RAY_NODE, TAG_START_EPOCH,
                              PackPayload, TrialPayload)
from workers.data.description import describe_dataset
from workers.errors import XmemError, error_summary
from workers.mlflow_log import PackSystemMetrics, TrialRunLogger, is_transient
from workers.pack import PackedTrials

_log = logging.getLogger(__name__)

# With no checkpoint_every, checkpoint when the time since the last one is at least this
# many times what saving one costs: checkpointing then takes about 1/20 = 5% of the time.
ADAPTIVE_CHECKPOINT_RATIO = 20.0
MIN_SECONDS_BETWEEN_CHECKPOINTS = 5.0
# Metrics are sent to MLflow at most this often (and at every checkpoint and the end): one
# request costs ~40 ms on a busy server, too much to pay for every epoch.
SECONDS_BETWEEN_FLUSHES = 10.0
TRACKING_RETRY_PAUSE_S = 2.0
# Checkpoints are written to <temp>/xmem-ckpt-<pid>-<random>/ before Tune copies them.
SCRATCH_PREFIX = "xmem-ckpt-"
# Tune hears of progress at most this often (and at every checkpoint and the end).
SECONDS_BETWEEN_REPORTS = 2.0
CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folders in a trial's storage folder


def tracking_wait_seconds() -> float:
    """How long a trial keeps going without its tracking server before it fails."""
    return float(os.environ.get("XMEM_TRACKING_WAIT_S", "600"))


def _device_for_this_worker(config: TrialConfig) -> TrialConfig:
    """``auto`` means the GPU only when Ray assigned this trial one (CUDA_VISIBLE_DEVICES is set)."""
    if config.device == "auto" and not ray.get_gpu_ids():
        return config.replace(device="cpu")
    return config


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


class _CheckpointClock:
    """Decides after which evaluated epochs to checkpoint."""

    def __init__(self, every: int | None):
        self.every = every
        self.last_time = time.monotonic()
        self.last_epoch = 0
        self.save_seconds = 0.0
        self.total_seconds = 0.0  # spent saving and reporting checkpoints in this attempt
        self.count = 0

    def due(self, epoch: int, final: bool) -> bool:
        if final:
            return False  # a finished trial is recorded in MLflow; no state is needed after it
        if self.every is not None:
            return epoch - self.last_epoch >= self.every
        waited = time.monotonic() - self.last_time
        return waited >= max(MIN_SECONDS_BETWEEN_CHECKPOINTS, ADAPTIVE_CHECKPOINT_RATIO * self.save_seconds)

    def saved(self, epoch: int, seconds: float) -> None:
        self.last_epoch, self.save_seconds, self.last_time = epoch, seconds, time.monotonic()
        self.total_seconds += seconds
        self.count += 1


def _restore_checkpoints(members: list[TrialPayload],
                         own: tune.Checkpoint | None = None) -> dict[str, TrialCheckpoint]:
    """Each member's checkpoint to continue from (members with none are left out).

    Each member tries, newest first: Tune's own checkpoint ``own`` (default
    ``tune.get_checkpoint()``: an automatic retry of this pack) and the older ones in the same
    pack folder, then what the driver found in storage (``resume_from``, ``resume_fallbacks``).
    A torn or corrupt one (``DamagedCheckpoint``) is passed over with a warning. The members
    of a pack train in lockstep, so they resume from one epoch: a member whose newest loadable
    checkpoint is newer than another's goes back to its checkpoint at that epoch (when it has
    none there, the pack goes further back, down to epoch 0).
    """
    own = tune.get_checkpoint() if own is None else own
    candidates = {m.trial_id: _Candidates(m.trial_id, _locations(m, own)) for m in members}
    bound: int | None = None
    while True:
        chosen = {tid: c.newest_at_most(bound) for tid, c in candidates.items()}
        epochs = {0 if saved is None else saved.epoch for saved in chosen.values()}
        if len(epochs) <= 1:
            break
        bound = min(epochs)
        _log.warning("xmem: the pack's members resume from one epoch: going back to epoch %d "
                     "(the newest loadable checkpoints are at epochs %s)", bound, sorted(epochs))
    for tid, c in candidates.items():
        if chosen[tid] is None and c.tried:
            _log.warning("xmem: trial %s has no loadable checkpoint (%d tried): it starts over "
                         "from epoch 0", tid, c.tried)
    return {tid: saved for tid, saved in chosen.items() if saved is not None}


class _Candidates:
    """One member's checkpoints to try, newest first, loaded one at a time."""

    def __init__(self, trial_id: str, locations: list[tune.Checkpoint]):
        self.trial_id = trial_id
        self.pending = list(locations)
        self.current: TrialCheckpoint | None = None
        self.tried = 0

    def newest_at_most(self, epoch: int | None) -> TrialCheckpoint | None:
        """The newest loadable checkpoint at or below ``epoch`` (None: any epoch)."""
        if self.current is not None and (epoch is None or self.current.epoch <= epoch):
            return self.current
        self.current = None
        while self.pending:
            location = self.pending.pop(0)
            try:
                saved = _load_member(location, self.trial_id)
            except DamagedCheckpoint as error:
                self.tried += 1
                _log.warning("xmem: trial %s: %s; trying an older checkpoint", self.trial_id, error)
                continue
            if saved is None:
                continue  # the member has no folder there
            self.tried += 1
            if epoch is None or saved.epoch <= epoch:
                self.current = saved
                return saved
        return None


def _locations(member: TrialPayload, own: tune.Checkpoint | None) -> list[tune.Checkpoint]:
    """Where ``member``'s checkpoints may be, newest first (see ``_restore_checkpoints``)."""
    found = []
    if own is not None:
        for pack_checkpoint in [own, *_older_in_pack(own)]:
            found.append(tune.Checkpoint(posixpath.join(pack_checkpoint.path, member.trial_id),
                                         pack_checkpoint.filesystem))
    for location in [member.resume_from, *member.resume_fallbacks]:
        if location:
            found.append(tune.Checkpoint(location))
    return found


def _older_in_pack(own: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The pack's checkpoints older than ``own`` in its storage folder, newest first (Tune
    keeps two: when its newest copy is torn, the one before it is whole)."""
    parent, name = posixpath.split(own.path.rstrip("/"))
    entries = own.filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    older = sorted((e.path for e in entries if e.type == pafs.FileType.Directory
                    and posixpath.basename(e.path).startswith(CHECKPOINT_PREFIX)
                    and posixpath.basename(e.path) < name), reverse=True)
    return [tune.Checkpoint(path, own.filesystem) for path in older]


def _load_member(location: tune.Checkpoint, trial_id: str) -> TrialCheckpoint | None:
    """The checkpoint in ``location``; None when the folder does not exist.

    Raises:
        DamagedCheckpoint: a torn or corrupt copy.
    """
    if location.filesystem.get_file_info(location.path).type == pafs.FileType.NotFound:
        return None
    with location.as_directory() as folder:
        return load_checkpoint(folder, trial_id)



class TrackingServerAway(RuntimeError):
    """The tracking server stayed unreachable too long: not a user error, so Tune retries the
    trial from its checkpoint (and a later rerun of the sweep resumes it)."""


class _PatientTracking:
    """Calls into MLflow that tolerate an unreachable server for ``tracking_wait_seconds()``."""

    def __init__(self, logger: TrialRunLogger):
        self.logger = logger
        self.down_since: float | None = None
        self.last_flush = time.monotonic()

    def call(self, function, *args) -> Any:
        """Retry ``function`` until it succeeds or the server has been away too long."""
        while True:
            try:
                result = function(*args)
                self.down_since = None
                return result
            except Exception as error:  # the MLflow client raises several types
                self._bear(error)
                time.sleep(TRACKING_RETRY_PAUSE_S)

    def flush_now_and_then(self, force: bool = False) -> None:
        """Flush if due; on failure keep the queue and go on training (within the bound)."""
        now = time.monotonic()
        if not force and now - self.last_flush < SECONDS_BETWEEN_FLUSHES:
            return
        self.last_flush = now
        try:
            self.logger.flush()
            self.down_since = None
        except Exception as error:
            self._bear(error)

    def _bear(self, error: Exception) -> None:
        """Note a failed call: re-raise what waiting cannot cure, give up once the server has
        been away longer than ``tracking_wait_seconds()``, else return (keep going)."""
        if not is_transient(error):
            raise error
        now = time.monotonic()
        self.down_since = self.down_since or now
        if now - self.down_since > tracking_wait_seconds():
            raise TrackingServerAway(
                f"the MLflow tracking server {self.logger.tracking_uri} was unreachable for more "
                f"than {tracking_wait_seconds():g} s ({error}); {len(self.logger.pending)} metric "
                "values are kept in the checkpoint's history; rerun the sweep to resume") from error


class _Member:
    """One trial of the pack: its payload, config, MLflow logger and patient tracking."""

    def __init__(self, payload: TrialPayload):
        self.payload = payload
        self.trial_id = payload.trial_id
        self.config = _device_for_this_worker(TrialConfig.from_mapping(payload.trial, source="sweep trial"))
        self.logger = TrialRunLogger(payload.tracking_uri, payload.run_id)
        self.tracking = _PatientTracking(self.logger)
        self.ended = False


def run_tune_trial(tune_config: dict[str, Any]) -> None:
    """Tune function trainable; its config holds a ``PackPayload`` (``contract.PAYLOAD_KEY``)."""
    pack_payload = PackPayload.of_tune_config(tune_config)
    attempt_started = time.monotonic()
    members = [_Member(payload) for payload in pack_payload.trials()]
    system: PackSystemMetrics | None = None
    try:
        # An automatic retry after some members ended: their runs hold their results.
        members = [m for m in members if m.tracking.call(m.logger.ended_with) is None]
        restored = _restore_checkpoints([m.payload for m in members])
        running = _fitting(members, restored)
        failed = {m.trial_id: [None, STATUS_FAILED] for m in members if m.ended}
        if failed or not running:
            tune.report({REPORT_STATUS: STATUS_RUNNING if running else STATUS_FINISHED,
                         REPORT_MEMBERS: failed})
        if not running:
            return
        pack = PackedTrials([(m.trial_id, m.config) for m in running])
        for m in running:
            saved = restored.get(m.trial_id)
            if saved is not None:
                pack.load_member_state(m.trial_id, saved.trial_state)
                m.logger.history, m.logger.alignment_rows = saved.history, saved.alignment_rows
        # --- MLflow: each member's run (a member that cannot continue its run's series moves
        # to a new run: workers.mlflow_log), the pack's system metrics in one of them ---
        resumed_after = {m.trial_id: int(restored[m.trial_id].trial_state["last_evaluated_epoch"])
                         if m.trial_id in restored else -1 for m in running}
        for m in running:
            m.tracking.call(m.logger.open, resumed_after[m.trial_id])
        system = PackSystemMetrics(running[0].logger.tracking_uri, [m.logger.run_id for m in running])
        dataset = describe_dataset(pack.config, pack.data)
        tags = {TAG_DEVICE: _device_name(pack.device),
                TAG_RAY_NODE: ray.get_runtime_context().get_node_id(),
                TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
                TAG_START_EPOCH: str(pack.epoch), TAG_PACK: pack_payload.pack_id,
                TAG_PACK_SIZE: str(len(running)), **system.host_tags()}
        for m in running:
            m.tracking.call(m.logger.start, tags, dataset, resumed_after[m.trial_id])
        system.start()
        _train(pack, {m.trial_id: m for m in running}, attempt_started, system)
    except XmemError as error:
        # A user error shared by the pack (a missing dataset, images too small for the model)
        # fails the same way on every retry: end the trials failed now instead of spending
        # max_failures retries.
        text = f"{error}\n\n{traceback.format_exc()}"
        for m in members:
            if not m.ended:
                _end_failed(m.logger, text, error_summary(error), ERROR_USER)
        tune.report({REPORT_STATUS: STATUS_FAILED,
                     REPORT_MEMBERS: {m.trial_id: [None, STATUS_FAILED] for m in members if not m.ended}})
    except (SystemExit, KeyboardInterrupt):
        # Tune stops a trial by raising SystemExit from tune.report: the driver was interrupted
        # (Ctrl-C or SIGTERM). Nothing failed: the runs end interrupted (resumable, no
        # error.txt) and the exit goes on to Tune.
        _end_interrupted([m for m in members if not m.ended])
        raise
    except BaseException as error:
        for m in members:
            if not m.ended:
                _end_failed(m.logger, traceback.format_exc(), error_summary(error), ERROR_CRASH)
        raise
    finally:
        if system is not None:
            system.stop()


def _fitting(members: list[_Member], restored: dict[str, TrialCheckpoint]) -> list[_Member]:
    """The members that can train: a member whose checkpoint belongs to another config (or
    another xmem version) fails alone, as a user error; the rest go on."""
    fitting = []
    for m in members:
        saved = restored.get(m.trial_id)
        try:
            if saved is not None:
                check_state_fits(saved.trial_state, m.config)
        except XmemError as error:
            _end_failed(m.logger, f"{error}\n\n{traceback.format_exc()}", error_summary(error), ERROR_USER)
            m.ended = True
            continue
        fitting.append(m)
    return fitting


def _train(pack: PackedTrials, members: dict[str, _Member], attempt_started: float,
           system: PackSystemMetrics) -> None:
    """The pack's loop: log every record, end members as they end, checkpoint, report."""
    config = pack.config
    clock = _CheckpointClock(config.checkpoint_every)
    clock.last_epoch = pack.epoch
    last_report = time.monotonic()
    ended_at: dict[str, int] = {}  # member -> the epoch it ended at

    def progress(epoch: int) -> dict[str, list]:
        return {tid: [ended_at.get(tid, epoch), pack.status[tid]] for tid in members}

    remove_orphaned_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch:
        for step in pack.run():
            for trial_id, record in step.records.items():
                members[trial_id].logger.log_record(record)
            system.members_ending([members[t].logger.run_id for t in step.ended])
            for trial_id, status in step.ended.items():
                _finish(members[trial_id], status, step.weights[trial_id], attempt_started, clock)
                ended_at[trial_id] = step.epoch
            report = {REPORT_EPOCH: step.epoch, REPORT_STATUS: STATUS_RUNNING,
                      REPORT_MEMBERS: progress(step.epoch)}
            if pack.size and clock.due(step.epoch, final=step.epoch >= config.epochs):
                for trial_id in pack.keys:
                    members[trial_id].tracking.flush_now_and_then(force=True)
                started = time.monotonic()
                checkpoint = _save_pack_checkpoint(pack, members, Path(scratch))
                tune.report(report, checkpoint=checkpoint)  # Tune copies it to storage
                shutil.rmtree(checkpoint.path, ignore_errors=True)
                clock.saved(step.epoch, time.monotonic() - started)
                last_report = time.monotonic()
                continue
            for trial_id in pack.keys:
                members[trial_id].tracking.flush_now_and_then()
            if step.ended or time.monotonic() - last_report >= SECONDS_BETWEEN_REPORTS:
                tune.report(report)
                last_report = time.monotonic()
    tune.report({REPORT_EPOCH: pack.epoch, REPORT_STATUS: STATUS_FINISHED,
                 REPORT_MEMBERS: progress(pack.epoch)})


def remove_orphaned_scratch(folder: str | None = None) -> list[str]:
    """Remove the checkpoint scratch folders of worker processes that no longer exist.

    A worker killed mid-attempt (SIGKILL, out of memory, its node's driver gone) never runs
    its ``TemporaryDirectory`` cleanup, and every such kill left a checkpoint's worth of
    files in the temp folder. Scratch folders carry their process id, so the next attempt on
    the machine removes those whose process is gone (a live process, even an unrelated one
    that reuses the id, keeps its folder). Returns the removed paths.
    """
    removed = []
    root = Path(folder or tempfile.gettempdir())
    for path in root.glob(f"{SCRATCH_PREFIX}*-*"):
        pid_text = path.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _process_exists(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _save_pack_checkpoint(pack: PackedTrials, members: dict[str, _Member], scratch: Path) -> tune.Checkpoint:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    save_pack_checkpoint([TrialCheckpoint(tid, members[tid].logger.run_id, pack.member_state(tid),
                                          members[tid].logger.history, members[tid].logger.alignment_rows)
                          for tid in pack.keys], folder)
    return tune.Checkpoint.from_directory(str(folder))


def _finish(member: _Member, status: str, weights: dict[str, Any], attempt_started: float,
            clock: _CheckpointClock) -> None:
    """A member ended (finished or diverged): its final artifacts, then its run FINISHED."""
    logger, tracking = member.logger, member.tracking
    tracking.call(logger.set_tags, {
        TAG_ATTEMPT_SECONDS: f"{time.monotonic() - attempt_started:.3f}",
        TAG_CHECKPOINT_SECONDS: f"{clock.total_seconds:.3f}",
        TAG_CHECKPOINTS: str(clock.count)})
    tracking.call(logger.flush)
    tracking.call(logger.log_final_artifacts, member.config, logger.history, logger.alignment_rows,
                  weights)
    tracking.call(logger.finish, status)
    member.ended = True


def _end_failed(logger: TrialRunLogger, error_text: str, summary: str, kind: str) -> None:
    """End the run FAILED with ``error.txt``; an error doing so (the server may be the reason
    the trial fails) is logged, never raised: the trial's own error is the one that counts."""
    try:
        logger.fail(error_text, summary, kind)
    except Exception as error:
        _log.warning("could not record the failure of run %s (%s: %s); the run stays as it was "
                     "and the next rerun of the sweep resumes it", logger.run_id,
                     type(error).__name__, error)


def _end_interrupted(members: list[_Member]) -> None:
    """End the runs of ``members`` interrupted (``TrialRunLogger.interrupt``), quickly: Ray
    ends this process within seconds. Once the server fails to answer, the remaining runs are
    not tried (each would wait the same); the driver marks them interrupted instead, or, when
    it exits at once too, the next rerun resumes them as they are."""
    for position, m in enumerate(members):
        try:
            m.logger.interrupt()
        except Exception as error:
            left = [other.logger.run_id for other in members[position:]]
            _log.warning("could not mark run(s) %s interrupted (%s: %s); the driver marks them",
                         ", ".join(left), type(error).__name__, error)
            return
        m.ended = True
