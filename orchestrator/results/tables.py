"""A sweep's results as tables: what ``xmem export`` writes and ``xmem report`` plots.

Two pyarrow tables, built from what MLflow holds (``SweepReader.trial_records`` and
``metric_histories``; this module never imports mlflow):

``trials`` (one row per trial run)::

    sweep, trial_id, run_id, name, status       string
    in_spec                                     bool: the trial id is in the spec the sweep
                                                last ran (false: a stale id, only with
                                                ``include_stale``); null when that spec
                                                could not be read
    attempts, epochs_done                       int64 (null when not known)
    <every trial config key>                    typed as in TrialConfig: sigma float64,
                                                seed int64, shuffle_labels bool, dataset
                                                string, ...; null for a missing or null param
    <every metric name>                         float64: the metric's last logged value
                                                (highest step), null when never logged;
                                                NaN / inf as logged (a diverged loss)
    <every metric name>@epoch                   int64: the step (epoch) of that value;
                                                not for MLflow's system/* metrics (indexed
                                                by sample, not epoch; never stale)
    stale_metrics                               list<string>: the metrics whose value is
                                                from before the trial's last epoch (not a
                                                final value), in column order; empty if none

``history`` (one row per trial and evaluated epoch)::

    sweep, trial_id, run_id, name, status, in_spec, <config keys>   as above
    epoch                                       int64
    <every metric name>                         float64: the value logged at that epoch,
                                                null where not measured (alignment is
                                                measured on some epochs only)

``status`` is the trial's ``xmem.status`` tag (finished | diverged | failed | running), or
MLflow's run status in lower case for a run no worker has started (``scheduled``).
``epochs_done`` is the trial's last epoch (``TrialRecord.last_epoch``): the highest step of
its evaluation metrics, which are logged at every evaluated epoch; for a diverged trial the
last evaluated epoch before the blow-up. A trial's *final* value of a metric is its value at
that epoch. Alignment is measured at every trial's last epoch, so a metric's value is from an
earlier epoch only when it stopped being logged (an alignment that became undefined, as with
the hinge loss once every margin is met): the trials table keeps that value, with its step in
``<metric>@epoch`` and its name in ``stale_metrics``; the report marks it, and the claims
and figures treat it as missing (``grouping.finals``).

Stale trial ids: a run whose trial id is not among the trials of the spec the sweep last ran
(its parent run's ``spec.yaml``: the defaults or the grid changed since that run was made) is
left out of both tables unless ``include_stale``; ``SweepResults.stale`` says how many.

Where the tracking server is: ``orchestrator.settings.tracking_uri_for`` and
``orchestrator.tracking.server.open_tracking``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from orchestrator.tracking.params import config_types, param_value
from orchestrator.tracking.reader import MetricHistories, SweepReader, spec_file
from orchestrator.tracking.records import TrialRecord, is_epoch_metric
from workers import contract
from workers.contract import TAG_ATTEMPTS, tag_int
from workers.errors import ConfigError, XmemError, first_line

SWEEP, TRIAL_ID, RUN_ID, NAME, STATUS = "sweep", "trial_id", "run_id", "name", "status"
IN_SPEC = "in_spec"
ATTEMPTS, EPOCHS_DONE = "attempts", "epochs_done"
STALE_METRICS = "stale_metrics"
TRIAL_COLUMNS = (SWEEP, TRIAL_ID, RUN_ID, NAME, STATUS, IN_SPEC)
STEP_SUFFIX = "@epoch"   # test/acc@epoch: the epoch of the value in test/acc
INCLUDE_STALE_FLAG = "--include-stale"

_METRIC_ORDER = contract.EVAL_METRICS + contract.ALIGN_METRICS + contract.DYN_METRICS


def step_column(metric: str) -> str:
    """The column holding the step (epoch) of ``metric``'s value: ``test/acc@epoch``."""
    return metric + STEP_SUFFIX


