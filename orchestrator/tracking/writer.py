"""What a running sweep writes to MLflow: its experiment, parent run and trial runs.

What a sweep leaves in the tracking server::

    experiment  <sweep name>                  tags mlflow.note.content = spec description,
                                              mlflow.experimentKind = custom_model_development,
                                              mlflow.sharedViewState.xmem-trials = the trials
                                              view the printed link opens (runs_view)
      run  <sweep name>                       parent: tags xmem.sweep, xmem.role=parent,
                                              xmem.trial_count; artifact spec.yaml
        run  <trial name>  (one per trial)    child: tags mlflow.parentRunId, xmem.sweep,
                                              xmem.role=trial, xmem.trial_id, xmem.version,
                                              xmem.git_commit, xmem.attempts,
                                              xmem.trial_index; params = every trial config
                                              key; SCHEDULED until a worker starts it

Every run is found again by its tags, never by remembering ids on the driver: running the
same sweep twice reuses the experiment, the parent run and each trial's run. The workers log
their own metrics and artifacts (``workers.mlflow_log``).

Every request the driver makes through a ``SweepTracker`` is bounded (``DRIVER_CLIENT_ENV``:
a server that refuses connections is given up on after about 10 s, not MLflow's 4 minutes)
and a request that fails becomes an ``XmemError`` naming the server (``driver_errors``): the
command exits 2 with a message, the sweep's checkpoints are untouched, and a rerun resumes.
One driver at a time runs a sweep: it holds a lease on the parent run
(``orchestrator.tracking.lease``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Any, Iterable, Iterator, Protocol, Sequence

import mlflow
import requests
import yaml
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

import workers
from orchestrator.tracking import runs_view
from orchestrator.tracking.params import config_params
from orchestrator.tracking.reader import SweepReader, read_client_env, server_errors
from workers.config import TrialConfig
from workers.contract import (ERROR_ARTIFACT, ERROR_CRASH, ERROR_SUMMARY_LENGTH, ROLE_PARENT,
                              ROLE_TRIAL, RUN_FAILED, RUN_FINISHED, RUN_KILLED, RUN_RUNNING,
                              SPEC_ARTIFACT, STATUS_FAILED, STATUS_INTERRUPTED,
                              TAG_ATTEMPTS, TAG_ERROR, TAG_ERROR_KIND, TAG_GIT_COMMIT,
                              TAG_MLFLOW_GIT_COMMIT, TAG_NOTE, TAG_PARENT_RUN, TAG_ROLE, TAG_STATUS,
                              TAG_SWEEP, TAG_TRIAL_COUNT, TAG_TRIAL_ID, TAG_TRIAL_INDEX,
                              TAG_VERSION)
from workers.env_defaults import env_defaults
from workers.provenance import code_commit
from workers.errors import XmemError, first_line

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit of params (and of tags) in one log_batch
# Without this, MLflow prints "View run ... at" to stdout (under the progress display) when a
# run ends, and fetches the run once more to do it.
QUIET_CLIENT_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# The driver's requests: 3 retries after 1, 2 and 4 s (plus up to 1 s of jitter each), so a
# stopped server is reported after about 10 s; a server that accepts connections but never
# answers, after 4 x 15 s. MLflow's default (7 retries, 120 s time-outs) waits minutes. A value
# the user set wins.
DRIVER_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def driver_client_env():
    """``DRIVER_CLIENT_ENV`` (bounded retries) where the user left it unset."""
    return env_defaults(DRIVER_CLIENT_ENV)


@contextlib.contextmanager
def driver_errors(tracking_uri: str) -> Iterator[None]:
    """A failed request of the driver (MLflow's error, or the connection's) as an XmemError
    naming the server and what to do: nothing the sweep checkpointed is lost."""
    try:
        yield
    except (MlflowException, requests.RequestException) as error:
        summary = first_line(str(error))[:500]
        raise XmemError(
            f"the MLflow tracking server at {tracking_uri} did not answer the sweep's driver: "
            f"{summary}\nThe sweep's checkpoints are safe. Check that the server runs and is "
            "reachable (--tracking-uri or MLFLOW_TRACKING_URI), then run the same command "
            "again: the sweep resumes where it stopped.") from error


class DriverClient:
    """An ``MlflowClient`` whose every call runs under ``driver_client_env`` and
    ``driver_errors``: bounded, and a clear error. ``raw`` is the client itself, for a caller
    that handles MLflow's errors (a race it expects)."""

    def __init__(self, client: mlflow.MlflowClient, tracking_uri: str):
        self.raw = client
        self.tracking_uri = tracking_uri

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.raw, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            with driver_client_env(), driver_errors(self.tracking_uri):
                return attribute(*args, **kwargs)
        return bounded


