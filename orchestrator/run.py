"""``xmem sweep``: validate a spec, then run its trials on Ray Tune, tracked in MLflow.

``run_sweep`` is a few named steps, in an order that keeps "nothing half created":

1. **load**: read and validate the spec, expand its trials (any problem: ConfigError, nothing
   made); a dry run prints the trial table and stops here;
2. **preflight and services**: resolve address / tracking URI / storage (flag > environment >
   spec > default); check every dataset source, folder and server the driver can see
   (``orchestrator.preflight``); start an embedded MLflow server when there is no tracking URI,
   and Ray (the two start-ups overlap); check the resources against the cluster. Every
   problem of this step is reported together, and nothing is left behind;
3. **plan**: create or find the experiment and the parent run, take the sweep's lease (one
   driver per sweep: ``orchestrator.tracking.lease``; released when the sweep ends, however it
   ends), decide what to do with every
   trial (``orchestrator.plan``), create or find one child run per trial, and write the
   trials view that the printed link opens (``orchestrator.tracking.runs_view``);
4. **launch**: run the trials on Tune (workers log their own metrics and artifacts);
5. **reconcile**: end FAILED the runs of trials whose workers died without a word, and, after
   an interrupt, end *interrupted* (KILLED) the runs that were stopped before they said so;
6. **summarize**: read the runs back, end the parent run, print the results table and where
   to look next (a link to the trials in the MLflow UI).

Interrupts: Ctrl-C or SIGTERM while the trials run stops them as interrupted, not failed
(``orchestrator.tune_runner.run_trials``), and the sweep exits 130 after its table and a line on how
to continue. A second one exits at once: the runs left RUNNING resume from their checkpoints
on the next rerun (``orchestrator.plan``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from orchestrator import packing
from orchestrator.expand import TrialPoint, expand_trials, shown_keys
from orchestrator.plan import SweepPlan, ended_with_result, plan_sweep
from orchestrator.progress import (RESULTS_TABLE_METRICS, SweepProgress, closing_advice,
                                   format_results_table, format_trial_table)
from orchestrator.settings import SweepSettings, local_mlflow_root, resolve_settings
from orchestrator.spec import SweepSpec, load_spec
from orchestrator.text import count, format_seconds
from orchestrator.tracking.records import TrialRecord
from workers.config import TrialConfig
from workers.contract import (RESULT_STATUSES, RUN_FAILED, RUN_FINISHED, RUN_KILLED, RUN_RUNNING,
                              TAG_SPEC_PATH, TAG_STORAGE, TAG_WORKDIR, PackPayload, TrialPayload)

# Exit codes of xmem sweep / resume beyond 0 (done) and 2 (a user error before the start).
EXIT_UNFINISHED, EXIT_INTERRUPTED = 1, 130

if TYPE_CHECKING:  # heavy modules, imported by the steps that need them
    from orchestrator.tracking.lease import SweepLease
    from orchestrator.tracking.server import LocalTrackingServer
    from orchestrator.tracking.writer import SweepTracker
    from orchestrator.tune_runner import ClusterInfo


@dataclass
class SweepOutcome:
    spec: SweepSpec
    trials: list[TrialPoint]
    rows: list[dict[str, Any]]
    tracking_uri: str
    experiment_url: str
    timings: dict[str, float]
    interrupted: bool = False
    """Ctrl-C (SIGINT) or SIGTERM stopped the trials before they ended."""
    browse: str = ""
    """The last line printed: where to look at the trials in the MLflow UI."""

    @property
    def exit_code(self) -> int:
        """0: every trial finished or diverged; 130: interrupted (Ctrl-C or SIGTERM); 1: some
        trials failed or did not finish (the output says how to continue)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return 0 if all(row["status"] in RESULT_STATUSES for row in self.rows) else EXIT_UNFINISHED


@dataclass(frozen=True)
class SpecOrigin:
    """Where a sweep run from a copy of its spec (``xmem resume``: the spec artifact stored
    with the sweep) really comes from."""

    spec_path: str
    """The spec file the sweep ran from (recorded again on the parent run, shown in advice)."""
    workdir: str
    """The folder relative ``data_dir`` / ``data_file`` paths resolved against when the sweep
    ran (its driver's working directory)."""
    command: str
    """The command that reruns the sweep (``xmem resume NAME``)."""