@dataclass(frozen=True)
class StaleRuns:
    """The sweep's runs whose trial id is not in the spec it last ran."""

    names: list[str] = field(default_factory=list)
    """The stale runs' names, in run order."""
    included: bool = False
    """They are in the tables (``include_stale``); else they were left out."""
    unknown: str = ""
    """Why stale runs could not be told apart (every run was read); empty when they could."""

    def note(self) -> str:
        """What the output says about them; empty when there are none to mention."""
        if self.unknown:
            return f"note: stale trial ids not checked ({self.unknown}); every run was read"
        if not self.names:
            return ""
        shown = ", ".join(self.names[:5]) + (" ..." if len(self.names) > 5 else "")
        what = (f"{len(self.names)} run(s) of trial ids no longer in the sweep's spec (its "
                f"defaults or grid changed since they ran: {shown})")
        if self.included:
            return f"included {what}; they have {IN_SPEC} = false"
        return f"left out {what}; include them with {INCLUDE_STALE_FLAG}"


@dataclass(frozen=True)
class SweepResults:
    """What ``load_results`` read: the trials table and, when asked for, the history."""

    sweep: str
    trials: pa.Table
    history: pa.Table | None
    tracking_uri: str
    stale: StaleRuns = field(default_factory=StaleRuns)


def load_results(tracker: SweepReader, with_history: bool, include_stale: bool = False
                 ) -> SweepResults:
    """Read the sweep behind ``tracker``; runs of stale trial ids only with ``include_stale``.

    Raises:
        XmemError: the sweep does not exist (listing the ones that do), or the server fails.
    """
    tracker.open_existing()
    records = tracker.trial_records()
    current, unknown = spec_trial_ids(tracker)
    in_spec = None if current is None else {r.run_id: r.trial_id in current for r in records}
    stale = [r.name for r in records if in_spec is not None and not in_spec[r.run_id]]
    if not include_stale and in_spec is not None:
        records = [r for r in records if in_spec[r.run_id]]
    history = None
    if with_history:
        history = history_table(tracker.sweep_name, records, tracker.metric_histories(records),
                                in_spec)
    return SweepResults(tracker.sweep_name, trials_table(tracker.sweep_name, records, in_spec),
                        history, tracker.tracking_uri, StaleRuns(stale, include_stale, unknown))


def spec_trial_ids(tracker: SweepReader) -> tuple[set[str] | None, str]:
    """(the trial ids of the spec the sweep last ran, ""), or (None, why they are unknown):
    no parent run or spec.yaml (a sweep not run by ``xmem sweep``), a spec.yaml that cannot
    be read, or a spec that no longer loads."""
    from orchestrator.expand import expand_trials
    from orchestrator.spec import load_spec

    with tempfile.TemporaryDirectory(prefix="xmem-spec-") as folder:
        try:
            path = spec_file(tracker, folder, _served_artifacts(tracker.tracking_uri))
        except XmemError as error:   # the runs were read: an unreadable spec costs only this
            return None, f"its {contract.SPEC_ARTIFACT} cannot be read: {first_line(str(error))}"
        if path is None:
            return None, f"the sweep's parent run holds no {contract.SPEC_ARTIFACT}"
        try:
            return {trial.trial_id for trial in expand_trials(load_spec(path))}, ""
        except ConfigError as error:   # its problems, not the temporary copy's path
            problem = error.problems[0] if error.problems else first_line(str(error))
            return None, f"its {contract.SPEC_ARTIFACT} does not load: {problem}"
        except XmemError as error:
            return None, f"its {contract.SPEC_ARTIFACT} does not load: {first_line(str(error))}"


def _served_artifacts(tracking_uri: str) -> Path | None:
    """For a store read through its SQLite file (``open_tracking(..., artifacts=False)``), the
    folder its server serves artifacts from; None for any other tracking URI."""
    from orchestrator.tracking.server import ARTIFACTS_DIR, STORE_FILE

    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or not tracking_uri.endswith(STORE_FILE):
        return None
    return Path(tracking_uri[len(prefix):]).parent / ARTIFACTS_DIR


def export_results(sweep: str, out: str | os.PathLike, *, history: bool = False,
                   tracking_uri: str | None = None, store: str | None = None,
                   include_stale: bool = False) -> SweepResults:
    """Write the sweep's trials table (or, with ``history``, its history table) to the
    Parquet file ``out``; return what was read. Runs of stale trial ids are left out unless
    ``include_stale``.

    Raises:
        XmemError: no such sweep (listing the ones that exist), no store, server trouble.
    """
    import pyarrow.parquet as pq

    from orchestrator.tracking.server import open_tracking

    path = Path(out)
    if not path.parent.is_dir():
        raise XmemError(f"cannot write {path}: the folder {path.parent} does not exist")
    with open_tracking(tracking_uri, store, artifacts=False) as uri:
        loaded = load_results(SweepReader(uri, sweep), with_history=history,
                              include_stale=include_stale)
    table = loaded.history if history else loaded.trials
    pq.write_table(table, path)
    return loaded


