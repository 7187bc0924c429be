"""``xmem sweep``: validate a spec, then run its trials on Ray Tune, tracked in MLflow.

The order matters for "nothing half created":
1. load and validate the spec and expand its trials (any problem: ConfigError, nothing made);
2. a dry run prints the trial table and stops here;
3. resolve address / tracking URI / storage (flag > environment > spec > default);
4. start a local MLflow server when no tracking URI is given, and Ray (both in parallel);
5. create the experiment, the parent run and one child run per trial (driver side);
6. run the trials on Tune (workers log their own metrics and artifacts);
7. read the runs back from MLflow and print the results table and where to look next.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.resume import Action, TrialState, decide
from orchestrator.progress import SweepProgress, format_results_table, format_seconds
from orchestrator.spec import SweepSpec, TrialPoint, expand_trials, format_trial_table, load_spec, resolve_setting
from workers import metrics
from workers.config import TrialConfig
from workers.errors import XmemError
from workers.run_tags import TAG_SPEC_PATH, TAG_STATUS, TAG_STORAGE

DEFAULT_STORAGE = "xmem-runs"
MLFLOW_FOLDER = "mlflow"
TABLE_METRICS = (metrics.TRAIN_ACC, metrics.TEST_BEST_ACC, metrics.ALIGN_GRAD)


@dataclass(frozen=True)
class SweepSettings:
    address: str | None
    tracking_uri: str | None
    storage: str
    sources: dict[str, str]  # setting -> where it came from (flag, environment, spec, default)


@dataclass
class SweepOutcome:
    spec: SweepSpec
    trials: list[TrialPoint]
    rows: list[dict[str, Any]]
    tracking_uri: str
    experiment_url: str
    timings: dict[str, float]


def resolve_settings(spec: SweepSpec, address: str | None, tracking_uri: str | None,
                     storage: str | None, environ=os.environ) -> SweepSettings:
    """Flag > environment (RAY_ADDRESS, MLFLOW_TRACKING_URI) > spec > embedded default."""
    address_setting = resolve_setting(address, "RAY_ADDRESS", None, None, environ)
    uri_setting = resolve_setting(tracking_uri, "MLFLOW_TRACKING_URI", spec.tracking_uri, None, environ)
    storage_setting = resolve_setting(storage, None, spec.storage, DEFAULT_STORAGE, environ)
    storage_value = storage_setting.value
    if "://" not in storage_value:
        storage_value = str(Path(storage_value).expanduser().resolve())
    else:
        _check_storage_uri(storage_value, storage_setting.source)
    if uri_setting.value is None and not _is_local_address(address_setting.value):
        raise XmemError(
            f"the Ray cluster at {address_setting.value} ({address_setting.source}) runs trials on other "
            "machines, which cannot reach an embedded tracking server on 127.0.0.1.\nGive a tracking "
            "server every node reaches: --tracking-uri http://HOST:5000 (or MLFLOW_TRACKING_URI, or "
            "tracking_uri in the spec); docker/README.md shows how to run one. Use --storage on a shared "
            "filesystem or s3:// as well, so that trials can resume on any node.")
    return SweepSettings(address_setting.value, uri_setting.value, storage_value, {
        "address": address_setting.source, "tracking_uri": uri_setting.source,
        "storage": storage_setting.source})


def _is_local_address(address: str | None) -> bool:
    """None/"local"/"auto" or a cluster on this machine (its workers share 127.0.0.1)."""
    if address in (None, "", "local", "auto"):
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def _check_storage_uri(storage: str, source: str) -> None:
    import pyarrow.fs as pafs

    try:
        pafs.FileSystem.from_uri(storage)
    except Exception as error:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
        raise XmemError(f"storage {storage!r} ({source}) is not a usable location: {error}\n"
                        "Use a local or shared folder (/nfs/xmem-runs) or s3://bucket/prefix.") from None


def local_mlflow_root(storage: str) -> Path:
    """Where the embedded MLflow server keeps its SQLite file and artifacts."""
    if "://" in storage:  # remote Tune storage: keep the local store beside the user
        return Path(DEFAULT_STORAGE).resolve() / MLFLOW_FOLDER
    return Path(storage) / MLFLOW_FOLDER


def worker_config(config: TrialConfig) -> TrialConfig:
    """The config a worker receives: relative paths made absolute against the driver's working
    directory (workers run elsewhere); ``~`` is left for each worker to expand in its own home."""
    def absolute(path: str) -> str:
        if "://" in path or path.startswith("~") or Path(path).is_absolute():
            return path
        return str(Path(path).resolve())

    changes: dict[str, Any] = {"data_dir": absolute(config.data_dir)}
    if config.data_file:
        changes["data_file"] = absolute(config.data_file)
    return dataclasses.replace(config, **changes)


def varying_keys(trials: list[TrialPoint]) -> list[str]:
    keys: list[str] = []
    for trial in trials:
        keys += [k for k in trial.varying if k not in keys]
    return keys


def run_sweep(spec_path: str, *, address: str | None = None, tracking_uri: str | None = None,
              storage: str | None = None, dry_run: bool = False, restart_failed: bool = False,
              store: str | None = None, echo: Callable[[str], None] = print,
              live: bool = False) -> SweepOutcome | None:
    """Run (or, with ``dry_run``, only show) the sweep in ``spec_path``. See the module doc.

    Rerunning a sweep that exists in the tracking server resumes it (``orchestrator.resume``):
    finished trials are kept, interrupted or failed ones continue from their latest
    checkpoint (``restart_failed``: failed ones start over), new grid points run.

    ``store``: the folder of the embedded MLflow server when there is no tracking URI
    (default ``<storage>/mlflow``).
    """
    started = time.perf_counter()
    spec = load_spec(spec_path)
    trials = expand_trials(spec)
    if dry_run:
        echo(f"sweep {spec.name}: {len(trials)} trial(s)")
        echo(format_trial_table(trials))
        return None

    from orchestrator import tracking, tune_runner  # heavy imports only past validation
    from orchestrator.checkpoints import delete_checkpoints, latest_checkpoints

    settings = resolve_settings(spec, address, tracking_uri, storage)
    timings: dict[str, float] = {}
    server = None
    if settings.tracking_uri is not None:
        tracking.check_reachable(settings.tracking_uri)
    else:
        # Started first and awaited after Ray is up: the two start-ups overlap. (Started from
        # this thread: the server dies with the thread that forked it.)
        server = tracking.start_local_server(Path(store) if store else local_mlflow_root(settings.storage),
                                             wait=False)
    try:
        cluster = tune_runner.connect(settings.address)
        timings["ray_start_s"] = cluster.seconds_to_start
        if server is not None:
            server.wait_until_ready()
            timings["mlflow_start_s"] = time.perf_counter() - started
    except BaseException:
        if server is not None:
            server.stop()
        raise
    uri = settings.tracking_uri or server.uri
    try:
        _check_resources_fit(spec, cluster)
        echo(f"sweep {spec.name}: {len(trials)} trial(s) on Ray ({cluster.address}: "
             f"{cluster.cpus:g} CPU, {cluster.gpus:g} GPU), tracking {uri}"
             + (" (embedded server)" if server else ""))
        tracker = tracking.SweepTracker(uri, spec.name)
        tracker.ensure_experiment(spec.description)
        parent_run_id = tracker.start_parent_run(spec.raw, len(trials))
        tracker.tag_parent_run({TAG_STORAGE: settings.storage, TAG_SPEC_PATH: str(Path(spec_path).resolve())})

        plan = plan_sweep(trials, tracker.trial_runs(), latest_checkpoints(settings.storage, spec.name),
                          restart_failed)
        for line in plan.describe():
            echo(line)
        restarting = {tid for tid, action in plan.actions.items() if action is Action.RESTART}
        if restarting:
            delete_checkpoints(settings.storage, spec.name, restarting)  # they start over
        run_ids = tracker.create_trial_runs(plan.to_run, parent_run_id)

        from workers.tune_trial import trial_payload

        payloads = [trial_payload(worker_config(t.config), t.trial_id, t.name, run_ids[t.trial_id], uri,
                                  resume_from=plan.checkpoints.get(t.trial_id))
                    for t in plan.to_run]
        trials_started = time.perf_counter()
        if payloads:
            progress = SweepProgress({t.trial_id: t.config.epochs for t in plan.to_run}, echo=echo, live=live)
            errors = tune_runner.run_trials(
                spec.name, payloads, storage=settings.storage, cpu=spec.resources.cpu,
                gpu=spec.resources.gpu, max_concurrent=spec.max_concurrent,
                max_failures=spec.max_failures, events=progress, session=time.strftime("%Y%m%d-%H%M%S"))
            progress.close()
        timings["trials_s"] = time.perf_counter() - trials_started

        runs = tracker.trial_runs()
        for trial_id, error in (errors if payloads else {}).items():
            run = runs.get(trial_id)
            if run is not None and run.run_status not in ("FINISHED", "FAILED"):
                tracker.mark_trial_failed(run.run_id, error)  # its worker died silently
        runs = tracker.trial_runs() if payloads and errors else runs
        rows = [_result_row(trial, runs.get(trial.trial_id)) for trial in trials]
        failed = sum(row["status"] == "failed" for row in rows)
        tracker.finish_parent_run("FAILED" if failed else "FINISHED")
        url = tracker.experiment_url()
    finally:
        tune_runner.disconnect()
        if server is not None:
            server.stop()
    timings["total_s"] = time.perf_counter() - started
    keys = varying_keys(trials)
    echo("")
    echo(format_results_table(rows, keys))
    echo("")
    echo(f"{len(trials)} trial(s) in {format_seconds(timings['total_s'])} "
         f"(Ray start-up {timings['ray_start_s']:.1f} s"
         + (f", MLflow server ready after {timings['mlflow_start_s']:.1f} s" if server else "") + ")")
    if failed:
        echo(f"{failed} trial(s) failed (error.txt in their MLflow runs). Rerun to resume them: "
             f"xmem sweep {spec_path}  (or add --restart-failed to start them over)")
    if server is not None:
        echo(f"Browse the runs: xmem ui --store {server.root}   (MLflow experiment '{spec.name}')")
    else:
        echo(f"Browse the runs: {url}")
    return SweepOutcome(spec, trials, rows, uri, url, timings)


def _check_resources_fit(spec: SweepSpec, cluster: Any) -> None:
    """A trial asking for more than the whole cluster has would wait forever: say so now."""
    short = [f"{kind} {need:g} (the cluster has {have:g})"
             for kind, need, have in (("cpu", spec.resources.cpu, cluster.cpus),
                                      ("gpu", spec.resources.gpu, cluster.gpus)) if need > have]
    if short:
        raise XmemError(f"{spec.path}: resources: each trial asks for {' and '.join(short)}; no trial "
                        "could ever start. Lower resources in the spec, or join a bigger cluster with "
                        "--address.")


@dataclass
class SweepPlan:
    """What this invocation does with each trial (``orchestrator.resume.decide``)."""

    actions: dict[str, Action]           # trial id -> action
    to_run: list[TrialPoint]             # every trial not skipped, in spec order
    checkpoints: dict[str, str]          # trial id -> checkpoint to resume from (RESUME only)
    stale_runs: list[str]                # names of runs whose trial id is not in the spec

    def describe(self) -> list[str]:
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
        return lines


def plan_sweep(trials: list[TrialPoint], runs: dict[str, Any], checkpoints: dict[str, str],
               restart_failed: bool) -> SweepPlan:
    """Apply the resume decision to every trial, given the tracker's runs by trial id
    (``tracking.TrialRecord``: ``run_status``, ``tags``, ``name``)."""
    actions: dict[str, Action] = {}
    for trial in trials:
        run = runs.get(trial.trial_id)
        state = TrialState(run_status=run.run_status if run else None,
                           xmem_status=run.tags.get(TAG_STATUS) if run else None,
                           checkpoint=checkpoints.get(trial.trial_id))
        actions[trial.trial_id] = decide(state, restart_failed)
    ids = set(actions)
    return SweepPlan(
        actions=actions,
        to_run=[t for t in trials if actions[t.trial_id] is not Action.SKIP],
        checkpoints={tid: checkpoints[tid] for tid, a in actions.items() if a is Action.RESUME},
        stale_runs=sorted(run.name for tid, run in runs.items() if tid not in ids),
    )


def _result_row(trial: TrialPoint, run: Any) -> dict[str, Any]:
    """One row of the end-of-sweep table from the trial's run (a ``tracking.TrialRecord``)."""
    from orchestrator.results import trial_status

    row: dict[str, Any] = {"name": trial.name, "trial_id": trial.trial_id, **trial.varying}
    if run is None:
        row["status"] = None
        return row
    row["status"] = trial_status(run.tags, run.run_status)
    row["run_id"] = run.run_id
    for name in TABLE_METRICS:
        row[name] = run.latest[name][1] if name in run.latest else None
    return row