@dataclass
class _Services:
    """What the services step started or joined (stop them with ``stop``)."""

    cluster: "ClusterInfo"
    server: "LocalTrackingServer | None"
    uri: str

    def stop(self) -> None:
        from orchestrator import tune_runner

        tune_runner.disconnect()
        if self.server is not None:
            self.server.stop()


def run_sweep(spec_path: str, *, address: str | None = None, tracking_uri: str | None = None,
              storage: str | None = None, dry_run: bool = False, restart_failed: bool = False,
              store: str | None = None, echo: Callable[[str], None] = print,
              live: bool = False, take_over: bool = False,
              origin: SpecOrigin | None = None) -> SweepOutcome | None:
    """Run (or, with ``dry_run``, only show) the sweep in ``spec_path``. See the module doc.

    Rerunning a sweep that exists in the tracking server resumes it (``orchestrator.plan``):
    finished trials are kept, interrupted or failed ones continue from their latest
    checkpoint (``restart_failed``: failed ones start over), new grid points run.

    ``store``: the folder of the embedded MLflow server when there is no tracking URI
    (default ``<storage>/mlflow``). ``take_over``: take the sweep's lease from the driver
    holding it (``orchestrator.tracking.lease``). ``origin``: ``spec_path`` is a copy of the
    sweep's spec (``xmem resume``); relative data paths resolve against ``origin.workdir``
    instead of the working directory.

    Raises:
        XmemError: a bad spec or setting, a preflight problem, another driver holding the
            sweep's lease, or a tracking server that stopped answering the driver.
    """
    started = time.perf_counter()
    spec = load_spec(spec_path)
    trials = expand_trials(spec)
    if dry_run:
        echo(f"sweep {spec.name}: {len(trials)} trial(s)")
        sizing = packing.decide_size(spec.packing, trials, gpu_per_pack=spec.resources.gpu,
                                     cluster_gpus=0, free_gpu_bytes=None)
        packs = packing.group_into_packs(trials, sizing.cap)
        echo(format_trial_table(trials, [[t.trial_id for t in p.members] for p in packs]))
        echo(_packing_line(spec, sizing, trials))
        return None

    # Trial ids are computed from the paths as written; the configs sent out hold them
    # resolved, against the folder they resolved against when the sweep first ran.
    workdir = Path(origin.workdir) if origin else Path.cwd()
    trials = [dataclasses.replace(t, config=worker_config(t.config, workdir)) for t in trials]
    shown_path = origin.spec_path if origin else spec_path
    settings = resolve_settings(spec, address, tracking_uri, storage)
    timings: dict[str, float] = {}
    services = _preflight_and_start(spec, shown_path, trials, settings, store, timings, started)
    lease: "SweepLease | None" = None
    rerun = origin.command if origin else f"xmem sweep {spec_path}"
    try:
        echo(f"sweep {spec.name}: {len(trials)} trial(s) on Ray ({services.cluster.address}: "
             f"{services.cluster.cpus:g} CPU, {services.cluster.gpus:g} GPU), tracking {services.uri}"
             + (" (embedded server)" if services.server else ""))
        from orchestrator.tracking.writer import SweepTracker

        from orchestrator.checkpoints import check_storage_readable
        from orchestrator.tracking.lease import take_lease

        # An unreadable storage (expired credentials, a stale mount) stops the sweep before
        # anything is created in the tracking server; _plan scans it in full under the lease.
        check_storage_readable(settings.storage, spec.name)
        tracker = SweepTracker(services.uri, spec.name)
        lease = take_lease(tracker, take_over=take_over, echo=echo, command=rerun)
        plan, run_ids, start_epochs = _plan(tracker, spec, shown_path, trials, settings,
                                            restart_failed, echo, workdir)
        trials_started = time.perf_counter()
        errors, interrupted = _launch(spec, plan, run_ids, start_epochs, services, settings,
                                      echo, live)
        timings["trials_s"] = time.perf_counter() - trials_started
        runs = _reconcile(tracker, errors, interrupted, [t.trial_id for t in plan.to_run])
        _prune_checkpoints(tracker, runs, settings, spec, echo)
        rows = [_result_row(trial, runs.get(trial.trial_id)) for trial in trials]
        done = all(row["status"] in RESULT_STATUSES for row in rows)
        tracker.finish_parent_run(RUN_KILLED if interrupted else RUN_FINISHED if done else RUN_FAILED)
        url = tracker.experiment_url()
        # The embedded server stops with the sweep: xmem ui serves its store afterwards.
        browse = tracker.browse_line(store=str(services.server.root) if services.server else None)
    except KeyboardInterrupt:  # Ctrl-C outside the trials, or a second one: no waiting, no table
        echo(f"\nStopped at once; the trials' runs are left as they were. Rerun "
             f"`{rerun}` to continue from their checkpoints.")
        raise
    finally:
        if lease is not None:
            lease.release(echo)
        services.stop()
    timings["total_s"] = time.perf_counter() - started
    outcome = SweepOutcome(spec, trials, rows, services.uri, url, timings, interrupted, browse)
    _summarize(outcome, shown_path, services.server, echo)
    return outcome


