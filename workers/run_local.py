"""Run one trial in this process (no Ray, no MLflow): what ``xmem trial`` calls."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from workers import metrics
from workers.config import TrialConfig
from workers.trial import EpochRecord, Trial


def format_record(record: EpochRecord) -> str:
    """One human-readable line per evaluated epoch."""
    m = record.metrics
    line = (f"epoch {record.epoch:5d} | train loss {m[metrics.TRAIN_LOSS]:.4g} acc {m[metrics.TRAIN_ACC]:6.1%}"
            f" | test loss {m[metrics.TEST_LOSS]:.4g} acc {m[metrics.TEST_ACC]:6.1%}"
            f" (best {m[metrics.TEST_BEST_ACC]:6.1%})")
    if metrics.ALIGN_GRAD in m or metrics.ALIGN_REP in m:
        grad = m.get(metrics.ALIGN_GRAD)
        rep = m.get(metrics.ALIGN_REP)
        line += (f" | align grad {'-' if grad is None else f'{grad:.3f}'}"
                 f" rep {'-' if rep is None else f'{rep:.3f}'}")
    return line


def run_trial(config: TrialConfig, out: str | Path | None = None,
              echo: Callable[[str], None] = print) -> Trial:
    """Train ``config`` to the end, echoing a line per evaluated epoch.

    When ``out`` is given, writes one JSON object per evaluated epoch (``epoch`` plus every
    metric of that epoch) to it, flushed as it goes.
    """
    started = time.perf_counter()
    trial = Trial(config)
    echo(f"trial: {config.model}/{config.activation} sigma={config.sigma} loss={config.loss} "
         f"on {config.dataset} ({trial.data.x_train.shape[0]} train, {trial.data.x_test.shape[0]} test) "
         f"device={trial.device}")
    sink = open(out, "w") if out else None
    try:
        for record in trial.run():
            echo(format_record(record))
            if sink:
                sink.write(json.dumps(record.flat()) + "\n")
                sink.flush()
    finally:
        if sink:
            sink.close()
    elapsed = time.perf_counter() - started
    echo(f"status: {trial.status} after {trial.epoch} epochs, {elapsed:.1f} s "
         f"({trial.train_seconds:.1f} s in SGD steps)")
    return trial
