"""The driver's side of MLflow: a local tracking server, and one sweep's experiment and runs.

This is the only driver module that imports mlflow (the worker side has
``workers.mlflow_log``). What a sweep leaves in the tracking server::

    experiment  <sweep name>                  tag mlflow.note.content = spec description
      run  <sweep name>                       parent: tags xmem.sweep, xmem.role=parent,
                                              xmem.trial_count; artifact spec.yaml
        run  <trial name>  (one per trial)    child: tags mlflow.parentRunId, xmem.sweep,
                                              xmem.role=trial, xmem.trial_id, xmem.version,
                                              xmem.git_commit, xmem.attempts; params = every
                                              trial config key; SCHEDULED until a worker
                                              starts it

``start_local_server`` runs ``mlflow server`` on 127.0.0.1 over a folder::

    <root>/mlflow.db      SQLite store of experiments, runs, params, tags and metrics
    <root>/artifacts/     artifacts, uploaded and downloaded over HTTP through the server
    <root>/server.log     the server's stdout and stderr

Every run is found again by its tags, never by remembering ids on the driver: running the
same sweep twice reuses the experiment, the parent run and each trial's run.

Reading a sweep back (``xmem export``, ``xmem report``): ``SweepTracker.open_existing``,
``trial_records`` and ``metric_histories`` return plain data (``TrialRecord``, tuples), so no
MLflow entity leaves this module; ``log_to_parent_run`` uploads a report's files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import mlflow
import yaml
from mlflow.entities import Param, Run, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException

import workers
from workers.config import TrialConfig
from workers.env_defaults import env_defaults
from workers.errors import XmemError
from workers.run_tags import (ROLE_PARENT, ROLE_TRIAL, TAG_ATTEMPTS, TAG_GIT_COMMIT,
                               TAG_MLFLOW_GIT_COMMIT, TAG_NOTE, TAG_PARENT_RUN, TAG_ROLE,
                               TAG_STATUS, TAG_SWEEP, TAG_TRIAL_COUNT, TAG_TRIAL_ID, TAG_VERSION,
                               STATUS_FAILED)

SPEC_ARTIFACT = "spec.yaml"

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
LOG_FILE = "server.log"
# The server's environment. Job execution (MLflow 3's GenAI job runner) starts seven
# `huey_consumer` processes next to the server; xmem uses none of them, and on a 2-core
# machine they roughly double the start-up time and keep competing with the trials for CPU.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
STOP_TIMEOUT_S = 10.0   # SIGTERM -> SIGKILL
LOG_TAIL_LINES = 30
SEARCH_PAGE = 1000      # runs per search request (the server's maximum)
MAX_PARAMS_PER_BATCH = 100  # MLflow's limit of params (and of tags) in one log_batch
_PR_SET_PDEATHSIG = 1   # linux prctl option


# --- the local server -------------------------------------------------------------------

@dataclass
class LocalTrackingServer:
    """An ``mlflow server`` process on this machine, serving a store under ``root``."""

    uri: str
    """http://127.0.0.1:<port>: what clients (driver and workers) pass as tracking URI."""
    root: Path
    """Holds mlflow.db, artifacts/ and server.log."""
    process: subprocess.Popen
    command: tuple[str, ...] = ()
    """The command line it runs (printed in errors so the user can try it by hand)."""

    def wait_until_ready(self, timeout_s: float = 90) -> float:
        """Poll ``<uri>/health`` until it answers OK; return the seconds waited.

        Raises:
            XmemError: when the process exits or ``timeout_s`` passes first (the server is
                stopped then), with the tail of server.log and the command to try by hand.
        """
        started = time.perf_counter()
        deadline = started + timeout_s
        while True:
            if self.process.poll() is not None:
                raise XmemError(self._failure(f"exited with code {self.process.returncode} "
                                              "before answering"))
            if _health_ok(self.uri):
                return time.perf_counter() - started
            if time.perf_counter() > deadline:
                self.stop()
                raise XmemError(self._failure(f"did not answer {self.uri}/health within "
                                              f"{timeout_s:g} s"))
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server: SIGTERM (``mlflow server`` passes it on to its uvicorn worker),
        then SIGKILL to its whole process group after a timeout. Safe to call again."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)  # the group leader is not reaped yet
            self.process.wait()

    def _failure(self, what: str) -> str:
        return (f"the MLflow tracking server {what}.\n"
                f"Last lines of {self.root / LOG_FILE}:\n{_log_tail(self.root / LOG_FILE)}\n"
                f"To see the problem, run the server by hand:\n  {shlex.join(self.command)}")