# --- the steps ------------------------------------------------------------------------------

def _preflight_and_start(spec: SweepSpec, spec_path: str, trials: list[TrialPoint],
                         settings: SweepSettings, store: str | None, timings: dict[str, float],
                         started: float) -> _Services:
    """Every problem preflight can see (``orchestrator.preflight``), raised together before
    anything is created; else the started services."""
    from orchestrator import preflight

    root = None
    if settings.tracking_uri is None:
        root = (Path(store) if store else local_mlflow_root(settings.storage)).expanduser().resolve()
    problems = preflight.local_problems(settings, root)
    # The embedded server makes its folder: only when nothing is wrong so far, and removed
    # again when a check of the cluster fails (or anything else does before the sweep starts).
    created = _first_missing(root) if root is not None and not problems else None
    services = _start_services(settings, root if not problems else None, timings, started)
    try:
        configs = [worker_config(trial.config) for trial in trials]
        problems += preflight.data_problems(trials, configs, services.cluster)
        problems += preflight.cluster_problems(spec, services.cluster)
        problems += preflight.placement_problems(settings, services.cluster)
        if problems:
            raise preflight.report(spec_path, problems)
    except BaseException:
        services.stop()
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return services


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (None: it exists)."""
    missing = None
    while not folder.exists():
        missing, folder = folder, folder.parent
    return missing


def _start_services(settings: SweepSettings, root: Path | None, timings: dict[str, float],
                    started: float) -> _Services:
    """Join Ray, and start the embedded tracking server over ``root`` (None: none); stop
    what started on any error."""
    from orchestrator import tune_runner
    from orchestrator.tracking import server as tracking_server

    server = None
    if root is not None:
        # Started first and awaited after Ray is up: the two start-ups overlap. (Started from
        # this thread: the server dies with the thread that forked it.)
        server = tracking_server.start_local_server(root, wait=False)
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
    return _Services(cluster, server, settings.tracking_uri or (server.uri if server else ""))


def _plan(tracker: "SweepTracker", spec: SweepSpec, spec_path: str, trials: list[TrialPoint],
          settings: SweepSettings, restart_failed: bool, echo: Callable[[str], None],
          workdir: Path) -> tuple[SweepPlan, dict[str, str], dict[str, int]]:
    """The experiment, the parent run, the resume plan, and a run per trial to run:
    (the plan, trial id -> run id, trial id -> the epoch it resumes from). Call it holding
    the sweep's lease (``take_lease`` found the parent run)."""
    from orchestrator.checkpoints import delete_checkpoints, resume_candidates, scan_checkpoints

    # First: an unreadable storage (expired credentials, a stale mount) stops the sweep here,
    # before any trial restarts or any checkpoint is deleted.
    found = scan_checkpoints(settings.storage, spec.name)
    tracker.ensure_experiment(spec.description)
    parent_run_id = tracker.start_parent_run(spec.raw, len(trials))
    tracker.tag_parent_run({TAG_STORAGE: settings.storage,
                            TAG_SPEC_PATH: str(Path(spec_path).resolve()),
                            TAG_WORKDIR: str(workdir)})
    runs, run_ids = tracker.trial_runs_and_run_ids()
    # Hashes are checked only for trials that may resume (a finished one needs no checkpoint).
    unfinished = {t.trial_id for t in trials if not ended_with_result(runs.get(t.trial_id))}
    checkpoints = resume_candidates(found, run_ids, unfinished, settings.storage)
    plan = plan_sweep(trials, runs, checkpoints, restart_failed)
    for line in plan.describe():
        echo(line)
    if plan.restarting:
        delete_checkpoints(settings.storage, spec.name, plan.restarting)  # they start over
    start_epochs = plan.start_epochs
    positions = {trial.trial_id: position for position, trial in enumerate(trials)}
    run_ids = tracker.create_trial_runs(plan.to_run, parent_run_id, positions)
    tracker.publish_trials_view([trial.trial_id for trial in trials], shown_keys(trials))
    return plan, run_ids, start_epochs


