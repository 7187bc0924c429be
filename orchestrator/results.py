"""A sweep's results as tables: what ``xmem export`` writes and ``xmem report`` plots.

Two pyarrow tables, built from what MLflow holds (``SweepTracker.trial_records`` and
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

Where the tracking server is (``tracking_uri_for``): ``--tracking-uri`` > the environment's
``MLFLOW_TRACKING_URI`` > the embedded store folder ``xmem sweep`` writes without a URI
(``--store``, default ./xmem-runs/mlflow): read directly (SQLite) by ``export``, served by a
local ``mlflow server`` while ``report`` runs, which logs artifacts (``open_tracking``).

It also holds the few groupings of these tables that both the claims and the figures use
(which config keys vary, the panels, seed means), so nothing is computed twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import statistics
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa

from orchestrator.sweep import DEFAULT_STORAGE, local_mlflow_root
from orchestrator.text_table import format_value  # noqa: F401  (figures and report use it from here)
from workers import metrics
from workers.config import TrialConfig
from workers.errors import XmemError
from workers.run_tags import TAG_ATTEMPTS, TAG_STATUS, STATUS_DIVERGED, STATUS_FINISHED

SWEEP, TRIAL_ID, RUN_ID, NAME, STATUS = "sweep", "trial_id", "run_id", "name", "status"
ATTEMPTS, EPOCHS_DONE = "attempts", "epochs_done"
TRIAL_COLUMNS = (SWEEP, TRIAL_ID, RUN_ID, NAME, STATUS)
CONFIG_KEYS = TrialConfig.keys()

# Trials whose numbers are results: finished, or diverged (recorded until the blow-up).
RESULT_STATUSES = (STATUS_FINISHED, STATUS_DIVERGED)
# Keys whose values are repetitions of one experiment: aggregated, never plotted apart.
REPLICATE_KEYS = ("seed", "data_seed")
SIGMA = "sigma"

_METRIC_ORDER = (metrics.EVAL_METRICS
                 + (metrics.ALIGN_REP, metrics.ALIGN_REP_TEST, metrics.ALIGN_GRAD_LOGITS,
                    metrics.ALIGN_GRAD)
                 + metrics.DYN_METRICS)


# --- where the results are ----------------------------------------------------------------

def tracking_uri_for(tracking_uri: str | None, store: str | None,
                     environ: Mapping[str, str] = os.environ) -> tuple[str | None, Path | None]:
    """(the tracking URI to read, or None) and (the store folder to serve, or None).

    ``--tracking-uri`` wins over ``MLFLOW_TRACKING_URI`` (empty = unset), which wins over
    the store folder (``store``, else the one ``xmem sweep`` uses by default:
    ./xmem-runs/mlflow).
    """
    if tracking_uri:
        return tracking_uri, None
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"], None
    root = Path(store).expanduser() if store else local_mlflow_root(DEFAULT_STORAGE)
    return None, root.resolve()


@contextlib.contextmanager
def open_tracking(tracking_uri: str | None, store: str | None, *,
                  artifacts: bool = True) -> Iterator[str]:
    """Yield a tracking URI to read from: the given one, else the store folder's.

    A store folder is served by a local ``mlflow server`` while the block runs, since its
    artifacts (``mlflow-artifacts:/`` URIs) are reachable only through that server. With
    ``artifacts=False`` (the caller reads runs, params and metrics only) the client reads
    the SQLite file directly instead (``sqlite:///<store>/mlflow.db``): no server to start,
    about 8 s less on a 2-core machine; safe beside a running sweep's server, SQLite
    serializes the two.

    Raises:
        XmemError: the store folder holds no MLflow store.
    """
    uri, root = tracking_uri_for(tracking_uri, store)
    if uri is not None:
        yield uri
        return
    from orchestrator.tracking import STORE_FILE, start_local_server

    if not (root / STORE_FILE).is_file():
        raise XmemError(f"no MLflow store at {root} (expected {root / STORE_FILE}).\n"
                        "Sweeps run without a tracking URI write to <storage>/mlflow: pass that "
                        "folder with --store, or the server with --tracking-uri "
                        "(or MLFLOW_TRACKING_URI)")
    if not artifacts:
        yield f"sqlite:///{root / STORE_FILE}"
        return
    server = start_local_server(root)
    try:
        yield server.uri
    finally:
        server.stop()


# --- the tables ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepResults:
    """What ``load_results`` read: the trials table and, when asked for, the history."""

    sweep: str
    trials: pa.Table
    history: pa.Table | None
    tracking_uri: str


def load_results(tracker: Any, with_history: bool) -> SweepResults:
    """Read the sweep behind ``tracker`` (an ``orchestrator.tracking.SweepTracker``).

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

    from orchestrator.tracking import SweepTracker

    path = Path(out)
    if not path.parent.is_dir():
        raise XmemError(f"cannot write {path}: the folder {path.parent} does not exist")
    with open_tracking(tracking_uri, store, artifacts=False) as uri:
        loaded = load_results(SweepTracker(uri, sweep), with_history=history)
    table = loaded.history if history else loaded.trials
    pq.write_table(table, path)
    return table


def trials_table(sweep: str, records: Sequence[Any]) -> pa.Table:
    """One row per trial run (see the module docstring). ``records`` are
    ``orchestrator.tracking.TrialRecord``s (anything with their attributes)."""
    names = metric_names(record.latest for record in records)
    columns = _trial_columns(sweep, records)
    columns[ATTEMPTS] = pa.array([_as_int(r.tags.get(TAG_ATTEMPTS)) for r in records], pa.int64())
    columns[EPOCHS_DONE] = pa.array([epochs_done(r) for r in records], pa.int64())
    columns.update(_config_columns(records, repeat=[1] * len(records)))
    for name in names:
        columns[name] = pa.array([r.latest[name][1] if name in r.latest else None
                                  for r in records], pa.float64())
    return pa.table(columns)


def history_table(sweep: str, records: Sequence[Any],
                  histories: Mapping[str, Mapping[str, Sequence[tuple[int, int, float]]]]
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
    columns[metrics.EPOCH] = pa.array([step for steps in per_trial for step in steps], pa.int64())
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
    layers = sorted(n for n in found - set(known) if n.startswith(metrics.ALIGN_GRAD_PREFIX))
    if layers:
        at = known.index(metrics.ALIGN_GRAD) + 1 if metrics.ALIGN_GRAD in known else len(known)
        known[at:at] = layers
    return known + sorted(found - set(known))


def config_types() -> dict[str, pa.DataType]:
    """Each trial config key's Arrow type, from TrialConfig's field annotations."""
    arrow = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    hints = typing.get_type_hints(TrialConfig)
    types = {}
    for f in dataclasses.fields(TrialConfig):
        kinds = [t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if t is not type(None)]
        types[f.name] = arrow[kinds[0]]
    return types


def param_value(text: str | None, arrow_type: pa.DataType) -> Any:
    """A param as ``orchestrator.tracking.config_params`` wrote it, back as its typed value:
    strings as they are (``null`` for a nullable string is None), the rest JSON. Text that
    does not parse to the key's type gives None."""
    if text is None:
        return None
    if pa.types.is_string(arrow_type):
        return None if text == "null" else text
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if value is None:
        return None
    if pa.types.is_boolean(arrow_type):
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if pa.types.is_integer(arrow_type):
        return value if isinstance(value, int) else None
    return float(value)


def _trial_columns(sweep: str, records: Sequence[Any], repeat: Sequence[int] | None = None
                   ) -> dict[str, pa.Array]:
    repeat = [1] * len(records) if repeat is None else repeat

    def column(values: list[Any]) -> pa.Array:
        return pa.array([v for v, n in zip(values, repeat) for _ in range(n)], pa.string())

    return {SWEEP: column([sweep] * len(records)),
            TRIAL_ID: column([r.trial_id for r in records]),
            RUN_ID: column([r.run_id for r in records]),
            NAME: column([r.name for r in records]),
            STATUS: column([trial_status(r.tags, r.run_status) for r in records])}


def _config_columns(records: Sequence[Any], repeat: Sequence[int]) -> dict[str, pa.Array]:
    """Every TrialConfig key (typed), then any other param as a string column (a run logged
    by another xmem version)."""
    types = config_types()
    extra = sorted({key for r in records for key in r.params} - set(types))
    types.update({key: pa.string() for key in extra})
    return {key: pa.array([param_value(r.params.get(key), arrow_type)
                           for r, n in zip(records, repeat) for _ in range(n)], arrow_type)
            for key, arrow_type in types.items()}


def epochs_done(record: Any) -> int | None:
    """The highest epoch any metric of the trial's run was logged at (None: nothing logged)."""
    return max((step for step, _ in record.latest.values()), default=None)


def trial_status(tags: Mapping[str, str], run_status: str) -> str:
    """``xmem.status``, else MLflow's run status in lower case (a run not yet started)."""
    return tags.get(TAG_STATUS) or run_status.lower()


def _as_int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# --- groupings shared by the claims and the figures -----------------------------------------

@dataclass(frozen=True)
class Summary:
    """A metric over the replicates (seeds) of one configuration."""

    mean: float
    spread: float
    """Sample standard deviation over the replicates; 0 for a single one."""
    n: int

    def text(self, percent: bool = False) -> str:
        """``0.943 ± 0.012 (n=2)``, or ``94.3% ± 1.2 (n=2)`` with ``percent``."""
        if percent:
            core = f"{self.mean:.1%}"
            return core + (f" ± {self.spread * 100:.1f} (n={self.n})" if self.n > 1 else "")
        return f"{self.mean:.3f}" + (f" ± {self.spread:.3f} (n={self.n})" if self.n > 1 else "")


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Mean and spread of the finite values; None when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return Summary(statistics.fmean(finite), spread, len(finite))


def result_rows(trials: pa.Table) -> list[dict[str, Any]]:
    """The trials whose numbers are results (finished or diverged), as dicts."""
    return [row for row in trials.to_pylist() if row[STATUS] in RESULT_STATUSES]


def varying_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config keys taking more than one value across ``rows``, in TrialConfig order."""
    return [key for key in CONFIG_KEYS
            if len({_hashable(row.get(key)) for row in rows}) > 1]


def sigma_linked_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Varying keys (besides sigma and the replicate keys) whose value sigma determines, as
    linked grid keys make them (``"sigma,temperature"``): they label sigma's values, they
    do not split the sweep into panels."""
    if len({row.get(SIGMA) for row in rows}) < 2:
        return []
    linked = []
    for key in varying_keys(rows):
        if key == SIGMA or key in REPLICATE_KEYS:
            continue
        seen: dict[Any, Any] = {}
        if all(seen.setdefault(row.get(SIGMA), _hashable(row.get(key))) == _hashable(row.get(key))
               for row in rows):
            linked.append(key)
    return linked


def panel_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The varying keys that split a sweep into groups of trials differing only in sigma
    (and seed): dataset, activation, loss, model, ..."""
    skip = {SIGMA, *REPLICATE_KEYS, *sigma_linked_keys(rows)}
    return [key for key in varying_keys(rows) if key not in skip]


def group_rows(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
               ) -> dict[tuple, list[Mapping[str, Any]]]:
    """``rows`` by their values of ``keys``, groups in order of first appearance."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(key) for key in keys), []).append(row)
    return groups


def group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``dataset=cifar10 · activation=sin``; ``all trials`` for no keys."""
    return " · ".join(f"{k}={format_value(v)}" for k, v in zip(keys, values)) or "all trials"


def by_sigma(rows: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[float, Summary]]:
    """(sigma, the metric's Summary over the replicates at that sigma), sigma ascending;
    trials with sigma null (glorot init) and sigmas without a value are left out."""
    found = []
    for (sigma,), members in group_rows([r for r in rows if r.get(SIGMA) is not None],
                                        [SIGMA]).items():
        summary = summarize(row.get(metric) for row in members)
        if summary is not None:
            found.append((sigma, summary))
    return sorted(found, key=lambda item: item[0])




def _hashable(value: Any) -> Any:
    return (type(value) is bool, value)
