"""The resume decision: what rerunning a sweep does with each trial.

For every trial of the spec, in this order (the first rule that applies wins):

1. **new**      - no MLflow run has its trial id: run it from scratch in a new run.
2. **skip**     - its run ended FINISHED with status finished or diverged: keep it, run nothing.
                  (A diverged trial is a result, never retried.)
3. **restart**  - ``--restart-failed`` was given and its run failed: start from epoch 0 in the
                  same run (steps already logged are not logged again).
4. **resume**   - a checkpoint of it exists in the sweep's storage: continue from the latest.
5. **restart**  - otherwise (scheduled, interrupted or failed without a checkpoint): start from
                  epoch 0 in the same run.

Runs whose trial id is no longer in the spec (its ``defaults`` changed, or grid points were
removed) are left alone and reported: their results are never mixed with the new trials'.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from workers.run_tags import STATUS_DIVERGED, STATUS_FAILED, STATUS_FINISHED


class Action(str, enum.Enum):
    NEW = "new"
    SKIP = "skip"
    RESUME = "resume"
    RESTART = "restart"


@dataclass(frozen=True)
class TrialState:
    """What the tracker and the storage know about one trial."""

    run_status: str | None = None    # MLflow run status (FINISHED, FAILED, RUNNING, SCHEDULED, ...); None = no run
    xmem_status: str | None = None   # the run's xmem.status tag
    checkpoint: str | None = None    # latest checkpoint folder, if any


def decide(state: TrialState, restart_failed: bool = False) -> Action:
    """The action for one trial; see the module docstring for the order."""
    if state.run_status is None:
        return Action.NEW
    if state.run_status == "FINISHED" and state.xmem_status in (STATUS_FINISHED, STATUS_DIVERGED):
        return Action.SKIP
    failed = state.run_status == "FAILED" or state.xmem_status == STATUS_FAILED
    if restart_failed and failed:
        return Action.RESTART
    if state.checkpoint is not None:
        return Action.RESUME
    return Action.RESTART