def _launch(spec: SweepSpec, plan: SweepPlan, run_ids: dict[str, str],
            start_epochs: dict[str, int], services: _Services, settings: SweepSettings,
            echo: Callable[[str], None], live: bool) -> tuple[dict[str, str], bool]:
    """Run the plan's trials on Tune, grouped into packs, with a live progress display:
    (trial id -> error text for each trial that ended in error, whether Ctrl-C stopped them)."""
    if not plan.to_run:
        return {}, False
    from orchestrator import tune_runner

    free_bytes = None
    if spec.packing.max_size is None and spec.resources.gpu > 0:
        free_bytes = tune_runner.free_gpu_memory()
    sizing = packing.decide_size(spec.packing, plan.to_run, gpu_per_pack=spec.resources.gpu,
                                 cluster_gpus=services.cluster.gpus, free_gpu_bytes=free_bytes)
    packs = packing.group_into_packs(plan.to_run, sizing.cap, start_epochs)
    if any(len(p.members) > 1 for p in packs) or sizing.cap > 1:
        echo(f"{count(len(plan.to_run), 'trial')} in {count(len(packs), 'pack')} ({sizing.reason})")
    uri = services.uri
    payloads = [PackPayload(pack_id=p.pack_id, name=p.name, members=[
        TrialPayload(trial=worker_config(t.config).to_dict(), trial_id=t.trial_id, name=t.name,
                     run_id=run_ids[t.trial_id], tracking_uri=uri,
                     resume_from=plan.checkpoints.get(t.trial_id),
                     resume_fallbacks=plan.fallbacks.get(t.trial_id, [])).to_dict()
        for t in p.members]) for p in packs]
    progress = SweepProgress({t.trial_id: t.config.epochs for t in plan.to_run}, echo=echo,
                             live=live)
    ran = tune_runner.run_trials(
        spec.name, payloads, storage=settings.storage, cpu=spec.resources.cpu,
        gpu=spec.resources.gpu, max_concurrent=spec.max_concurrent,
        max_failures=spec.max_failures, events=progress,
        session=time.strftime("%Y%m%d-%H%M%S"))
    if ran.interrupted:
        progress.interrupted()
    progress.close()
    return ran.errors, ran.interrupted


def _prune_checkpoints(tracker: "SweepTracker", runs: dict[str, TrialRecord],
                       settings: SweepSettings, spec: SweepSpec, echo: Callable[[str], None]) -> None:
    """Once the trials ended (or were interrupted), remove the checkpoints no run needs
    (``orchestrator.checkpoints.prune_checkpoints``). Housekeeping: a failure is reported, and
    the sweep's results stand."""
    from orchestrator.checkpoints import prune_checkpoints
    from workers.errors import XmemError

    try:
        ended = {tid for tid, run in runs.items() if ended_with_result(run)}
        pruned = prune_checkpoints(settings.storage, spec.name, tracker.run_ids_by_trial(), ended)
    except XmemError as error:
        echo(f"warning: old checkpoints were not pruned: {str(error).splitlines()[0]}")
        return
    if pruned.removed:
        echo(f"checkpoints: removed {count(pruned.removed, 'checkpoint')} no run needs "
             f"(kept {pruned.kept}: at most 2 per unfinished trial)")


