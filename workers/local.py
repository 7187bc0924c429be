"""Run one trial in this process (no Ray, no MLflow): what ``xmem trial`` calls."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, TextIO

from workers import contract
from workers.config import TrialConfig
from workers.errors import XmemError
from workers.trial import EpochRecord, Trial


def format_record(record: EpochRecord) -> str:
    """One human-readable line per evaluated epoch."""
    m = record.metrics
    line = (f"epoch {record.epoch:5d} | train loss {m[contract.TRAIN_LOSS]:.4g} acc {m[contract.TRAIN_ACC]:6.1%}"
            f" | test loss {m[contract.TEST_LOSS]:.4g} acc {m[contract.TEST_ACC]:6.1%}"
            f" (best {m[contract.TEST_BEST_ACC]:6.1%})")
    if contract.ALIGN_GRAD in m or contract.ALIGN_REP in m:
        grad = m.get(contract.ALIGN_GRAD)
        rep = m.get(contract.ALIGN_REP)
        line += (f" | align grad {'-' if grad is None else f'{grad:.3f}'}"
                 f" rep {'-' if rep is None else f'{rep:.3f}'}")
    return line


def run_trial(config: TrialConfig, out: str | Path | None = None,
              echo: Callable[[str], None] = print) -> Trial:
    """Train ``config`` to the end, echoing a line per evaluated epoch.

    When ``out`` is given, writes one JSON object per evaluated epoch (``epoch`` plus every
    metric of that epoch) to it, flushed as it goes.

    Raises:
        XmemError: ``out`` cannot be written (checked before any data is loaded).
    """
    started = time.perf_counter()
    if out:
        _check_writable(Path(out))
    trial = Trial(config)
    echo(f"trial: {config.model}/{config.activation} sigma={config.sigma} loss={config.loss} "
         f"on {config.dataset} ({trial.data.x_train.shape[0]} train, {trial.data.x_test.shape[0]} test) "
         f"device={trial.device}")
    sink = _open_output(Path(out)) if out else None
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


def _check_writable(path: Path) -> None:
    """Raise ``XmemError`` when ``path`` cannot be written as a file; creates nothing.

    Catches a missing folder, a folder in the file's place and permissions up front; the
    open itself can still fail (``_open_output`` reports that the same way).
    """
    folder = path.parent
    if path.is_dir():
        raise XmemError(f"--out {path}: is a folder; pass a file path, e.g. {path / 'metrics.jsonl'}")
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise XmemError(f"--out {path}: {folder} {problem}; create the folder "
                        f"(mkdir -p {folder}) or pass a path in an existing folder")
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise XmemError(f"--out {path}: {target} is not writable; pass a path you can write to")


def _open_output(path: Path) -> TextIO:
    try:
        return open(path, "w")
    except OSError as error:
        raise XmemError(f"--out {path}: cannot open it for writing ({error.strerror}); pass "
                        "a path you can write to") from None
