"""The Ray Tune trainable: one xmem trial inside a Ray worker. The only worker module that imports ray.

What one call does, in order:
1. rebuild the ``TrialConfig`` sent by the driver; run on CUDA only when Ray gave this trial a GPU;
2. open the trial's MLflow run (created by the driver) through ``workers.mlflow_log``;
3. restore the latest Tune checkpoint when there is one (a retry or a resumed sweep);
4. train, logging each evaluated epoch to MLflow and reporting it to Tune, and save a
   checkpoint every ``checkpoint_every`` epochs (or adaptively, at about 5% of the time);
5. log the final artifacts and end the run FINISHED (finished or diverged), or FAILED with the
   error text before re-raising so that Tune can retry from the checkpoint.
"""

from __future__ import annotations

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

from workers.config import TrialConfig
from workers.mlflow_log import TrialRunLogger
from workers.run_tags import TAG_DEVICE, TAG_HOST, TAG_RAY_NODE
from workers.trial import Trial

CHECKPOINT_FILE = "trial_state.pt"
# With no checkpoint_every, checkpoint when the time since the last one is at least this
# many times what saving one costs: checkpointing then takes about 1/20 = 5% of the time.
ADAPTIVE_CHECKPOINT_RATIO = 20.0
MIN_SECONDS_BETWEEN_CHECKPOINTS = 5.0
# Metrics are sent to MLflow at most this often (and at every checkpoint and the end): one
# request costs ~40 ms on a busy server, too much to pay for every epoch.
SECONDS_BETWEEN_FLUSHES = 10.0


def trial_payload(config: TrialConfig, trial_id: str, name: str, run_id: str, tracking_uri: str) -> dict[str, Any]:
    """What the driver puts in Tune's param space for one trial (plain, picklable values)."""
    return {"trial": config.to_dict(), "trial_id": trial_id, "name": name,
            "run_id": run_id, "tracking_uri": tracking_uri}


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

    def due(self, epoch: int, final: bool) -> bool:
        if final:
            return False  # a finished trial is recorded in MLflow; no state is needed after it
        if self.every is not None:
            return epoch - self.last_epoch >= self.every
        waited = time.monotonic() - self.last_time
        return waited >= max(MIN_SECONDS_BETWEEN_CHECKPOINTS, ADAPTIVE_CHECKPOINT_RATIO * self.save_seconds)

    def saved(self, epoch: int, seconds: float) -> None:
        self.last_epoch, self.save_seconds, self.last_time = epoch, seconds, time.monotonic()


def _save_checkpoint(trial: Trial, logger: TrialRunLogger, scratch: Path) -> tune.Checkpoint:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    torch.save({"trial": trial.state_dict(), "history": logger.history,
                "alignment_rows": logger.alignment_rows, "run_id": logger.run_id},
               folder / CHECKPOINT_FILE)
    return tune.Checkpoint.from_directory(str(folder))


def _load_checkpoint(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)


def run_tune_trial(tune_config: dict[str, Any]) -> None:
    """Tune function trainable; ``tune_config["xmem"]`` is a ``trial_payload``."""
    payload = tune_config["xmem"]
    config = _device_for_this_worker(TrialConfig.from_mapping(payload["trial"], source="sweep trial"))
    logger = TrialRunLogger(payload["tracking_uri"], payload["run_id"])
    try:
        trial = Trial(config)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            saved = _load_checkpoint(checkpoint)
            trial.load_state_dict(saved["trial"])
            logger.history, logger.alignment_rows = saved["history"], saved["alignment_rows"]
        logger.start({TAG_DEVICE: _device_name(trial),
                      TAG_RAY_NODE: ray.get_runtime_context().get_node_id(),
                      TAG_HOST: socket.gethostname()})
        clock = _CheckpointClock(config.checkpoint_every)
        clock.last_epoch = trial.epoch
        last_flush = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="xmem-ckpt-") as scratch:
            for record in trial.run():
                logger.log_record(record)
                report = {**record.flat(), "xmem_status": trial.status}
                if clock.due(record.epoch, final=record.epoch >= config.epochs):
                    logger.flush()
                    started = time.monotonic()
                    saved_checkpoint = _save_checkpoint(trial, logger, Path(scratch))
                    tune.report(report, checkpoint=saved_checkpoint)  # Tune copies it to storage
                    shutil.rmtree(saved_checkpoint.path, ignore_errors=True)
                    clock.saved(record.epoch, time.monotonic() - started)
                    last_flush = time.monotonic()
                else:
                    tune.report(report)
                    if time.monotonic() - last_flush >= SECONDS_BETWEEN_FLUSHES:
                        logger.flush()
                        last_flush = time.monotonic()
        logger.flush()
        logger.log_final_artifacts(config, logger.history, logger.alignment_rows, trial.model.state_dict())
        logger.finish(trial.status)
        tune.report({"epoch": trial.epoch, "xmem_status": trial.status, "xmem_done": True})
    except BaseException:
        logger.fail(traceback.format_exc())
        raise
