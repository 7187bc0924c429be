"""The Ray Tune trainable: one xmem trial inside a Ray worker. The only worker module that imports ray.

What one call does, in order:
1. rebuild the ``TrialConfig`` sent by the driver; run on CUDA only when Ray gave this trial a GPU;
2. restore the latest checkpoint when there is one: Tune's own (an automatic retry) or the one
   the driver found in storage (a resumed sweep); otherwise start at epoch 0;
3. continue the trial's MLflow run (created by the driver) through ``workers.mlflow_log``;
   steps an earlier attempt already logged are not logged again;
4. train, reporting each evaluated epoch to Tune, sending metrics to MLflow every few seconds,
   and saving a checkpoint every ``checkpoint_every`` epochs (or adaptively, ~5% of the time);
5. log the final artifacts and end the run FINISHED (finished or diverged), or FAILED with the
   error text: a user error (``XmemError``) ends the trial at once, anything else is re-raised
   so that Tune retries from the checkpoint.

While the tracking server is unreachable the trial keeps training and queues its metrics; it
fails (to be resumed later) only when the server stays away longer than
``XMEM_TRACKING_WAIT_S`` seconds (default 600).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from workers.checkpoint import TrialCheckpoint, load_checkpoint, save_checkpoint
from workers.config import TrialConfig
from workers.contract import (ERROR_CRASH, ERROR_USER, REPORT_EPOCH, REPORT_STATUS, STATUS_FAILED,
                              TAG_ATTEMPT_SECONDS,
                              TAG_CHECKPOINT_SECONDS, TAG_CHECKPOINTS, TAG_DEVICE, TAG_HOST,
                              TAG_PID, TAG_RAY_NODE, TAG_START_EPOCH, TrialPayload)
from workers.errors import XmemError, error_summary
from workers.mlflow_log import TrialRunLogger, is_transient
from workers.trial import Trial
# With no checkpoint_every, checkpoint when the time since the last one is at least this
# many times what saving one costs: checkpointing then takes about 1/20 = 5% of the time.
ADAPTIVE_CHECKPOINT_RATIO = 20.0
MIN_SECONDS_BETWEEN_CHECKPOINTS = 5.0
# Metrics are sent to MLflow at most this often (and at every checkpoint and the end): one
# request costs ~40 ms on a busy server, too much to pay for every epoch.
SECONDS_BETWEEN_FLUSHES = 10.0
TRACKING_RETRY_PAUSE_S = 2.0


def tracking_wait_seconds() -> float:
    """How long a trial keeps going without its tracking server before it fails."""
    return float(os.environ.get("XMEM_TRACKING_WAIT_S", "600"))


def _device_for_this_worker(config: TrialConfig) -> TrialConfig:
    """``auto`` means the GPU only when Ray assigned this trial one (CUDA_VISIBLE_DEVICES is set)."""
    if config.device == "auto" and not ray.get_gpu_ids():
        return config.replace(device="cpu")
    return config


def _device_name(trial: Trial) -> str:
    if trial.device.type == "cuda":
        return torch.cuda.get_device_name(trial.device)
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


def _save_checkpoint(trial: Trial, logger: TrialRunLogger, trial_id: str, scratch: Path) -> tune.Checkpoint:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    save_checkpoint(TrialCheckpoint(trial_id, logger.run_id, trial.state_dict(), logger.history,
                                    logger.alignment_rows), folder)
    return tune.Checkpoint.from_directory(str(folder))


def _load_checkpoint(checkpoint: tune.Checkpoint, trial_id: str) -> TrialCheckpoint:
    with checkpoint.as_directory() as folder:
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


def run_tune_trial(tune_config: dict[str, Any]) -> None:
    """Tune function trainable; its config holds a ``TrialPayload`` (``contract.PAYLOAD_KEY``)."""
    payload = TrialPayload.of_tune_config(tune_config)
    config = _device_for_this_worker(TrialConfig.from_mapping(payload.trial, source="sweep trial"))
    logger = TrialRunLogger(payload.tracking_uri, payload.run_id)
    tracking = _PatientTracking(logger)
    attempt_started = time.monotonic()
    try:
        trial = Trial(config)
        checkpoint = tune.get_checkpoint()
        if checkpoint is None and payload.resume_from:
            checkpoint = tune.Checkpoint(payload.resume_from)
        if checkpoint is not None:
            saved = _load_checkpoint(checkpoint, payload.trial_id)
            trial.load_state_dict(saved.trial_state)
            logger.history, logger.alignment_rows = saved.history, saved.alignment_rows
        tracking.call(logger.start, {
            TAG_DEVICE: _device_name(trial), TAG_RAY_NODE: ray.get_runtime_context().get_node_id(),
            TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
            TAG_START_EPOCH: str(trial.epoch)})
        clock = _CheckpointClock(config.checkpoint_every)
        clock.last_epoch = trial.epoch
        with tempfile.TemporaryDirectory(prefix="xmem-ckpt-") as scratch:
            for record in trial.run():
                logger.log_record(record)
                report = {**record.flat(), REPORT_STATUS: trial.status}
                if clock.due(record.epoch, final=record.epoch >= config.epochs):
                    tracking.flush_now_and_then(force=True)
                    started = time.monotonic()
                    saved_checkpoint = _save_checkpoint(trial, logger, payload.trial_id, Path(scratch))
                    tune.report(report, checkpoint=saved_checkpoint)  # Tune copies it to storage
                    shutil.rmtree(saved_checkpoint.path, ignore_errors=True)
                    clock.saved(record.epoch, time.monotonic() - started)
                else:
                    tune.report(report)
                    tracking.flush_now_and_then()
        attempt_seconds = time.monotonic() - attempt_started
        tracking.call(logger.set_tags, {
            TAG_ATTEMPT_SECONDS: f"{attempt_seconds:.3f}",
            TAG_CHECKPOINT_SECONDS: f"{clock.total_seconds:.3f}",
            TAG_CHECKPOINTS: str(clock.count)})
        tracking.call(logger.flush)
        tracking.call(logger.log_final_artifacts, config, logger.history, logger.alignment_rows,
                      trial.model.state_dict())
        tracking.call(logger.finish, trial.status)
        tune.report({REPORT_EPOCH: trial.epoch, REPORT_STATUS: trial.status})
    except XmemError as error:
        # A user error (a missing dataset, images too small for the model) fails the same way
        # on every retry: end the trial failed now instead of spending max_failures retries.
        _end_failed(logger, f"{error}\n\n{traceback.format_exc()}", error_summary(error), ERROR_USER)
        tune.report({REPORT_STATUS: STATUS_FAILED})
    except BaseException as error:
        _end_failed(logger, traceback.format_exc(), error_summary(error), ERROR_CRASH)
        raise


def _end_failed(logger: TrialRunLogger, error_text: str, summary: str, kind: str) -> None:
    try:
        logger.fail(error_text, summary, kind)
    except Exception:  # the server may be the reason we are failing
        pass
