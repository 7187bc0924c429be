"""A sweep's results as tables: what ``xmem export`` writes and ``xmem report`` plots.

Two pyarrow tables, built from what MLflow holds (``SweepReader.trial_records`` and
``metric_histories``; this module never imports mlflow):

``trials`` (one row per trial run)::

    sweep, trial_id, run_id, name, status       string
    attempts, epochs_done                       int64 (null when not known)
    <every trial config key>                    typed as in TrialConfig: sigma float64,
                                                seed int64, shuffle_labels bool, dataset
                                                string, ...; null for a missing or null param
    <every metric name>                         float64: the metric's last logged value
                                                (highest step), null when never logged;
                                                NaN / inf as logged (a diverged loss)

``history`` (one row per trial and evaluated epoch)::

    sweep, trial_id, run_id, name, status, <config keys>   as above
    epoch                                       int64
    <every metric name>                         float64: the value logged at that epoch,
                                                null where not measured (alignment is
                                                measured on some epochs only)

``status`` is the trial's ``xmem.status`` tag (finished | diverged | failed | running), or
MLflow's run status in lower case for a run no worker has started (``scheduled``).
``epochs_done`` is the highest epoch any metric was logged at.

Where the tracking server is: ``orchestrator.settings.tracking_uri_for`` and
``orchestrator.tracking.server.open_tracking``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from orchestrator.tracking.params import config_types, param_value
from orchestrator.tracking.reader import MetricHistories, SweepReader
from orchestrator.tracking.records import TrialRecord
from workers import contract
from workers.contract import TAG_ATTEMPTS, tag_int
from workers.errors import XmemError

SWEEP, TRIAL_ID, RUN_ID, NAME, STATUS = "sweep", "trial_id", "run_id", "name", "status"
ATTEMPTS, EPOCHS_DONE = "attempts", "epochs_done"
TRIAL_COLUMNS = (SWEEP, TRIAL_ID, RUN_ID, NAME, STATUS)

_METRIC_ORDER = contract.EVAL_METRICS + contract.ALIGN_METRICS + contract.DYN_METRICS


@dataclass(frozen=True)
class SweepResults:
    """What ``load_results`` read: the trials table and, when asked for, the history."""

    sweep: str
    trials: pa.Table
    history: pa.Table | None
    tracking_uri: str


def load_results(tracker: SweepReader, with_history: bool) -> SweepResults:
    """Read the sweep behind ``tracker``.

    Raises:
        XmemError: the sweep does not exist (listing the ones that do), or the server fails.
    """
    tracker.open_existing()
    records = tracker.trial_records()
    history = None
    if with_history:
        history = history_table(tracker.sweep_name, records, tracker.metric_histories(records))
    return SweepResults(tracker.sweep_name, trials_table(tracker.sweep_name, records), history,
                        tracker.tracking_uri)


def export_results(sweep: str, out: str | os.PathLike, *, history: bool = False,
                   tracking_uri: str | None = None, store: str | None = None) -> pa.Table:
    """Write the sweep's trials table (or, with ``history``, its history table) to the
    Parquet file ``out``; return the table.

    Raises:
        XmemError: no such sweep (listing the ones that exist), no store, server trouble.
    """
    import pyarrow.parquet as pq

    from orchestrator.tracking.server import open_tracking

    path = Path(out)
    if not path.parent.is_dir():
        raise XmemError(f"cannot write {path}: the folder {path.parent} does not exist")
    with open_tracking(tracking_uri, store, artifacts=False) as uri:
        loaded = load_results(SweepReader(uri, sweep), with_history=history)
    table = loaded.history if history else loaded.trials
    pq.write_table(table, path)
    return table


def trials_table(sweep: str, records: Sequence[TrialRecord]) -> pa.Table:
    """One row per trial run (see the module docstring)."""
    names = metric_names(record.latest for record in records)
    columns = _trial_columns(sweep, records)
    columns[ATTEMPTS] = pa.array([tag_int(r.tags, TAG_ATTEMPTS) for r in records], pa.int64())
    columns[EPOCHS_DONE] = pa.array([r.epochs_done for r in records], pa.int64())
    columns.update(_config_columns(records, repeat=[1] * len(records)))
    for name in names:
        columns[name] = pa.array([r.last_value(name) for r in records], pa.float64())
    return pa.table(columns)


def history_table(sweep: str, records: Sequence[TrialRecord], histories: MetricHistories
                  ) -> pa.Table:
    """One row per trial and evaluated epoch (any metric logged at that step), in trial order
    then epoch order. ``histories``: run_id -> metric -> [(step, timestamp_ms, value)]; of a
    step logged more than once, the latest timestamp wins."""
    names = metric_names(record.latest for record in records)
    per_trial: list[dict[int, dict[str, float]]] = []
    for record in records:
        by_step: dict[int, dict[str, tuple[int, float]]] = {}
        for name, points in histories.get(record.run_id, {}).items():
            for step, timestamp, value in points:
                cell = by_step.setdefault(step, {})
                if name not in cell or timestamp >= cell[name][0]:
                    cell[name] = (timestamp, value)
        per_trial.append({step: {name: value for name, (_, value) in cell.items()}
                          for step, cell in sorted(by_step.items())})
    repeat = [len(steps) for steps in per_trial]
    columns = _trial_columns(sweep, records, repeat)
    columns.update(_config_columns(records, repeat))
    columns[contract.EPOCH] = pa.array([step for steps in per_trial for step in steps], pa.int64())
    for name in names:
        columns[name] = pa.array([values.get(name) for steps in per_trial
                                  for values in steps.values()], pa.float64())
    return pa.table(columns)


def metric_names(latest: Iterable[Mapping[str, Any]]) -> list[str]:
    """Metric names in a fixed order: evaluation, alignment (per-layer gradient alignment
    sorted after align/grad), dynamics, then any other name sorted."""
    found: set[str] = set()
    for names in latest:
        found.update(names)
    known = [name for name in _METRIC_ORDER if name in found]
    layers = sorted(n for n in found - set(known) if n.startswith(contract.ALIGN_GRAD_PREFIX))
    if layers:
        at = known.index(contract.ALIGN_GRAD) + 1 if contract.ALIGN_GRAD in known else len(known)
        known[at:at] = layers
    return known + sorted(found - set(known))


def _trial_columns(sweep: str, records: Sequence[TrialRecord], repeat: Sequence[int] | None = None
                   ) -> dict[str, pa.Array]:
    repeat = [1] * len(records) if repeat is None else repeat

    def column(values: list[Any]) -> pa.Array:
        return pa.array([v for v, n in zip(values, repeat) for _ in range(n)], pa.string())

    return {SWEEP: column([sweep] * len(records)),
            TRIAL_ID: column([r.trial_id for r in records]),
            RUN_ID: column([r.run_id for r in records]),
            NAME: column([r.name for r in records]),
            STATUS: column([r.status for r in records])}


def _config_columns(records: Sequence[TrialRecord], repeat: Sequence[int]) -> dict[str, pa.Array]:
    """Every TrialConfig key (typed), then any other param as a string column (a run logged
    by another xmem version)."""
    types = config_types()
    extra = sorted({key for r in records for key in r.params} - set(types))
    types.update({key: pa.string() for key in extra})
    return {key: pa.array([param_value(r.params.get(key), arrow_type)
                           for r, n in zip(records, repeat) for _ in range(n)], arrow_type)
            for key, arrow_type in types.items()}