def start_local_server(root: Path, host: str = "127.0.0.1", port: int | None = None,
                       timeout_s: float = 90, wait: bool = True) -> LocalTrackingServer:
    """Start ``mlflow server`` on ``host:port`` (a free port when None) over ``root``.

    Artifacts are served through the server (``--artifacts-destination``), so clients upload
    and download them over HTTP exactly as with a cluster's server. The server runs in its own
    process group (Ctrl-C of the caller does not reach it: call ``stop()``), and on Linux it
    is terminated when the thread that started it dies, even by SIGKILL: call this from
    the main thread.

    With ``wait=False`` it returns at once; call ``wait_until_ready()`` before using it
    (start-up takes ~10 s on a 2-core machine, time that can overlap ``ray.init()``).

    Raises:
        XmemError: root cannot be created, the port is taken, or the server does not become
            healthy (message with the log's tail and the command to try).
    """
    root = Path(root).expanduser().resolve()
    _make_root(root)
    port = _free_port(host) if port is None else _check_port_free(host, port)
    command = _server_command(root, host, port)
    with open(root / LOG_FILE, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **SERVER_ENV}, start_new_session=True,
            preexec_fn=_die_with_parent())
    server = LocalTrackingServer(uri=f"http://{host}:{port}", root=root, process=process,
                                 command=tuple(command))
    if wait:
        try:
            server.wait_until_ready(timeout_s)
        except BaseException:
            server.stop()
            raise
    return server


def serve_ui(root: Path, host: str, port: int) -> None:
    """Serve the store under ``root`` (UI and API) until Ctrl-C; for ``xmem ui``.

    Raises:
        XmemError: ``root`` holds no store, the port is taken, or the server fails.
    """
    root = Path(root).expanduser().resolve()
    if not (root / STORE_FILE).is_file():
        raise XmemError(f"no MLflow store at {root / STORE_FILE}.\nSweeps run without a tracking "
                        "URI write one to <storage>/mlflow: pass that folder with --store, or run a "
                        "sweep first (xmem sweep experiments/quickstart.yaml).")
    _check_port_free(host, port)
    command = _server_command(root, host, port)
    # In its own session, so that Ctrl-C reaches only this process, which stops the server
    # with one SIGTERM (a second signal makes uvicorn abort with a traceback).
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env={**os.environ, **SERVER_ENV},
                               start_new_session=True, preexec_fn=_die_with_parent())
    server = LocalTrackingServer(uri=f"http://{host}:{port}", root=root, process=process,
                                 command=tuple(command))
    try:
        code = process.wait()
    except KeyboardInterrupt:
        server.stop()
        return
    if code != 0:
        raise XmemError(f"the MLflow server exited with code {code}; command: "
                        f"{shlex.join(command)}")


def _server_command(root: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root / STORE_FILE}",
            "--artifacts-destination", str(root / ARTIFACTS_DIR),
            "--serve-artifacts",
            "--host", host, "--port", str(port),
            "--workers", "1"]


