"""The worker's side of MLflow: log one trial into the run the driver created for it.

This is the only module in ``workers`` that imports mlflow; it never imports ray. A Ray
worker builds a ``TrialRunLogger`` from the tracking URI and the run id it was given::

    logger = TrialRunLogger(tracking_uri, run_id)
    logger.start({"xmem.device": "cpu", "xmem.ray_node_id": node_id},   # RUNNING, attempts+1,
                 describe_dataset(config, data))                        # and its dataset input
    for record in trial.run():
        logger.log_record(record)          # queued, nothing sent
        logger.flush()                     # when the caller chooses: log_batch, <= 1000 a request
    logger.log_final_artifacts(config, logger.history, logger.alignment_rows, model_state)
    logger.finish("finished")              # or "diverged"; on an exception: logger.fail(text);
                                           # stopped by the driver (Ctrl-C): logger.interrupt()

What a run holds after it: metrics named as in ``workers.contract`` with ``step = epoch``;
tags ``xmem.status`` (running | finished | diverged | failed | interrupted), ``xmem.attempts`` and the
caller's tags; its dataset as an MLflow dataset input (``dataset_input``); artifacts
``config.yaml``, ``history.parquet`` (one row per evaluated epoch: ``epoch`` and one float
column per metric, null where not measured), ``alignment.parquet`` (rows ``epoch, metric,
class, omega``; omega null where undefined), ``weights.pt`` and, for a failed attempt,
``error.txt``. ``PackSystemMetrics`` adds MLflow's ``system/...`` metrics to one run of a pack.

Continuing a run: everything is addressed by run id, so a restarted worker makes a new
logger on the same run and carries on. Metrics wait in ``pending`` until the server has
accepted them; a failed request raises and leaves them queued for the next ``flush``.
Resending a batch the server already stored adds nothing: the SQL store drops metrics
identical in key, step, timestamp and value.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from workers import contract
from workers.config import TrialConfig
from workers.contract import (ALIGNMENT_ARTIFACT, CONFIG_ARTIFACT, ERROR_ARTIFACT, HISTORY_ARTIFACT,
                              RESULT_STATUSES, STATUS_DIVERGED, STATUS_FAILED, STATUS_FINISHED,
                              STATUS_INTERRUPTED, STATUS_RUNNING,
                              TAG_ATTEMPT_PREFIX, TAG_ATTEMPTS, TAG_ERROR, TAG_ERROR_KIND,
                              TAG_GIT_COMMIT, TAG_STATUS, TAG_SUPERSEDED_BY, TAG_SUPERSEDES,
                              TAG_SYSTEM_METRICS_RUN, TAG_VERSION, WEIGHTS_ARTIFACT)
from workers.env_defaults import env_defaults
from workers.provenance import code_commit, code_version
from workers.trial import EpochRecord

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from workers.data.description import DatasetDescription

MAX_METRICS_PER_REQUEST = 1000  # MLflow's limit for one log_batch
MAX_PARAMS_PER_REQUEST = 100    # ... and for params in one log_batch
MAX_LINEAGE = 1000              # superseded runs followed at most (a cycle would be a bug)
# What a superseding run copies of the run it replaces: xmem's tags (the trial's identity, its
# place, its attempt records) and these of MLflow's, but not the old attempt's outcome.
_COPIED_MLFLOW_TAGS = frozenset({contract.TAG_PARENT_RUN, contract.TAG_MLFLOW_GIT_COMMIT, contract.TAG_NOTE})
_NOT_COPIED_TAGS = frozenset({TAG_STATUS, TAG_ERROR, TAG_ERROR_KIND, contract.TAG_SUPERSEDED_BY,
                              contract.TAG_SUPERSEDES, TAG_SYSTEM_METRICS_RUN})

# The MLflow client's settings for this module's calls, applied only around them (a value
# the user set in the environment wins). MLflow's HTTP client retries 7 times with backoff
# 2 s (2, 4, ..., 128 s: about 4 minutes) and waits up to 120 s for an answer; a trial should
# learn within seconds that the server is away and keep its queue instead: 3 retries (about
# 1 + 2 + 4 s plus jitter) and 30 s per answer. Ending a run would also print "View run ... at"
# to stdout, and fetch the run once more to do so.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

# The settings for the last calls of an interrupted trial (Ctrl-C or SIGTERM on the driver).
# Ray ends the worker process within seconds of stopping it, and a server that does not answer
# now will not answer in time: one try per call, 5 s per answer. What is not sent is safe
# anyway: the driver marks the run interrupted, and the checkpoint holds the queued epochs.
INTERRUPT_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}

# MLflow's dataset source type for a path on the machine that trained (its
# LocalArtifactDatasetSource: source = {"uri": path}).
DATASET_SOURCE_TYPE = "local"
# Seconds between two samples of the system metrics (CPU, memory, disk, network, GPU): one
# sample costs a few psutil/NVML reads, a get_run and a log_batch from a thread, nothing next
# to an epoch. XMEM_SYSTEM_METRICS_INTERVAL_S overrides it; 0 turns system metrics off.
SYSTEM_METRICS_INTERVAL_S = 10.0
SYSTEM_METRIC_PREFIX = "system/"  # MLflow's system metrics; their step is a sample number

_log = logging.getLogger(__name__)


def client_env():
    """``CLIENT_ENV`` in the environment (where unset) for the calls inside."""
    return env_defaults(CLIENT_ENV)


class TrialRunLogger:
    """Logs one trial into an existing MLflow run, in batches, resumably."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.pending: list[Metric] = []
        """Metrics queued by ``log_record`` and not yet accepted by the server, oldest first."""
        self.history: list[dict[str, Any]] = []
        """``record.flat()`` of every record logged through this logger."""
        self.alignment_rows: list[dict[str, Any]] = []
        """``alignment_rows(record)`` of every record logged through this logger."""
        self.attempt: int | None = None
        """This attempt's number (1 for the first), known after ``start``."""
        self.logged_through: dict[str, int] = {}
        """metric name -> the last step earlier attempts logged (known after ``start``)."""
        self._opened: "tuple[Run, int] | None" = None
        """The run ``open`` settled on, and the epoch it was opened for."""

    def open(self, start_epoch: int = -1) -> str:
        """Settle which run this attempt logs into, and return its id (``run_id``): the
        trial's current run (``current_run``), or a new one when this attempt cannot continue
        its series. ``start`` calls it when the caller has not (a pack calls it first, to
        name one member's run as the holder of its system metrics in the others' tags).

        ``start_epoch``: the last epoch this attempt does not compute again, the restored
        state's last evaluated epoch (-1: a start from scratch). One attempt lineage per
        run: when the run holds an epoch's metric beyond it (a killed attempt went further
        than the checkpoint this one resumes from, or this one starts over), the attempt
        continues in a new run that supersedes the old one (``_supersede``), so no series
        mixes the values of two attempts.
        """
        with client_env():
            run = self.current_run()
            if _logged_beyond(run, start_epoch):
                run = self._supersede(run)
        self._opened = (run, start_epoch)
        return self.run_id

    def start(self, tags: dict[str, str], dataset: "DatasetDescription | None" = None,
              start_epoch: int = -1) -> None:
        """Begin the attempt in the run ``open`` settled on (opened now if it was not, for
        ``start_epoch``): set it RUNNING, tag it (``xmem.status`` running, this attempt's
        code version and commit, ``tags``), count the attempt, record ``dataset`` as its
        dataset input (again on a later attempt: MLflow keeps one), and learn which steps
        the run already holds (``logged_through``).

        Call it after restoring ``history`` from a checkpoint: restored epochs the run does
        not hold yet (a new run, or an attempt that died with its metrics queued) are queued.
        A retried call (the server failed half-way) counts the attempt once.
        """
        if self._opened is None or self._opened[1] != start_epoch:
            self.open(start_epoch)
        run = self._opened[0]
        with client_env():
            self.attempt = (contract.tag_int(run.data.tags, TAG_ATTEMPTS) or 0) + 1
            # MLflow's latest value of a metric is the one at its highest step.
            self.logged_through = {m.key: int(m.step) for m in run.data.to_proto().metrics}
            timestamp_ms = int(time.time() * 1000)
            self.pending = [Metric(key, float(value), timestamp_ms, row[contract.EPOCH])
                            for row in self.history for key, value in row.items()
                            if key != contract.EPOCH and row[contract.EPOCH] > self.logged_through.get(key, -1)]
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            for stale in (TAG_ERROR, TAG_ERROR_KIND):  # an earlier attempt's failure is over
                if stale in run.data.tags:
                    try:
                        self.client.delete_tag(self.run_id, stale)
                    except MlflowException as error:  # gone already: a retried start
                        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                            raise
            tags = {**tags, **attempt_tags(self.attempt, start_epoch),
                    TAG_STATUS: STATUS_RUNNING, TAG_ATTEMPTS: str(self.attempt)}
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            if dataset is not None:
                self.client.log_inputs(self.run_id, datasets=[dataset_input(dataset)])

    def current_run(self) -> "Run":
        """The trial's current run, which ``run_id`` becomes: the run given, or the newest run
        of its lineage when later attempts superseded it (``xmem.superseded_by``, or a run
        that names it in ``xmem.supersedes`` because its attempt died between the two writes
        of ``_supersede``: the missing tag is written now)."""
        with client_env():
            run = self.client.get_run(self.run_id)
            for _ in range(MAX_LINEAGE):
                successor = run.data.tags.get(TAG_SUPERSEDED_BY) or self._unmarked_successor(run)
                if not successor:
                    break
                run = self.client.get_run(successor)
            self.run_id = run.info.run_id
            return run

    def _unmarked_successor(self, run: "Run") -> str | None:
        """A run that supersedes ``run`` when ``run`` does not say so yet (and it says so now)."""
        found = self.client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.`{TAG_SUPERSEDES}` = '{run.info.run_id}'",
            max_results=1)
        if not found:
            return None
        successor = found[0].info.run_id
        self.client.set_tag(run.info.run_id, TAG_SUPERSEDED_BY, successor)
        return successor

    def _supersede(self, old: "Run") -> "Run":
        """A new run for the trial with ``old``'s name, params and identifying tags (and its
        start time: the trial's lineage started then), marked as superseding ``old``; then
        ``old`` is tagged as superseded and, if it never ended, ended KILLED. Readers skip
        superseded runs. The new run holds no metrics: ``start`` sends the restored history."""
        tags = {key: value for key, value in old.data.tags.items()
                if (key.startswith("xmem.") or key in _COPIED_MLFLOW_TAGS) and key not in _NOT_COPIED_TAGS}
        new = self.client.create_run(old.info.experiment_id, start_time=old.info.start_time,
                                     run_name=old.info.run_name,
                                     tags={**tags, TAG_SUPERSEDES: old.info.run_id})
        new_id = new.info.run_id
        params = [Param(k, v) for k, v in old.data.params.items()]
        for start in range(0, len(params), MAX_PARAMS_PER_REQUEST):
            self.client.log_batch(new_id, params=params[start:start + MAX_PARAMS_PER_REQUEST])
        self.client.set_tag(old.info.run_id, TAG_SUPERSEDED_BY, new_id)
        if old.info.status in (RunStatus.to_string(RunStatus.RUNNING), RunStatus.to_string(RunStatus.SCHEDULED)):
            self.client.set_terminated(old.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        _log.info("run %s superseded by %s: the new attempt cannot continue its series",
                  old.info.run_id, new_id)
        self.run_id = new_id
        return self.client.get_run(new_id)

    def ended_with(self) -> str | None:
        """The run's result status (finished or diverged) when it already ended with one (an
        earlier attempt of its pack finished it); None while there is work left. Follows the
        trial's lineage to its current run (``current_run``)."""
        run = self.current_run()
        status = run.data.tags.get(TAG_STATUS)
        if run.info.status == RunStatus.to_string(RunStatus.FINISHED) and status in RESULT_STATUSES:
            return status
        return None

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set tags on the run now (one request)."""
        with client_env():
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_record(self, record: EpochRecord) -> None:
        """Queue every metric of ``record`` at ``step = record.epoch`` (sent by ``flush``),
        except those an earlier attempt of this run already logged at that step."""
        timestamp_ms = int(time.time() * 1000)
        self.pending.extend(Metric(key, float(value), timestamp_ms, record.epoch)
                            for key, value in record.metrics.items()
                            if record.epoch > self.logged_through.get(key, -1))
        self.history.append(record.flat())
        self.alignment_rows.extend(alignment_rows(record))

    def flush(self) -> None:
        """Send the queued metrics, at most ``MAX_METRICS_PER_REQUEST`` per request.

        A metric leaves the queue only once its request succeeded; on an error the rest stay
        queued and the error propagates.
        """
        with client_env():
            while self.pending:
                chunk = self.pending[:MAX_METRICS_PER_REQUEST]
                self.client.log_batch(self.run_id, metrics=chunk)
                del self.pending[:len(chunk)]

    def log_final_artifacts(self, config: TrialConfig, history: list[dict[str, Any]],
                            per_class_rows: list[dict[str, Any]],
                            model_state: dict[str, Any]) -> None:
        """Upload config.yaml, history.parquet, alignment.parquet and weights.pt together.

        ``history`` and ``per_class_rows`` are the whole trial's (``self.history`` and
        ``self.alignment_rows`` hold only what this logger saw).
        """
        with tempfile.TemporaryDirectory(prefix="xmem-artifacts-") as folder:
            folder_path = Path(folder)
            (folder_path / CONFIG_ARTIFACT).write_text(
                yaml.safe_dump(config.to_dict(), sort_keys=False))
            pq.write_table(history_table(history), folder_path / HISTORY_ARTIFACT)
            pq.write_table(alignment_table(per_class_rows), folder_path / ALIGNMENT_ARTIFACT)
            torch.save(model_state, folder_path / WEIGHTS_ARTIFACT)
            with client_env():
                self.client.log_artifacts(self.run_id, folder)

    def finish(self, status: str) -> None:
        """Flush, tag ``xmem.status`` (finished or diverged) and end the run FINISHED."""
        if status not in (STATUS_FINISHED, STATUS_DIVERGED):
            raise ValueError(f"status must be {STATUS_FINISHED!r} or {STATUS_DIVERGED!r}, "
                             f"got {status!r}")
        self.flush()
        self._terminate(status, RunStatus.FINISHED)

    def fail(self, error_text: str, summary: str, kind: str) -> None:
        """Send what it can, attach ``error.txt`` (``error_text``: the whole story), tag
        ``xmem.status`` failed, ``xmem.error`` (``summary``: one line) and ``xmem.error_kind``
        (``kind``: ``contract.ERROR_USER`` or ``ERROR_CRASH``), end FAILED.

        A failing flush is logged and skipped (the metrics stay in ``pending``); errors of
        the remaining calls propagate.
        """
        try:
            self.flush()
        except Exception as error:  # the run must still end FAILED
            _log.warning("could not send %d queued metrics of run %s: %s",
                         len(self.pending), self.run_id, error)
        with client_env():
            self.client.log_text(self.run_id, error_text, ERROR_ARTIFACT)
        self._terminate(STATUS_FAILED, RunStatus.FAILED, {
            TAG_ERROR: summary[:contract.ERROR_SUMMARY_LENGTH], TAG_ERROR_KIND: kind})

    def interrupt(self) -> None:
        """The trial was stopped by the driver (Ctrl-C or SIGTERM): send the queued metrics if
        the server answers at once, tag ``xmem.status`` interrupted and end the run KILLED.
        No ``error.txt`` and no error tags: nothing failed, and the next rerun of the sweep
        resumes the run from its latest checkpoint.

        Each call is tried once with a short time-out (``INTERRUPT_CLIENT_ENV``): a failing
        flush is logged and skipped (the metrics stay in ``pending``, and the checkpoint's
        history holds them); an error ending the run propagates.
        """
        with env_defaults(INTERRUPT_CLIENT_ENV):
            try:
                self.flush()
            except Exception as error:  # the run must still end interrupted
                _log.warning("could not send %d queued metrics of interrupted run %s: %s",
                             len(self.pending), self.run_id, error)
            self._terminate(STATUS_INTERRUPTED, RunStatus.KILLED)

    def _terminate(self, xmem_status: str, run_status: int, tags: dict[str, str] | None = None) -> None:
        tags = {**(tags or {}), TAG_STATUS: xmem_status}
        with client_env():
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(self.run_id, status=RunStatus.to_string(run_status))


def attempt_tags(attempt: int, start_epoch: int) -> dict[str, str]:
    """The code that runs this attempt, on the run: ``xmem.version`` and ``xmem.git_commit``
    (the latest attempt's) and ``xmem.attempt.<n>`` (JSON: version, commit, the epoch it
    started after, when), which a superseding run copies: every attempt stays on record."""
    commit = code_commit()
    record = {"version": code_version(), "git_commit": commit, "start_epoch": start_epoch,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tags = {TAG_VERSION: code_version(), f"{TAG_ATTEMPT_PREFIX}{attempt}": json.dumps(record)}
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    return tags


def _logged_beyond(run: "Run", epoch: int) -> bool:
    """Whether ``run`` holds an epoch metric at a step after ``epoch`` (``system/`` metrics
    count samples, not epochs, and are left out)."""
    return any(int(m.step) > epoch for m in run.data.to_proto().metrics
               if not m.key.startswith(SYSTEM_METRIC_PREFIX))


def dataset_input(description: "DatasetDescription") -> DatasetInput:
    """A trial's data as an MLflow dataset input: the dataset's name, its digest, the path it
    was read from as a ``local`` source, and its profile (split sizes, subset) as JSON."""
    return DatasetInput(Dataset(
        name=description.name, digest=description.digest, source_type=DATASET_SOURCE_TYPE,
        source=json.dumps({"uri": description.source}),
        profile=json.dumps(description.profile)))


def system_metrics_interval_s() -> float:
    """Seconds between system-metric samples: ``XMEM_SYSTEM_METRICS_INTERVAL_S``, default
    ``SYSTEM_METRICS_INTERVAL_S``; 0 (or less) turns them off."""
    return float(os.environ.get("XMEM_SYSTEM_METRICS_INTERVAL_S", SYSTEM_METRICS_INTERVAL_S))


class PackSystemMetrics:
    """MLflow's system metrics of one pack, logged once: into one member's run, the *host*.

    MLflow's ``SystemMetricsMonitor`` samples, from a thread, the machine's CPU utilization,
    memory, disk and network (psutil) and, where nvidia-ml-py finds an NVIDIA driver, each
    GPU's utilization, memory and power, every ``interval_s`` seconds, and logs them as
    ``system/...`` metrics (step = sample number). A pack's members share one process and one
    device, so the host holds them for all: the first member still training, named in every
    member's ``xmem.system_metrics_run`` tag (``host_tags``). Call ``members_ending`` before
    members' runs end: when the host is among them and others go on (it diverged), the
    monitor moves to the next member and the others' tags follow.

    Best effort: a failure to start, move or stop the monitor is logged and training goes on.
    After a tracking-server outage MLflow's monitor stops itself until the next attempt.
    """

    def __init__(self, tracking_uri: str, run_ids: list[str], interval_s: float | None = None):
        self.tracking_uri = tracking_uri
        self.interval_s = system_metrics_interval_s() if interval_s is None else interval_s
        self.running = list(run_ids)
        """Members' runs still training, in pack order."""
        self.host: str | None = self.running[0] if self.running and self.interval_s > 0 else None
        """The run that holds the pack's system metrics now (None: off, or every member ended)."""
        self._monitor: "SystemMetricsMonitor | None" = None
        if self.host is not None:
            _start_cpu_clock()

    def host_tags(self) -> dict[str, str]:
        """The tag naming the host, for every member's run (empty when off)."""
        return {TAG_SYSTEM_METRICS_RUN: self.host} if self.host else {}

    def start(self) -> None:
        """Start sampling into the host's run (after the members' runs are RUNNING)."""
        if self.host is not None and self._monitor is None:
            self._monitor = _start_monitor(self.tracking_uri, self.host, self.interval_s)

    def members_ending(self, run_ids: list[str]) -> None:
        """Members whose runs are about to end: a host among them hands over to the next member
        that goes on (or stops when none does)."""
        ending = set(run_ids)
        self.running = [run_id for run_id in self.running if run_id not in ending]
        if self.host not in ending:
            return
        self.stop()
        self.host = self.running[0] if self.running else None
        if self.host is None:
            return
        try:
            with client_env():
                client = MlflowClient(tracking_uri=self.tracking_uri)
                for run_id in self.running:
                    client.log_batch(run_id, tags=[RunTag(TAG_SYSTEM_METRICS_RUN, self.host)])
        except Exception as error:  # tags are worth less than training: go on
            _log.warning("could not name the new system-metrics run %s: %s", self.host, error)
        self.start()

    def stop(self) -> None:
        """Stop sampling and send what was sampled since the last log (safe to call again)."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            # MLflow's loop drops the samples of an interval it did not complete (a pack that
            # ends within its first interval would have none): they are sent as one step,
            # with one more sample taken here (this thread's CPU clock started with the pack).
            monitor.collect_metrics()
            leftover = monitor.aggregate_metrics()
            if leftover:
                monitor.publish_metrics(leftover)
                with client_env():
                    monitor.mlflow_logger.flush()
        except Exception as error:
            _log.warning("could not send the last system metrics of run %s: %s", self.host, error)


def _start_cpu_clock() -> None:
    """psutil measures CPU use between two calls of the same thread, and a thread's first call
    reads 0.0: calling it now in this (the training) thread makes the sample ``stop`` takes
    here a measurement of the time since."""
    try:
        import psutil

        psutil.cpu_percent()
    except ImportError:  # _start_monitor says why the metrics are off
        pass


def _start_monitor(tracking_uri: str, run_id: str, interval_s: float) -> "SystemMetricsMonitor | None":
    """MLflow's monitor sampling into ``run_id`` (continuing its steps), started; None when it
    cannot run (psutil missing, a server error)."""
    try:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        class FirstReadingDroppedCPUMonitor(CPUMonitor):
            """MLflow's CPU monitor without the CPU reading of a thread's first call to
            psutil (always 0.0: no earlier call to measure from); memory is kept."""

            def __init__(self):
                super().__init__()
                # Threads whose psutil CPU clock runs: the one creating it (PackSystemMetrics
                # started its clock), and each thread after its first reading.
                self.threads = {threading.get_ident()}

            def collect_metrics(self):
                super().collect_metrics()
                thread = threading.get_ident()
                if thread not in self.threads:
                    self.threads.add(thread)
                    self._metrics["cpu_utilization_percentage"].pop()
                    if not self._metrics["cpu_utilization_percentage"]:
                        del self._metrics["cpu_utilization_percentage"]

        # Its INFO lines ("Started monitoring ...") at every start and stop are noise here.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        with client_env():
            monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s,
                                           samples_before_logging=1, resume_logging=True,
                                           tracking_uri=tracking_uri)
        monitor.monitors = [FirstReadingDroppedCPUMonitor() if type(m) is CPUMonitor else m
                            for m in monitor.monitors]
        monitor.start()
        return monitor
    except Exception as error:  # ImportError without psutil; MlflowException
        _log.warning("system metrics are off for run %s: %s", run_id, error)
        return None


# Answers that will not change by waiting: a missing or deleted run, a rejected request.
_PERMANENT_ERROR_CODES = frozenset({
    "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE",
    "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_ALREADY_EXISTS", "INVALID_REQUEST"})


# OSErrors of talking to a server over the network (beyond the ConnectionError family).
_NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                             errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                             errno.ENETDOWN, errno.EHOSTDOWN, errno.EPIPE})


def is_transient(error: BaseException) -> bool:
    """Whether an error talking to the server may pass by itself (worth waiting and retrying):
    refused or reset connections, time-outs, unknown hosts, 5xx answers. Not a missing run or
    a rejected request, and not a local OSError (a full disk, a denied or read-only folder
    while writing an artifact): waiting cures none of those.

    With the server away, MLflow raises an ``MlflowException`` (INTERNAL_ERROR, "API request
    ... failed with exception ... Max retries exceeded") whose causes hold requests'
    ``ConnectionError`` and the socket's ``ConnectionRefusedError``; a local OSError is raised
    as itself (``open`` of the file to upload), or may be wrapped: the nearest OSError in the
    chain of causes decides.
    """
    if isinstance(error, MlflowException):
        if error.error_code in _PERMANENT_ERROR_CODES:
            return False
        # The OSError nearest in the chain decides: none for a 5xx answer, requests' for a
        # server away, a wrapped local one (a full disk) makes the error local.
        first = next((cause for cause in _causes(error) if isinstance(cause, OSError)), None)
        return first is None or _network_error(first)
    return _network_error(error)


def _network_error(error: BaseException) -> bool:
    """An error of the connection to a server (requests', urllib3's or the socket's)."""
    import requests
    import urllib3

    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError,
                          http.client.HTTPException, ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS


def _causes(error: BaseException) -> list[BaseException]:
    """``error``'s chain of causes (``__cause__``, else ``__context__``), itself excluded."""
    chain, seen = [], {id(error)}
    cause = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        chain.append(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return chain


def alignment_rows(record: EpochRecord) -> list[dict[str, Any]]:
    """One row per (alignment metric, class) of ``record``: epoch, metric, class, omega."""
    return [{contract.EPOCH: record.epoch, "metric": name, "class": k, "omega": omega}
            for name, values in record.per_class.items()
            for k, omega in enumerate(values)]


def history_table(history: list[dict[str, Any]]) -> pa.Table:
    """``epoch`` (int64) then one float64 column per metric, in order of first appearance;
    null where a row lacks the metric (alignment is measured on some epochs only)."""
    names: dict[str, None] = {}
    for row in history:
        names.update((key, None) for key in row if key != contract.EPOCH)
    columns = {contract.EPOCH: pa.array([row[contract.EPOCH] for row in history], pa.int64())}
    for name in names:
        columns[name] = pa.array([row.get(name) for row in history], pa.float64())
    return pa.table(columns)


def alignment_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The per-class alignment rows as a table (omega null where undefined)."""
    schema = pa.schema([(contract.EPOCH, pa.int64()), ("metric", pa.string()),
                        ("class", pa.int64()), ("omega", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)