def _packing_line(spec: SweepSpec, sizing: "packing.PackSizing", trials: list[TrialPoint]) -> str:
    """The dry run's word on packing: the cap and, for auto on a GPU, that the launch decides."""
    if spec.packing.max_size is None and spec.resources.gpu > 0:
        return (f"packing auto: packs are sized at launch from the free memory of the cluster's "
                f"GPUs ({packing.footprint_line(trials)}); shown here for a "
                f"{packing.ASSUMED_GPU_BYTES / 2**30:.0f} GiB GPU")
    return sizing.reason


def _reconcile(tracker: "SweepTracker", errors: dict[str, str], interrupted: bool = False,
               ran: Sequence[str] = ()) -> dict[str, TrialRecord]:
    """The trials' runs after the launch, with the runs of workers that died silently
    (killed, out of memory: their run still RUNNING) ended FAILED with Tune's error; and, when
    the launch was ``interrupted``, the runs of trials in ``ran`` (trial ids this session ran)
    still RUNNING ended interrupted: Ray ends a stopped worker within seconds, often before it
    could end its runs itself (``workers.tune_trial``)."""
    runs = tracker.trial_runs()
    ended = (RUN_FINISHED, RUN_FAILED, RUN_KILLED)
    died = [(runs[tid].run_id, error) for tid, error in errors.items()
            if tid in runs and runs[tid].run_status not in ended]
    for run_id, error in died:
        tracker.mark_trial_failed(run_id, error)
    stopped = [runs[tid].run_id for tid in ran if interrupted and tid in runs and tid not in errors
               and runs[tid].run_status == RUN_RUNNING]
    for run_id in stopped:
        tracker.mark_trial_interrupted(run_id)
    return tracker.trial_runs() if died or stopped else runs


def _summarize(outcome: SweepOutcome, spec_path: str, server: "LocalTrackingServer | None",
               echo: Callable[[str], None]) -> None:
    """The results table, the timings, and what to do next."""
    timings = outcome.timings
    echo("")
    echo(format_results_table(outcome.rows, shown_keys(outcome.trials)))
    echo("")
    echo(f"{len(outcome.trials)} trial(s) in {format_seconds(timings['total_s'])} "
         f"(Ray start-up {timings['ray_start_s']:.1f} s"
         + (f", MLflow server ready after {timings['mlflow_start_s']:.1f} s" if server else "") + ")")
    for line in closing_advice(outcome.rows, f"xmem sweep {spec_path}"):
        echo(line)
    echo(outcome.browse or f"Browse the runs: {outcome.experiment_url}")


# --- helpers ----------------------------------------------------------------------------------

def worker_config(config: TrialConfig, base: str | os.PathLike | None = None) -> TrialConfig:
    """The config a worker receives: relative paths made absolute against ``base`` (default:
    the driver's working directory; workers run elsewhere); ``~`` is left for each worker to
    expand in its own home."""
    def absolute(path: str) -> str:
        if "://" in path or path.startswith("~") or Path(path).is_absolute():
            return path
        return str((Path(base) if base is not None else Path.cwd()).joinpath(path).resolve())

    changes: dict[str, Any] = {"data_dir": absolute(config.data_dir)}
    if config.data_file:
        changes["data_file"] = absolute(config.data_file)
    return dataclasses.replace(config, **changes)


def _result_row(trial: TrialPoint, run: TrialRecord | None) -> dict[str, Any]:
    """One row of the end-of-sweep table from the trial's run."""
    row: dict[str, Any] = {"name": trial.name, "trial_id": trial.trial_id, **trial.varying}
    if run is None:
        row["status"] = None
        return row
    row["status"] = run.status
    row["run_id"] = run.run_id
    row["error"], row["error_kind"] = run.error, run.error_kind
    for name in RESULTS_TABLE_METRICS:
        row[name] = run.last_value(name)
    return row
