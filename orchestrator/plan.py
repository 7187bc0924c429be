"""The resume decision: what running (or rerunning) a sweep does with each trial.

For every trial of the spec, in this order (the first rule that applies wins):

1. **new**      - no MLflow run has its trial id: run it from scratch in a new run.
2. **skip**     - its run ended FINISHED with status finished or diverged: keep it, run nothing.
                  (A diverged trial is a result, never retried.)
3. **restart**  - ``--restart-failed`` was given and its run failed: start from epoch 0 (in a
                  new run that supersedes the old one as soon as the worker starts: one
                  attempt lineage per run, ``workers.mlflow_log``).
4. **resume**   - a complete checkpoint of it, written for one of its runs, exists in the
                  sweep's storage: continue from the newest (``orchestrator.checkpoints``);
                  the worker falls back to the older ones, in order, if it cannot load it.
5. **restart**  - otherwise (scheduled, interrupted or failed without a checkpoint): start from
                  epoch 0 (in the same run when it holds no metrics, else in a new one).

A trial whose newest checkpoint is torn or corrupt resumes from its newest complete one, or
starts over when none is left; the plan's lines name each such trial and say which.

An *interrupted* trial (Ctrl-C or SIGTERM on the driver: its run ended KILLED with
``xmem.status`` interrupted) never counts as failed, so ``--restart-failed`` leaves it to rule 4
or 5. A run still RUNNING (a driver killed, or one that exited at a second Ctrl-C before it
could mark its runs) is treated the same way: it resumes from its checkpoint.

Runs whose trial id is no longer in the spec (its ``defaults`` changed, or grid points were
removed) are left alone and reported: their results are never mixed with the new trials'.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

from orchestrator.expand import TrialPoint
from orchestrator.tracking.records import TrialRecord
from workers.contract import RESULT_STATUSES, RUN_FAILED, RUN_FINISHED, STATUS_FAILED, TAG_STATUS

if TYPE_CHECKING:  # pyarrow: the plan itself stays light
    from orchestrator.checkpoints import TrialCheckpoints


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
    if _has_result(state.run_status, state.xmem_status):
        return Action.SKIP
    # Only a failed run: an interrupted one (KILLED, xmem.status interrupted) or one a killed
    # driver left RUNNING resumes even under --restart-failed.
    failed = state.run_status == RUN_FAILED or state.xmem_status == STATUS_FAILED
    if restart_failed and failed:
        return Action.RESTART
    if state.checkpoint is not None:
        return Action.RESUME
    return Action.RESTART


def _has_result(run_status: str | None, xmem_status: str | None) -> bool:
    return run_status == RUN_FINISHED and xmem_status in RESULT_STATUSES


def ended_with_result(run: TrialRecord | None) -> bool:
    """Whether the run ended FINISHED as finished or diverged: the trial is done for good and
    needs no checkpoint."""
    return run is not None and _has_result(run.run_status, run.tags.get(TAG_STATUS))


@dataclass
class SweepPlan:
    """What this invocation does with each trial."""

    actions: dict[str, Action]           # trial id -> action
    to_run: list[TrialPoint]             # every trial not skipped, in spec order
    checkpoints: dict[str, str]          # trial id -> checkpoint to resume from (RESUME only)
    stale_runs: list[str]                # names of runs whose trial id is not in the spec
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    """RESUME: trial id -> its older complete checkpoints, newest first (the worker's next tries)."""
    start_epochs: dict[str, int] = field(default_factory=dict)
    """RESUME: trial id -> the epoch of the checkpoint it resumes from."""
    damage: list[str] = field(default_factory=list)
    """A line per trial to run whose newest checkpoint is torn or corrupt."""

    def describe(self) -> list[str]:
        """What the console says before the trials start (nothing for a new sweep)."""
        counts = {action: sum(a == action for a in self.actions.values()) for action in Action}
        if counts[Action.NEW] == len(self.actions):
            lines = []
        else:
            lines = [f"resuming: {counts[Action.SKIP]} finished (kept), {counts[Action.RESUME]} resumed "
                     f"from checkpoints, {counts[Action.RESTART]} restarted, {counts[Action.NEW]} new"]
        if self.stale_runs:
            shown = ", ".join(self.stale_runs[:5]) + (" ..." if len(self.stale_runs) > 5 else "")
            lines.append(f"note: {len(self.stale_runs)} run(s) in this experiment belong to trial configs "
                         f"that are no longer in the spec ({shown}); the spec's defaults or grid changed, "
                         "so those trials have new ids: the old runs are kept and not mixed with the new ones")
        return lines + self.damage

    @property
    def restarting(self) -> set[str]:
        """The trials that start over (their old checkpoints must go)."""
        return {tid for tid, action in self.actions.items() if action is Action.RESTART}


def plan_sweep(trials: Sequence[TrialPoint], runs: Mapping[str, TrialRecord],
               checkpoints: Mapping[str, TrialCheckpoints], restart_failed: bool) -> SweepPlan:
    """Apply ``decide`` to every trial, given the sweep's runs and usable checkpoints
    (``orchestrator.checkpoints.resume_candidates``) by trial id."""
    actions: dict[str, Action] = {}
    for trial in trials:
        run = runs.get(trial.trial_id)
        found = checkpoints.get(trial.trial_id)
        state = TrialState(run_status=run.run_status if run else None,
                           xmem_status=run.tags.get(TAG_STATUS) if run else None,
                           checkpoint=found.path if found is not None else None)
        actions[trial.trial_id] = decide(state, restart_failed)
    ids = set(actions)
    resumed = {tid: checkpoints[tid] for tid, a in actions.items() if a is Action.RESUME}
    return SweepPlan(
        actions=actions,
        to_run=[t for t in trials if actions[t.trial_id] is not Action.SKIP],
        checkpoints={tid: found.path for tid, found in resumed.items()},
        stale_runs=sorted(run.name for tid, run in runs.items() if tid not in ids),
        fallbacks={tid: found.fallbacks for tid, found in resumed.items()},
        start_epochs={tid: found.epoch for tid, found in resumed.items()},
        damage=[line for trial in trials
                if (line := _damage_line(trial, actions[trial.trial_id],
                                         checkpoints.get(trial.trial_id), restart_failed))],
    )


def _damage_line(trial: TrialPoint, action: Action, found: TrialCheckpoints | None,
                 restart_failed: bool) -> str | None:
    """What the console says of a trial whose newest checkpoint is torn or corrupt (None: it
    is not, or the trial does not run, or starts over because --restart-failed asked)."""
    damaged = found.newest_damaged if found is not None else None
    if damaged is None or action not in (Action.RESUME, Action.RESTART):
        return None
    head = (f"checkpoint damaged: trial {trial.name} ({trial.trial_id}): its newest checkpoint "
            f"(epoch {damaged.epoch}, {damaged.path}) is incomplete or corrupt")
    if action is Action.RESUME:
        return f"{head}; resuming from its newest complete one, at epoch {found.epoch}"
    if restart_failed and found.newest is not None:
        return None  # it starts over because it failed, damaged or not
    return f"{head}, and no complete one is left: starting over from epoch 0"