def trials_table(sweep: str, records: Sequence[TrialRecord],
                 in_spec: Mapping[str, bool] | None = None) -> pa.Table:
    """One row per trial run (see the module docstring). ``in_spec``: run_id -> whether its
    trial id is in the sweep's spec (None: not known)."""
    names = metric_names(record.latest for record in records)
    columns = _trial_columns(sweep, records, in_spec=in_spec)
    columns[ATTEMPTS] = pa.array([tag_int(r.tags, TAG_ATTEMPTS) for r in records], pa.int64())
    columns[EPOCHS_DONE] = pa.array([r.last_epoch for r in records], pa.int64())
    columns.update(_config_columns(records, repeat=[1] * len(records)))
    for name in names:
        columns[name] = pa.array([r.last_value(name) for r in records], pa.float64())
    for name in filter(is_epoch_metric, names):
        columns[step_column(name)] = pa.array([_step(r, name) for r in records], pa.int64())
    columns[STALE_METRICS] = pa.array([[n for n in names if r.is_stale(n)] for r in records],
                                      pa.list_(pa.string()))
    return pa.table(columns)


def _step(record: TrialRecord, name: str) -> int | None:
    found = record.last(name)
    return None if found is None else found.step


def history_table(sweep: str, records: Sequence[TrialRecord], histories: MetricHistories,
                  in_spec: Mapping[str, bool] | None = None) -> pa.Table:
    """One row per trial and evaluated epoch (any metric logged at that step), in trial order
    then epoch order. ``histories``: run_id -> metric -> [(step, timestamp_ms, value)]; of a
    step logged more than once, the latest timestamp wins. ``in_spec``: as ``trials_table``."""
    # MLflow's system/* metrics are indexed by sample, not epoch: they have no place here.
    names = [name for name in metric_names(record.latest for record in records) if is_epoch_metric(name)]
    per_trial: list[dict[int, dict[str, float]]] = []
    for record in records:
        by_step: dict[int, dict[str, tuple[int, float]]] = {}
        for name, points in histories.get(record.run_id, {}).items():
            if not is_epoch_metric(name):
                continue
            for step, timestamp, value in points:
                cell = by_step.setdefault(step, {})
                if name not in cell or timestamp >= cell[name][0]:
                    cell[name] = (timestamp, value)
        per_trial.append({step: {name: value for name, (_, value) in cell.items()}
                          for step, cell in sorted(by_step.items())})
    repeat = [len(steps) for steps in per_trial]
    columns = _trial_columns(sweep, records, repeat, in_spec)
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


def _trial_columns(sweep: str, records: Sequence[TrialRecord], repeat: Sequence[int] | None = None,
                   in_spec: Mapping[str, bool] | None = None) -> dict[str, pa.Array]:
    repeat = [1] * len(records) if repeat is None else repeat

    def column(values: list[Any], arrow_type: pa.DataType = pa.string()) -> pa.Array:
        return pa.array([v for v, n in zip(values, repeat) for _ in range(n)], arrow_type)

    return {SWEEP: column([sweep] * len(records)),
            TRIAL_ID: column([r.trial_id for r in records]),
            RUN_ID: column([r.run_id for r in records]),
            NAME: column([r.name for r in records]),
            STATUS: column([r.status for r in records]),
            IN_SPEC: column([None if in_spec is None else in_spec.get(r.run_id) for r in records],
                            pa.bool_())}


def _config_columns(records: Sequence[TrialRecord], repeat: Sequence[int]) -> dict[str, pa.Array]:
    """Every TrialConfig key (typed), then any other param as a string column (a run logged
    by another xmem version)."""
    types = config_types()
    extra = sorted({key for r in records for key in r.params} - set(types))
    types.update({key: pa.string() for key in extra})
    return {key: pa.array([param_value(r.params.get(key), arrow_type)
                           for r, n in zip(records, repeat) for _ in range(n)], arrow_type)
            for key, arrow_type in types.items()}
