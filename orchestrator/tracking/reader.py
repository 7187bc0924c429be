"""Reading one sweep's runs back from MLflow, as plain data (no MLflow entity leaves here).

``SweepReader`` finds the sweep's experiment by name and its runs by their ``xmem.*`` tags;
``xmem status``, ``export``, ``report`` and the resume plan use it. Reads never create
anything, and they learn within seconds that a server is not there (``READ_CLIENT_ENV``).
``orchestrator.tracking.writer.SweepTracker`` extends it with what a running sweep writes.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, NamedTuple

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from orchestrator.tracking import runs_view
from orchestrator.tracking.records import TrialRecord, is_epoch_metric
from workers.contract import (ROLE_PARENT, ROLE_TRIAL, SPEC_ARTIFACT, TAG_ROLE, TAG_SUPERSEDED_BY,
                              TAG_SUPERSEDES, TAG_SWEEP, TAG_TRIAL_ID)
from workers.env_defaults import env_defaults
from workers.errors import XmemError

SEARCH_PAGE = 1000  # runs per search request (the server's maximum)
# A read of an existing sweep should learn within seconds that the server is not there
# (MLflow's default is 7 retries with backoff, about 4 minutes); a value the user set wins.
READ_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
HISTORY_THREADS = 8  # parallel metric-history requests (each a small, latency-bound GET)

MetricHistories = dict[str, dict[str, list[tuple[int, int, float]]]]
"""run_id -> metric name -> every logged (step, timestamp_ms, value)."""


class SweepReader:
    """One sweep's experiment and runs on a tracking server, read by name and tags."""

    def __init__(self, tracking_uri: str, sweep_name: str):
        self.tracking_uri = tracking_uri
        self.sweep_name = sweep_name
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id: str | None = None
        self.experiment_tags: dict[str, str] = {}
        """The experiment's tags, as read when it was opened or created."""
        self.parent_run_id: str | None = None

    def open_existing(self) -> str:
        """The id of the sweep's experiment, which must exist (read commands create nothing).

        Raises:
            XmemError: no active experiment of that name (the message lists the sweeps that
                exist), or the server cannot be reached.
        """
        with read_client_env(), server_errors(self.tracking_uri):
            experiment = self.client.get_experiment_by_name(self.sweep_name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            existing = sweep_names(self.tracking_uri)
            listing = (f"sweeps there: {', '.join(existing)}" if existing
                       else "there are no sweeps there yet (run one: xmem sweep SPEC.yaml)")
            raise XmemError(f"no sweep named '{self.sweep_name}' on {self.tracking_uri}; {listing}")
        self.experiment_id = experiment.experiment_id
        self.experiment_tags = dict(experiment.tags)
        return self.experiment_id

    def has_trials_view(self) -> bool:
        """Whether the experiment carries xmem's trials view (sweeps of xmem before it do not)."""
        return runs_view.TRIALS_VIEW_TAG in self.experiment_tags

    def browse_target(self, *, store: str | None = None) -> tuple[str | None, str]:
        """Where to look at the sweep's trials in the MLflow UI (``runs_view.browse_target``):
        the link on this server, or for ``store`` (read through a temporary server or its
        SQLite file) ``xmem ui`` and the link it will serve."""
        return runs_view.browse_target(self._experiment(), self.has_trials_view(),
                                       server_uri=None if store else self.tracking_uri,
                                       store=store, tracking_uri=self.tracking_uri)

    def browse_line(self, *, store: str | None = None) -> str:
        """``browse_target`` as the line xmem prints (``Browse the runs: ...``)."""
        return runs_view.browse_line(self._experiment(), self.has_trials_view(),
                                     server_uri=None if store else self.tracking_uri,
                                     store=store, tracking_uri=self.tracking_uri)

    def trial_runs(self) -> dict[str, TrialRecord]:
        """trial_id -> its run as plain data (active runs only), from one paginated search."""
        return {run.data.tags[TAG_TRIAL_ID]: _trial_record(run) for run in self._trial_run_list()}

    def run_ids_by_trial(self) -> dict[str, set[str]]:
        """trial id -> the ids of every active run of that trial: its current run and any
        older attempt's that still exists, whatever its other tags (a superseded run too).
        A checkpoint counts only while its run is one of these (``orchestrator.checkpoints``).
        """
        with read_client_env(), server_errors(self.tracking_uri):
            return _run_ids_by_trial(self._all_trial_runs())

    def trial_runs_and_run_ids(self) -> tuple[dict[str, TrialRecord], dict[str, set[str]]]:
        """``trial_runs()`` and ``run_ids_by_trial()`` from one search (the resume plan needs
        both)."""
        with read_client_env(), server_errors(self.tracking_uri):
            runs = self._all_trial_runs()
        return ({run.data.tags[TAG_TRIAL_ID]: _trial_record(run) for run in current_runs(runs)},
                _run_ids_by_trial(runs))

    def trial_records(self) -> list[TrialRecord]:
        """Every trial run of the sweep, in the order the runs were created (the spec's).

        Raises:
            XmemError: as ``open_existing`` (a read never creates the experiment).
        """
        with read_client_env(), server_errors(self.tracking_uri):
            runs = self._trial_run_list()
        runs.sort(key=lambda run: (run.info.start_time or 0, run.info.run_name or ""))
        return [_trial_record(run) for run in runs]

    def metric_histories(self, records: Iterable[TrialRecord]) -> MetricHistories:
        """Every logged value of every per-epoch metric of ``records``' runs (MLflow's
        ``system/*`` samples are left out).

        One request per (run, metric) for the metrics each run has, ``HISTORY_THREADS`` at
        a time. A step logged twice (runs of xmem before one attempt lineage per run) appears
        twice; the caller picks the latest.
        """
        jobs = [(record.run_id, key) for record in records for key in record.latest
                if is_epoch_metric(key)]

        def fetch(job: tuple[str, str]) -> list[tuple[int, int, float]]:
            return [(int(m.step), int(m.timestamp), float(m.value))
                    for m in self.client.get_metric_history(*job)]

        histories: MetricHistories = {}
        with read_client_env(), server_errors(self.tracking_uri), \
                ThreadPoolExecutor(max_workers=HISTORY_THREADS) as pool:
            for (run_id, key), points in zip(jobs, pool.map(fetch, jobs)):
                histories.setdefault(run_id, {})[key] = points
        return histories

    def find_parent_run_id(self) -> str:
        """The sweep's parent run (the oldest, if two drivers raced).

        Raises:
            XmemError: the experiment has no parent run (it was not made by ``xmem sweep``).
        """
        if self.parent_run_id is None:
            with read_client_env(), server_errors(self.tracking_uri):
                found = self._parent_runs()
            if not found:
                raise XmemError(f"sweep '{self.sweep_name}' on {self.tracking_uri} has no parent "
                                f"run (tag {TAG_ROLE}={ROLE_PARENT}); was it made by xmem sweep?")
            self.parent_run_id = found[0].info.run_id
        return self.parent_run_id

    def parent_tags(self) -> dict[str, str]:
        """The tags of the sweep's parent run (spec path, storage, ...)."""
        with read_client_env(), server_errors(self.tracking_uri):
            return dict(self.client.get_run(self.find_parent_run_id()).data.tags)

    def download_spec(self, folder: str | os.PathLike) -> str:
        """Download the parent run's ``spec.yaml`` into ``folder``; return its path."""
        with read_client_env(), server_errors(self.tracking_uri):
            return self.client.download_artifacts(self.find_parent_run_id(), SPEC_ARTIFACT,
                                                  str(folder))

    # --- internals ----------------------------------------------------------------------
    def _experiment(self) -> str:
        """The experiment's id; a read requires the experiment to exist."""
        return self.experiment_id if self.experiment_id is not None else self.open_existing()

    def _parent_runs(self) -> list[Run]:
        """Active parent runs, oldest first (more than one only after a race of two drivers)."""
        return self._search(f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'", order_by=["start_time ASC"])

    def _trial_run_list(self) -> list[Run]:
        """The sweep's current trial runs: one per trial id, superseded runs left out
        (``current_runs``)."""
        return current_runs(self._all_trial_runs())

    def _all_trial_runs(self) -> list[Run]:
        """Every active trial run, superseded ones included."""
        return [run for run in self._search(f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'")
                if TAG_TRIAL_ID in run.data.tags]

    def _search(self, filter_string: str, order_by: list[str] | None = None) -> list[Run]:
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([self._experiment()], filter_string=filter_string,
                                           run_view_type=ViewType.ACTIVE_ONLY,
                                           max_results=SEARCH_PAGE, order_by=order_by,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs


def current_runs(runs: list[Run]) -> list[Run]:
    """``runs`` less those a later attempt of their trial superseded: tagged
    ``xmem.superseded_by``, or named by another run's ``xmem.supersedes`` (its attempt died
    between the two writes). Each run then holds one attempt lineage (``workers.mlflow_log``)."""
    replaced = {run.data.tags[TAG_SUPERSEDES] for run in runs if TAG_SUPERSEDES in run.data.tags}
    return [run for run in runs
            if TAG_SUPERSEDED_BY not in run.data.tags and run.info.run_id not in replaced]


def _run_ids_by_trial(runs: list[Run]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for run in runs:
        found.setdefault(run.data.tags[TAG_TRIAL_ID], set()).add(run.info.run_id)
    return found


def _trial_record(run: Run) -> TrialRecord:
    # RunData.metrics keeps only the values; its proto keeps each latest value's step.
    latest = {m.key: (int(m.step), float(m.value)) for m in run.data.to_proto().metrics}
    return TrialRecord(run_id=run.info.run_id, name=run.info.run_name or "",
                       trial_id=run.data.tags[TAG_TRIAL_ID], run_status=run.info.status,
                       tags=dict(run.data.tags), params=dict(run.data.params), latest=latest)


def sweep_names(tracking_uri: str) -> list[str]:
    """Names of the active experiments on ``tracking_uri`` that ``xmem sweep`` made (tagged
    ``xmem.sweep``), sorted.

    Raises:
        XmemError: the server cannot be reached or answers with an error.
    """
    return [sweep.name for sweep in sweep_experiments(tracking_uri)]


class SweepExperiment(NamedTuple):
    """A sweep's experiment, as ``xmem ui`` lists it."""

    name: str
    experiment_id: str
    has_trials_view: bool
    """It carries xmem's trials view (``runs_view``; sweeps of older xmem versions do not)."""


def sweep_experiments(tracking_uri: str) -> list[SweepExperiment]:
    """The active experiments on ``tracking_uri`` that ``xmem sweep`` made, sorted by name.

    Raises:
        XmemError: the server cannot be reached or answers with an error.
    """
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found: list[SweepExperiment] = []
    token = None
    with read_client_env(), server_errors(tracking_uri):
        while True:
            page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY,
                                             max_results=SEARCH_PAGE, page_token=token)
            found += [SweepExperiment(e.name, e.experiment_id, runs_view.TRIALS_VIEW_TAG in e.tags)
                      for e in page if TAG_SWEEP in e.tags]
            token = page.token
            if not token:
                return sorted(found)


def read_client_env():
    """``READ_CLIENT_ENV`` (short retries for reads) where the user left them unset."""
    return env_defaults(READ_CLIENT_ENV)


@contextlib.contextmanager
def server_errors(tracking_uri: str) -> Iterator[None]:
    """MLflow's request errors as an XmemError naming the server."""
    try:
        yield
    except MlflowException as error:
        first_line = (str(error).splitlines() or [""])[0][:500]
        raise XmemError(f"the MLflow tracking server at {tracking_uri} did not answer as "
                        f"expected: {first_line}\nCheck the URI (--tracking-uri or "
                        "MLFLOW_TRACKING_URI), or leave both unset to read the local store "
                        "(--store)") from error


# --- the spec the sweep last ran (for telling stale trial ids) ------------------------------

SERVED_ARTIFACTS_SCHEME = "mlflow-artifacts"


def spec_file(reader: SweepReader, folder: str | os.PathLike,
              served_artifacts: str | os.PathLike | None = None) -> str | None:
    """A local path to the spec the sweep last ran (its parent run's ``spec.yaml``); None
    when the sweep has no parent run or its parent run holds no spec.

    Through a server it is downloaded into ``folder``. Read straight from a store's SQLite
    file (``open_tracking(..., artifacts=False)``), no server serves its ``mlflow-artifacts:/``
    URIs: the file is then looked up in ``served_artifacts``, the folder the store's server
    serves them from (``orchestrator.tracking.server.ARTIFACTS_DIR`` in the store).

    Raises:
        XmemError: the server cannot be reached or answers with an error.
    """
    from urllib.parse import urlparse

    try:
        run_id = reader.find_parent_run_id()
    except XmemError:
        return None   # no parent run: not a sweep xmem ran, no spec to compare with
    with read_client_env(), server_errors(reader.tracking_uri):
        artifact_uri = reader.client.get_run(run_id).info.artifact_uri or ""
        parsed = urlparse(artifact_uri)
        if parsed.scheme == SERVED_ARTIFACTS_SCHEME and served_artifacts is not None:
            path = os.path.join(served_artifacts, parsed.path.lstrip("/"), SPEC_ARTIFACT)
            return path if os.path.isfile(path) else None
        if parsed.scheme in ("", "file"):   # a local artifact store: read in place
            path = os.path.join(parsed.path, SPEC_ARTIFACT)
            if os.path.isfile(path):
                return path
        names = {item.path for item in reader.client.list_artifacts(run_id)}
        if SPEC_ARTIFACT not in names:
            return None
        return reader.client.download_artifacts(run_id, SPEC_ARTIFACT, str(folder))