class TrialLike(Protocol):
    """What ``create_trial_runs`` needs of a trial (``orchestrator.expand.TrialPoint`` fits)."""

    trial_id: str
    name: str
    config: TrialConfig


class SweepTracker(SweepReader):
    """The driver's view of one running sweep in MLflow: it reads like ``SweepReader`` and
    creates what is missing.

    Every method finds existing objects first (by experiment name and ``xmem.*`` tags), so a
    rerun of the same sweep continues it instead of duplicating it. Every request is bounded
    and its failure an XmemError (``DriverClient``).
    """

    def __init__(self, tracking_uri: str, sweep_name: str):
        super().__init__(tracking_uri, sweep_name)
        self.client = DriverClient(self.client, tracking_uri)  # type: ignore[assignment]
        self.created_parent_run_id: str | None = None
        """The parent run ``open_or_create_parent_run`` created, if it did."""

    def ensure_experiment(self, description: str | None = None) -> str:
        """The id of the experiment named after the sweep, created on first use, of MLflow's
        model-training kind (``runs_view.EXPERIMENT_KIND_TAG``).

        Raises:
            XmemError: an experiment of that name exists but was deleted (MLflow keeps the
                name reserved until it is restored or garbage-collected).
        """
        experiment = self.client.get_experiment_by_name(self.sweep_name)
        if experiment is None:
            tags = {TAG_SWEEP: self.sweep_name,
                    runs_view.EXPERIMENT_KIND_TAG: runs_view.MODEL_TRAINING_KIND}
            if description:
                tags[TAG_NOTE] = description
            try:
                with driver_client_env():
                    self.experiment_id = self.client.raw.create_experiment(self.sweep_name,
                                                                           tags=tags)
                self.experiment_tags = dict(tags)
                return self.experiment_id
            except MlflowException as error:
                # Created meanwhile by another driver: use theirs.
                experiment = self.client.get_experiment_by_name(self.sweep_name)
                if experiment is None:
                    with driver_errors(self.tracking_uri):
                        raise error
        if experiment.lifecycle_stage == "deleted":
            raise XmemError(
                f"the MLflow experiment '{self.sweep_name}' (id {experiment.experiment_id}) on "
                f"{self.tracking_uri} was deleted; restore it (mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}), delete it for good (mlflow gc), "
                "or give the sweep another name")
        self.experiment_id = experiment.experiment_id
        self.experiment_tags = dict(experiment.tags)
        if description and experiment.tags.get(TAG_NOTE) != description:
            self.client.set_experiment_tag(self.experiment_id, TAG_NOTE, description)
        if experiment.tags.get(runs_view.EXPERIMENT_KIND_TAG) != runs_view.MODEL_TRAINING_KIND:
            self.client.set_experiment_tag(self.experiment_id, runs_view.EXPERIMENT_KIND_TAG,
                                           runs_view.MODEL_TRAINING_KIND)
        return self.experiment_id

    def open_or_create_parent_run(self) -> str:
        """The sweep's parent run (the oldest active one), created when there is none; the
        experiment is created when missing, but nothing else is changed (the lease is taken
        on this run before anything is: ``orchestrator.tracking.lease``).

        Two first runs that race both create a parent run: each then keeps the oldest and
        deletes its own when it is not that one, so both go on with the same run.
        """
        if self.experiment_id is None:
            experiment = self.client.get_experiment_by_name(self.sweep_name)
            if experiment is None or experiment.lifecycle_stage == "deleted":
                self.ensure_experiment()  # creates it, or says how to restore a deleted one
            else:
                self.experiment_id = experiment.experiment_id
                self.experiment_tags = dict(experiment.tags)
        oldest = self.oldest_parent_run_id()
        if oldest is None:
            created = self.client.create_run(
                self.experiment_id, tags={TAG_SWEEP: self.sweep_name, TAG_ROLE: ROLE_PARENT},
                run_name=self.sweep_name).info.run_id
            oldest = self.oldest_parent_run_id()
            if oldest != created:
                self.client.delete_run(created)  # another driver's is older: use that one
            else:
                self.created_parent_run_id = created
        self.parent_run_id = oldest
        return oldest

    def drop_created_parent_run(self, run_id: str) -> None:
        """Delete ``run_id`` if this tracker created it (a first run that lost a race to
        another driver's older parent run); else leave it."""
        if self.created_parent_run_id == run_id:
            self.client.delete_run(run_id)
            self.created_parent_run_id = None

    def oldest_parent_run_id(self) -> str | None:
        """The oldest active parent run (start time, then run id: one answer for every
        driver), or None."""
        runs = sorted(self._parent_runs(), key=lambda run: (run.info.start_time or 0,
                                                            run.info.run_id))
        return runs[0].info.run_id if runs else None

    def start_parent_run(self, spec_raw: dict, trial_count: int) -> str:
        """The sweep's parent run, set to RUNNING: the oldest active one (the one
        ``open_or_create_parent_run`` found and the lease is on), created when there is none.

        Logs ``spec_raw`` as ``spec.yaml`` (replacing an earlier one) and tags the trial count.
        """
        experiment_id = self._experiment_or_create()
        existing = self.oldest_parent_run_id()
        tags = {TAG_SWEEP: self.sweep_name, TAG_ROLE: ROLE_PARENT,
                TAG_TRIAL_COUNT: str(trial_count)}
        if existing:
            run_id = existing
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            run_id = self.client.create_run(experiment_id, tags=tags,
                                            run_name=self.sweep_name).info.run_id
        self.client.log_text(run_id, yaml.safe_dump(spec_raw, sort_keys=False), SPEC_ARTIFACT)
        self.parent_run_id = run_id
        return run_id

    def create_trial_runs(self, trials: Iterable[TrialLike], parent_run_id: str,
                          positions: dict[str, int] | None = None) -> dict[str, str]:
        """One child run per trial (SCHEDULED), or the trial's existing run: trial_id -> run_id.

        One search finds the existing runs; a new run costs three requests (create with its
        tags, log_batch of params, status SCHEDULED). An existing run keeps its status, params
        and tags (``xmem.attempts`` included); what it lacks (a crash between those requests)
        is added, and ``mlflow.parentRunId`` is pointed at ``parent_run_id``. ``positions``
        (trial id -> place in the spec's order) sets ``xmem.trial_index``.
        """
        experiment_id = self._experiment_or_create()
        existing = {run.data.tags[TAG_TRIAL_ID]: run for run in self._trial_run_list()}
        commit = code_commit()
        run_ids: dict[str, str] = {}
        for trial in trials:
            params = config_params(trial.config)
            tags = {TAG_PARENT_RUN: parent_run_id, TAG_SWEEP: self.sweep_name,
                    TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_ID: trial.trial_id,
                    TAG_VERSION: workers.__version__}
            if positions is not None:
                tags[TAG_TRIAL_INDEX] = runs_view.trial_index(positions[trial.trial_id])
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
                # run replaces one that was deleted) and the place in the spec.
                stale = {k: v for k, v in tags.items() if k not in run.data.tags
                         or (k in (TAG_PARENT_RUN, TAG_TRIAL_INDEX) and run.data.tags[k] != v)}
                if TAG_ATTEMPTS not in run.data.tags:
                    stale[TAG_ATTEMPTS] = "0"
                if stale:
                    self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in stale.items()])
            run_ids[trial.trial_id] = run_id
        return run_ids

    def publish_trials_view(self, trial_ids: Sequence[str], varying_keys: Sequence[str]) -> None:
        """Write the trials view the printed link opens (``runs_view``): the experiment tag
        holding its state (rewritten only when the state changes), and each trial run's
        ``xmem.trial_index`` (its place in ``trial_ids``, the spec's order; set only where it
        differs, so a rerun of an unchanged spec sends nothing but one search).

        Call it after ``create_trial_runs`` (which indexes the runs it creates or reuses):
        every trial has a run then.
        """
        experiment_id = self._experiment_or_create()
        value = runs_view.trials_view_tag(varying_keys, len(trial_ids), int(time.time() * 1000))
        old = _view_envelope(self.experiment_tags.get(runs_view.TRIALS_VIEW_TAG))
        new = json.loads(value)
        if old.get("state") != new["state"]:
            if "createdAt" in old:   # keep the view's age; mark it updated
                value = json.dumps({**new, "createdAt": old["createdAt"]})
            self.client.set_experiment_tag(experiment_id, runs_view.TRIALS_VIEW_TAG, value)
            self.experiment_tags[runs_view.TRIALS_VIEW_TAG] = value
        runs = {run.data.tags[TAG_TRIAL_ID]: run for run in self._trial_run_list()}
        for position, trial_id in enumerate(trial_ids):
            run = runs.get(trial_id)
            index = runs_view.trial_index(position)
            if run is not None and run.data.tags.get(TAG_TRIAL_INDEX) != index:
                self.client.set_tag(run.info.run_id, TAG_TRIAL_INDEX, index)

    def run_tags(self, run_id: str) -> dict[str, str]:
        """A run's tags, as the server has them now."""
        return dict(self.client.get_run(run_id).data.tags)

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set ``tags`` on a run in one request."""
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def tag_parent_run(self, tags: dict[str, str]) -> None:
        """Set tags on this sweep's parent run (after ``start_parent_run``)."""
        self.client.log_batch(self.parent_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def mark_trial_failed(self, run_id: str, error_text: str) -> None:
        """End a trial's run FAILED from the driver, with ``error.txt``: for a worker that
        died without a word (killed, out of memory) and so could not end its run itself.
        Its ``xmem.error`` is the first line of ``error_text`` (Tune's), its kind a crash."""
        summary = first_line(error_text)
        with env_defaults(QUIET_CLIENT_ENV):
            self.client.log_text(run_id, error_text, ERROR_ARTIFACT)
            self.client.log_batch(run_id, tags=[
                RunTag(TAG_STATUS, STATUS_FAILED), RunTag(TAG_ERROR_KIND, ERROR_CRASH),
                RunTag(TAG_ERROR, summary[:ERROR_SUMMARY_LENGTH])])
            self.client.set_terminated(run_id, status=RUN_FAILED)

    def mark_trial_interrupted(self, run_id: str) -> bool:
        """End a trial's run KILLED with ``xmem.status`` interrupted, from the driver, when it is
        still RUNNING: its worker was stopped by Ctrl-C / SIGTERM before it could say so
        itself. No ``error.txt``: nothing failed, and a rerun resumes the run. Returns whether
        it marked the run (a worker that ended it meanwhile, finished or interrupted, wins)."""
        with env_defaults(QUIET_CLIENT_ENV):
            if self.client.get_run(run_id).info.status != RUN_RUNNING:
                return False
            self.client.log_batch(run_id, tags=[RunTag(TAG_STATUS, STATUS_INTERRUPTED)])
            self.client.set_terminated(run_id, status=RUN_KILLED)
        return True

    def finish_parent_run(self, status: str = RUN_FINISHED) -> None:
        """End the parent run with ``status`` (FINISHED, FAILED or KILLED)."""
        parent_run_id = self.find_parent_run_id()
        with env_defaults(QUIET_CLIENT_ENV):
            self.client.set_terminated(parent_run_id, status=status)

    def experiment_url(self) -> str:
        """The link to the sweep's trials in the MLflow UI (``runs_view.runs_url``) for an
        http(s) server; else a description of where the experiment is."""
        experiment_id = self._experiment_or_create()
        if runs_view.is_served(self.tracking_uri):
            return runs_view.runs_url(self.tracking_uri, experiment_id, self.has_trials_view())
        return f"experiment {experiment_id} in {self.tracking_uri}"

    def log_to_parent_run(self, folder: str | os.PathLike, artifact_path: str | None = None) -> str:
        """Upload every file under ``folder`` to the parent run, under ``artifact_path``
        (files of the same name are replaced); returns the parent run's id."""
        run_id = self.find_parent_run_id()
        with read_client_env(), server_errors(self.tracking_uri):
            self.client.log_artifacts(run_id, str(folder), artifact_path)
        return run_id

    def _experiment_or_create(self) -> str:
        return self.experiment_id if self.experiment_id is not None else self.ensure_experiment()

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])


def _view_envelope(value: str | None) -> dict:
    """A saved-view tag's envelope (name, createdAt, state); {} when absent or unreadable."""
    try:
        envelope = json.loads(value) if value else {}
    except ValueError:
        return {}
    return envelope if isinstance(envelope, dict) else {}
