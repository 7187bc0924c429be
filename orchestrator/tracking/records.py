"""A trial's MLflow run as plain data: what the driver reads back, with no MLflow entity.

``orchestrator.tracking.reader`` builds these; the plan, the tables, the status and the
results read them (and tests build them by hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from workers.contract import EVAL_METRICS, TAG_ERROR, TAG_ERROR_KIND, TAG_STATUS


# MLflow's system metrics (system/cpu_utilization_percentage, ...) are indexed by sample, not
# by epoch: their step says nothing about when in training they were taken.
SYSTEM_METRIC_PREFIX = "system/"


def is_epoch_metric(name: str) -> bool:
    """Whether the metric is logged per evaluated epoch (step = epoch): every metric of the
    trial's EpochRecords, not MLflow's ``system/*`` samples."""
    return not name.startswith(SYSTEM_METRIC_PREFIX)


class LastValue(NamedTuple):
    """A metric's latest logged value and the step (epoch) it was logged at."""

    value: float
    step: int


@dataclass(frozen=True)
class TrialRecord:
    """One trial's run as MLflow holds it, in plain Python values."""

    run_id: str
    name: str
    """The run's name (the trial's readable name)."""
    trial_id: str
    run_status: str
    """MLflow's run status: SCHEDULED, RUNNING, FINISHED, FAILED or KILLED."""
    tags: dict[str, str]
    params: dict[str, str]
    """Every trial config key, as ``orchestrator.tracking.params.config_params`` wrote it."""
    latest: dict[str, tuple[int, float]]
    """metric name -> (step, value) of its latest value (MLflow's latest: highest step);
    read it through ``last``."""

    def last(self, name: str) -> LastValue | None:
        """The metric's latest value and its step; None when it was never logged."""
        found = self.latest.get(name)
        return None if found is None else LastValue(found[1], found[0])

    def last_value(self, name: str) -> float | None:
        """The metric's latest value; None when it was never logged."""
        found = self.last(name)
        return None if found is None else found.value

    @property
    def status(self) -> str:
        """``xmem.status``, else MLflow's run status in lower case (a run not yet started)."""
        return self.tags.get(TAG_STATUS) or self.run_status.lower()

    @property
    def error(self) -> str | None:
        """A failed trial's error in one line (``xmem.error``); None otherwise."""
        return self.tags.get(TAG_ERROR)

    @property
    def error_kind(self) -> str | None:
        """``user`` (fix the input, then rerun) or ``crash`` (rerun to resume); None when the
        trial has not failed, or failed under an xmem that did not say."""
        return self.tags.get(TAG_ERROR_KIND)

    @property
    def epochs_done(self) -> int | None:
        """The highest epoch any metric of the run was logged at (None: nothing logged)."""
        return max((step for step, _ in self.latest.values()), default=None)

    @property
    def last_epoch(self) -> int | None:
        """The trial's last epoch: the highest step of its evaluation metrics
        (``contract.EVAL_METRICS``, logged at every evaluated epoch), else of any metric; None
        when nothing was logged. A diverged trial's is its last evaluated epoch before the
        blow-up. Alignment is measured at every trial's last epoch (``workers.trial.
        is_align_epoch``), so only an alignment that became undefined ends earlier."""
        steps = [self.latest[name][0] for name in EVAL_METRICS if name in self.latest]
        steps = steps or [step for name, (step, _) in self.latest.items() if is_epoch_metric(name)]
        return max(steps, default=None)

    def final(self, name: str) -> LastValue | None:
        """The metric's value at the trial's last epoch (``last_epoch``); None when it was
        never logged or last logged before (a stale value: ``is_stale``)."""
        found = self.last(name)
        if found is None or self.is_stale(name):
            return None
        return found

    def is_stale(self, name: str) -> bool:
        """Whether the metric's latest value was logged before the trial's last epoch (an
        alignment undefined from some epoch on, so not logged since); never for a metric not
        logged per epoch (``is_epoch_metric``)."""
        if not is_epoch_metric(name):
            return False
        found = self.last(name)
        last = self.last_epoch
        return found is not None and last is not None and found.step < last