def _make_root(root: Path) -> None:
    try:
        (root / ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
        probe = root / ".xmem-write-test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise XmemError(f"cannot use {root} for the MLflow store: {error.strerror or error}; "
                        "choose a writable folder") from error


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _check_port_free(host: str, port: int) -> int:
    """Bind the way uvicorn will (SO_REUSEADDR), so only a real listener counts as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = "is in use" if error.errno == errno.EADDRINUSE else f"cannot be bound: {error}"
            raise XmemError(f"port {port} on {host} {reason}; pick another port or leave it "
                            "unset to use a free one") from error
    return port


def check_reachable(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, before anything is created, when an http(s) tracking server does not answer.

    Raises:
        XmemError: naming the URI and what to check.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    deadline = time.monotonic() + timeout_s
    while not _health_ok(tracking_uri):
        if time.monotonic() > deadline:
            raise XmemError(f"the MLflow tracking server {tracking_uri} does not answer "
                            f"({tracking_uri}/health, {timeout_s:g} s).\nCheck the URI and that the "
                            "server runs (mlflow server --host 0.0.0.0 ...), or drop --tracking-uri / "
                            "MLFLOW_TRACKING_URI to use an embedded server.")
        time.sleep(0.5)


def _health_ok(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent():
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies (None elsewhere).

    ``mlflow server`` forwards SIGTERM to its uvicorn worker, so a driver killed with -9
    leaves no server behind. libc is loaded here, before the fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_parent_death_signal


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  (no log)"
    return "\n".join("  " + line for line in text[-lines:]) or "  (empty)"


# --- one sweep's experiment -------------------------------------------------------------

class TrialLike(Protocol):
    """What ``create_trial_runs`` needs of a trial (``orchestrator.spec.TrialPoint`` fits)."""

    trial_id: str
    name: str
    config: TrialConfig


class SweepTracker:
    """The driver's view of one sweep in MLflow: its experiment, parent run and trial runs.

    Every method finds existing objects first (by experiment name and ``xmem.*`` tags), so a
    rerun of the same sweep continues it instead of duplicating it.
    """

    def __init__(self, tracking_uri: str, sweep_name: str):
        self.tracking_uri = tracking_uri
        self.sweep_name = sweep_name
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def ensure_experiment(self, description: str | None = None) -> str:
        """The id of the experiment named after the sweep, created on first use.

        Raises:
            XmemError: an experiment of that name exists but was deleted (MLflow keeps the
                name reserved until it is restored or garbage-collected).
        """
        experiment = self.client.get_experiment_by_name(self.sweep_name)
        if experiment is None:
            tags = {TAG_SWEEP: self.sweep_name}
            if description:
                tags[TAG_NOTE] = description
            try:
                self.experiment_id = self.client.create_experiment(self.sweep_name, tags=tags)
                return self.experiment_id
            except MlflowException:
                # Created meanwhile by another driver: use theirs.
                experiment = self.client.get_experiment_by_name(self.sweep_name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise XmemError(
                f"the MLflow experiment '{self.sweep_name}' (id {experiment.experiment_id}) on "
                f"{self.tracking_uri} was deleted; restore it (mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}), delete it for good (mlflow gc), "
                "or give the sweep another name")
        self.experiment_id = experiment.experiment_id
        if description and experiment.tags.get(TAG_NOTE) != description:
            self.client.set_experiment_tag(self.experiment_id, TAG_NOTE, description)
        return self.experiment_id

    def start_parent_run(self, spec_raw: dict, trial_count: int) -> str:
        """The sweep's parent run, set to RUNNING: reused when the experiment has one.

        Logs ``spec_raw`` as ``spec.yaml`` (replacing an earlier one) and tags the trial count.
        """
        experiment_id = self._experiment()
        existing = self._parent_runs()
        tags = {TAG_SWEEP: self.sweep_name, TAG_ROLE: ROLE_PARENT,
                TAG_TRIAL_COUNT: str(trial_count)}
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            run_id = self.client.create_run(experiment_id, tags=tags,
                                            run_name=self.sweep_name).info.run_id
        self.client.log_text(run_id, yaml.safe_dump(spec_raw, sort_keys=False), SPEC_ARTIFACT)
        self.parent_run_id = run_id
        return run_id

    def create_trial_runs(self, trials: Iterable[TrialLike], parent_run_id: str) -> dict[str, str]:
        """One child run per trial (SCHEDULED), or the trial's existing run: trial_id -> run_id.

        One search finds the existing runs; a new run costs three requests (create with its
        tags, log_batch of params, status SCHEDULED). An existing run keeps its status, params
        and tags (``xmem.attempts`` included); what it lacks (a crash between those requests)
        is added, and ``mlflow.parentRunId`` is pointed at ``parent_run_id``.
        """
        experiment_id = self._experiment()
        existing = {run.data.tags[TAG_TRIAL_ID]: run for run in self._trial_run_list()}
        commit = git_commit(Path(workers.__file__).resolve().parent)
        run_ids: dict[str, str] = {}
        for trial in trials:
            params = config_params(trial.config)
            tags = {TAG_PARENT_RUN: parent_run_id, TAG_SWEEP: self.sweep_name,
                    TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_ID: trial.trial_id,
                    TAG_VERSION: workers.__version__}
            if commit:
                tags[TAG_GIT_COMMIT] = tags[TAG_MLFLOW_GIT_COMMIT] = commit
            run = existing.get(trial.trial_id)
            if run is None:
                run_id = self.client.create_run(experiment_id, tags={**tags, TAG_ATTEMPTS: "0"},
                                                run_name=trial.name).info.run_id
                self._log_params(run_id, params)
                self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.SCHEDULED))
            else:
                run_id = run.info.run_id
                self._log_params(run_id, {k: v for k, v in params.items()
                                          if k not in run.data.params})
                # Tags keep the values of the run's creation, except the parent (a new parent
                # run replaces one that was deleted).
                stale = {k: v for k, v in tags.items() if k not in run.data.tags
                         or (k == TAG_PARENT_RUN and run.data.tags[k] != v)}
                if TAG_ATTEMPTS not in run.data.tags:
                    stale[TAG_ATTEMPTS] = "0"
                if stale:
                    self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in stale.items()])
            run_ids[trial.trial_id] = run_id
        return run_ids

    def trial_runs(self) -> dict[str, "TrialRecord"]:
        """trial_id -> its run as plain data (active runs only), from one paginated search."""
        return {run.data.tags[TAG_TRIAL_ID]: _trial_record(run) for run in self._trial_run_list()}

    def parent_tags(self) -> dict[str, str]:
        """The tags of the sweep's parent run (spec path, storage, ...)."""
        with _read_client_env(), _server_errors(self.tracking_uri):
            return dict(self.client.get_run(self.find_parent_run_id()).data.tags)

    def download_spec(self, folder: str | os.PathLike) -> str:
        """Download the parent run's ``spec.yaml`` into ``folder``; return its path."""
        with _read_client_env(), _server_errors(self.tracking_uri):
            return self.client.download_artifacts(self.find_parent_run_id(), SPEC_ARTIFACT, str(folder))

    def tag_parent_run(self, tags: dict[str, str]) -> None:
        """Set tags on this sweep's parent run (after ``start_parent_run``)."""
        self.client.log_batch(self.parent_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def mark_trial_failed(self, run_id: str, error_text: str) -> None:
        """End a trial's run FAILED from the driver, with ``error.txt``: for a worker that
        died without a word (killed, out of memory) and so could not end its run itself."""
        with env_defaults({"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}):
            self.client.log_text(run_id, error_text, "error.txt")
            self.client.set_tag(run_id, TAG_STATUS, STATUS_FAILED)
            self.client.set_terminated(run_id, status="FAILED")

    def finish_parent_run(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (FINISHED, FAILED or KILLED)."""
        if self.parent_run_id is None:
            found = self._parent_runs()
            if not found:
                raise XmemError(f"sweep '{self.sweep_name}' has no parent run to finish")
            self.parent_run_id = found[0].info.run_id
        # Without this, MLflow prints "View run ... at" to stdout (under the progress display)
        # and fetches the run once more to do it.
        with env_defaults({"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}):
            self.client.set_terminated(self.parent_run_id, status=status)

    def experiment_url(self) -> str:
        """``<uri>/#/experiments/<id>`` for an http(s) server; else a description of where."""
        experiment_id = self._experiment()
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}"
        return f"experiment {experiment_id} in {self.tracking_uri}"

    # --- reading a sweep back (xmem export, xmem report) ------------------------------
    def open_existing(self) -> str:
        """The id of the sweep's experiment, which must exist (read commands create nothing).

        Raises:
            XmemError: no active experiment of that name (the message lists the sweeps that
                exist), or the server cannot be reached.
        """
        with _read_client_env(), _server_errors(self.tracking_uri):
            experiment = self.client.get_experiment_by_name(self.sweep_name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            existing = sweep_names(self.tracking_uri)
            listing = (f"sweeps there: {', '.join(existing)}" if existing
                       else "there are no sweeps there yet (run one: xmem sweep SPEC.yaml)")
            raise XmemError(f"no sweep named '{self.sweep_name}' on {self.tracking_uri}; {listing}")
        self.experiment_id = experiment.experiment_id
        return self.experiment_id

    def trial_records(self) -> list[TrialRecord]:
        """Every trial run of the sweep, in the order the runs were created (the spec's).

        Raises:
            XmemError: as ``open_existing`` (a read never creates the experiment).
        """
        if self.experiment_id is None:
            self.open_existing()
        with _read_client_env(), _server_errors(self.tracking_uri):
            runs = self._trial_run_list()
        runs.sort(key=lambda run: (run.info.start_time or 0, run.info.run_name or ""))
        return [_trial_record(run) for run in runs]

    def metric_histories(self, records: Iterable[TrialRecord]
                         ) -> dict[str, dict[str, list[tuple[int, int, float]]]]:
        """run_id -> metric name -> every logged (step, timestamp_ms, value).

        One request per (run, metric) for the metrics each run has, ``HISTORY_THREADS`` at
        a time. A step logged twice (an attempt that re-ran epochs after a restart) appears
        twice; the caller picks the latest.
        """
        from concurrent.futures import ThreadPoolExecutor

        jobs = [(record.run_id, key) for record in records for key in record.latest]

        def fetch(job: tuple[str, str]) -> list[tuple[int, int, float]]:
            return [(int(m.step), int(m.timestamp), float(m.value))
                    for m in self.client.get_metric_history(*job)]

        histories: dict[str, dict[str, list[tuple[int, int, float]]]] = {}
        with _read_client_env(), _server_errors(self.tracking_uri), \
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
            if self.experiment_id is None:
                self.open_existing()
            with _read_client_env(), _server_errors(self.tracking_uri):
                found = self._parent_runs()
            if not found:
                raise XmemError(f"sweep '{self.sweep_name}' on {self.tracking_uri} has no parent "
                                f"run (tag {TAG_ROLE}={ROLE_PARENT}); was it made by xmem sweep?")
            self.parent_run_id = found[0].info.run_id
        return self.parent_run_id

    def log_to_parent_run(self, folder: str | os.PathLike, artifact_path: str | None = None) -> str:
        """Upload every file under ``folder`` to the parent run, under ``artifact_path``
        (files of the same name are replaced); returns the parent run's id."""
        run_id = self.find_parent_run_id()
        with _read_client_env(), _server_errors(self.tracking_uri):
            self.client.log_artifacts(run_id, str(folder), artifact_path)
        return run_id

    # --- internals ----------------------------------------------------------------------
    def _experiment(self) -> str:
        return self.experiment_id if self.experiment_id is not None else self.ensure_experiment()

    def _parent_runs(self) -> list[Run]:
        """Active parent runs, oldest first (more than one only after a race of two drivers)."""
        return self._search(f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'", order_by=["start_time ASC"])

    def _trial_run_list(self) -> list[Run]:
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

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])


# --- reading a sweep back: plain data, no MLflow entity leaves this module -----------------

# A read of an existing sweep should learn within seconds that the server is not there
# (MLflow's default is 7 retries with backoff, about 4 minutes); a value the user set wins.
READ_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
HISTORY_THREADS = 8  # parallel metric-history requests (each a small, latency-bound GET)


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
    """Every trial config key, as ``config_params`` wrote it (JSON text but for strings)."""
    latest: dict[str, tuple[int, float]]
    """metric name -> (step, value) of its latest value (MLflow's latest: highest step)."""


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
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    names: list[str] = []
    token = None
    with _read_client_env(), _server_errors(tracking_uri):
        while True:
            page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY,
                                             max_results=SEARCH_PAGE, page_token=token)
            names += [experiment.name for experiment in page if TAG_SWEEP in experiment.tags]
            token = page.token
            if not token:
                return sorted(names)


def _read_client_env():
    """``READ_CLIENT_ENV`` (short retries for reads) where the user left them unset."""
    return env_defaults(READ_CLIENT_ENV)


@contextlib.contextmanager
def _server_errors(tracking_uri: str) -> Iterator[None]:
    """MLflow's request errors as an XmemError naming the server."""
    try:
        yield
    except MlflowException as error:
        first_line = (str(error).splitlines() or [""])[0][:500]
        raise XmemError(f"the MLflow tracking server at {tracking_uri} did not answer as "
                        f"expected: {first_line}\nCheck the URI (--tracking-uri or "
                        "MLFLOW_TRACKING_URI), or leave both unset to read the local store "
                        "(--store)") from error


def config_params(config: TrialConfig) -> dict[str, str]:
    """Every config key as an MLflow param: strings as they are, other values as JSON
    (``null``, ``true``, ``0.01``), so params read like the YAML they came from."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in config.to_dict().items()}


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``cwd``; None when unknown."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None
