"""Ray Tune on the driver: connect to a cluster and run a sweep's trials. The only orchestrator
module that imports ray (Ray's API has changed often; it stays behind this one file).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from workers.errors import XmemError

# Tune must not move trial processes into per-trial folders: relative paths in trial configs
# (data_dir, data_file) are made absolute by the driver anyway, and a stable working
# directory keeps caches and logs where the user expects them.
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
# Tune's console output (configuration box, result tables, TensorBoard hints) would bury
# xmem's progress line and results table; the legacy reporter with verbose=0 prints nothing.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# MLflow is the store of results: Tune's auto-attached JSON, CSV and TensorBoard loggers would
# write every report a second and third time on the driver.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Said at every start of a local cluster; the user did not ask for the cluster and cannot act on it.
logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
# With the result loggers off (above) Tune's end-of-run analysis finds no result files and
# warns about every trial; the results are in MLflow.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


class _NoTuneRestoreAdvice(logging.Filter):
    """After a Ctrl-C Tune advises ``Tuner.restore(...)``; xmem resumes by rerunning the sweep
    (and says so), so that advice is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoTuneRestoreAdvice())

import ray  # noqa: E402
from ray import tune  # noqa: E402

from workers.contract import (PAYLOAD_KEY, REPORT_MEMBERS, RESULT_STATUSES,  # noqa: E402
                              STATUS_FAILED, STATUS_FINISHED, PackPayload)
from workers.tune_trial import run_tune_trial  # noqa: E402


@dataclass(frozen=True)
class ClusterInfo:
    address: str              # "local" for a cluster started by this process
    cpus: float
    gpus: float
    seconds_to_start: float
    nodes: int = 1            # alive nodes
    joined: str = ""
    """The GCS address of the cluster Ray actually joined (with no address, ``ray.init()``
    joins the one named by RAY_ADDRESS or by Ray's current-cluster file, if any)."""
    hosts: tuple[str, ...] = ()
    """Host names of the alive nodes, distinct and sorted."""
    driver_host: str = ""
    """This machine's host name."""

    @property
    def other_hosts(self) -> tuple[str, ...]:
        """Hosts with nodes that are not this machine (in another network namespace: a
        server on this machine's 127.0.0.1 is out of their reach)."""
        return tuple(host for host in self.hosts if host != self.driver_host)


def connect(address: str | None) -> ClusterInfo:
    """Join the Ray cluster at ``address``, or, when it is None, the cluster RAY_ADDRESS or
    Ray's current-cluster file names, else start a local one (what ``ray.init`` does)."""
    started = time.perf_counter()
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, ignore_reinit_error=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise XmemError(f"cannot connect to the Ray cluster at {address!r}: {error}\n"
                        "Check the address (ray status on the head node prints it), or drop "
                        "--address / RAY_ADDRESS to run on this machine.") from None
    resources = ray.cluster_resources()
    alive = [node for node in ray.nodes() if node["Alive"]]
    return ClusterInfo(address or "local", resources.get("CPU", 0.0), resources.get("GPU", 0.0),
                       time.perf_counter() - started, len(alive),
                       joined=ray.get_runtime_context().gcs_address,
                       hosts=tuple(sorted({node["NodeManagerHostname"] for node in alive})),
                       driver_host=socket.gethostname())


def run_on_a_worker_node(function: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Run ``function(*args)`` in one small Ray task (no CPU reserved) on a worker node: a node
    other than the head when there is one, else the head. Returns (which node, the result)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [node for node in ray.nodes() if node["Alive"]]
    workers = [node for node in alive if "node:__internal_head__" not in node["Resources"]]
    node = (workers or alive)[0]
    task = ray.remote(num_cpus=0)(function).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
    result = ray.get(task.remote(*args), timeout=120)
    return _node_name(node), result


def run_on_every_other_node(function: Callable[..., Any], *args: Any) -> list[tuple[str, Any]]:
    """Run ``function(*args)`` in one small Ray task (no CPU reserved) on every alive node but
    the one this driver is attached to. Returns [(which node, its result)]."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    own = ray.get_runtime_context().get_node_id()
    nodes = [node for node in ray.nodes() if node["Alive"] and node["NodeID"] != own]
    remote = ray.remote(num_cpus=0)(function)
    tasks = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node["NodeID"], soft=False)).remote(*args) for node in nodes]
    results = ray.get(tasks, timeout=120)
    return [(_node_name(node), result) for node, result in zip(nodes, results)]


def _node_name(node: dict[str, Any]) -> str:
    return f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}, host {node['NodeManagerHostname']})"


def free_gpu_memory() -> float | None:
    """Free memory (bytes) of the GPUs of a worker node, from nvidia-smi there (no GPU is
    reserved for asking); None when it cannot tell."""
    from workers.footprint import free_gpu_bytes

    try:
        _, free = run_on_a_worker_node(free_gpu_bytes)
    except Exception:  # any failure means: not known (the caller assumes a size)
        return None
    return free


def disconnect() -> None:
    ray.shutdown()


def _pack(trial: Any) -> PackPayload:
    """The xmem pack a Tune trial trains (from the payload in its config)."""
    return PackPayload.of_tune_config(trial.config)


class _ProgressCallback(tune.Callback):
    """Forwards Tune's events about packs to xmem's display, per member trial (the display
    knows nothing about Ray or packs)."""

    def __init__(self, listener: "TrialEvents"):
        self.listener = listener

    def on_trial_start(self, iteration, trials, trial, **info):
        for trial_id in _pack(trial).trial_ids():
            self.listener.trial_started(trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        members = result.get(REPORT_MEMBERS) or {}
        for trial_id, (epoch, status) in members.items():
            self.listener.trial_result(trial_id, epoch, status)
            if status in RESULT_STATUSES or status == STATUS_FAILED:
                self.listener.trial_completed(trial_id, status)

    def on_trial_recover(self, iteration, trials, trial, **info):
        for trial_id in _pack(trial).trial_ids():
            self.listener.trial_retrying(trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        members = (trial.last_result or {}).get(REPORT_MEMBERS) or {}
        for trial_id in _pack(trial).trial_ids():
            status = members.get(trial_id, [None, None])[1]
            self.listener.trial_completed(trial_id, status if status in RESULT_STATUSES
                                          or status == STATUS_FAILED else STATUS_FINISHED)

    def on_trial_error(self, iteration, trials, trial, **info):
        members = (trial.last_result or {}).get(REPORT_MEMBERS) or {}
        for trial_id in _pack(trial).trial_ids():
            status = members.get(trial_id, [None, None])[1]
            if status not in RESULT_STATUSES:
                self.listener.trial_completed(trial_id, STATUS_FAILED)

    def on_step_end(self, iteration, trials, **info):
        self.listener.tick()


class TrialEvents:
    """What the runner reports while trials run (see ``orchestrator.progress``)."""

    def trial_started(self, trial_id: str) -> None: ...
    def trial_result(self, trial_id: str, epoch: int | None, status: str | None) -> None: ...
    def trial_retrying(self, trial_id: str) -> None: ...
    def trial_completed(self, trial_id: str, status: str) -> None: ...
    def tick(self) -> None: ...


@dataclass(frozen=True)
class TrialsRun:
    """What ``run_trials`` saw."""

    errors: dict[str, str]
    """trial id -> error text, for every member of every pack that ended in error (after its
    retries); members that ended with a result before the error are included too (the
    caller checks their runs)."""
    interrupted: bool
    """Ctrl-C or SIGTERM stopped the run before every trial ended."""


def _interrupt_marker(signum, frame):
    """The SIGINT handler Tune finds and puts back after the first Ctrl-C: a second one
    raises KeyboardInterrupt, which leaves ``tuner.fit`` at once (no waiting for trials)."""
    raise KeyboardInterrupt


def _sigterm_as_ctrl_c(signum, frame):
    """SIGTERM, what clusters, batch schedulers and container runtimes send to stop a job,
    does what Ctrl-C does: it runs the SIGINT handler of the moment (Tune's the first time,
    ``_interrupt_marker`` after)."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # SIGINT ignored (a background job): stop anyway, at once
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def run_trials(sweep_name: str, packs: list[PackPayload], *, storage: str, cpu: float,
               gpu: float, max_concurrent: int | None, max_failures: int,
               events: TrialEvents, session: str) -> TrialsRun:
    """Run every pack as one Tune trial of one Tune experiment.

    Each pack holds ``cpu`` CPUs and ``gpu`` GPUs (fractions share a GPU between packs), is
    retried up to ``max_failures`` times from its latest checkpoint, and keeps its last two
    checkpoints under ``storage/<sweep_name>/<pack name>-<pack id>-<session>``: every
    invocation writes its own folders, so a resumed trial never overwrites the checkpoint it
    started from.

    Ctrl-C: Tune's own SIGINT handler stops the trials and returns; it puts back the handler
    it found, which is how this function learns of the interrupt (``TrialsRun.interrupted``).
    Tune stops a trial by raising SystemExit in its worker at its next report (the worker
    ends its runs interrupted, ``workers.tune_trial``) and ends the worker process seconds
    later. SIGTERM does the same (``_sigterm_as_ctrl_c``). A second Ctrl-C or SIGTERM raises
    KeyboardInterrupt out of this function at once; what the trials checkpointed is in
    storage, and the runs left RUNNING resume on the next rerun (``orchestrator.plan``).
    """
    names = {p.pack_id: p.name for p in packs}
    folders = {p.pack_id: f"{_dirname(p.name)}-{p.pack_id}-{session}" for p in packs}
    trainable = tune.with_resources(run_tune_trial, {"cpu": cpu, "gpu": gpu})
    tuner = tune.Tuner(
        trainable,
        param_space={PAYLOAD_KEY: tune.grid_search([p.to_dict() for p in packs])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,  # one worker process (and one torch import) per slot, not per pack
            trial_name_creator=lambda t: names[_pack(t).pack_id],
            trial_dirname_creator=lambda t: folders[_pack(t).pack_id],
        ),
        run_config=tune.RunConfig(
            name=sweep_name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[_ProgressCallback(events)],
            verbose=0,
        ),
    )
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main_thread else None
    previous_term = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    if in_main_thread:
        signal.signal(signal.SIGINT, _interrupt_marker)
        # Set after ray.init, which installs its own SIGTERM handlers (sys.exit in Python,
        # then a C one that aborts): this one replaces both while the trials run.
        signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        results = tuner.fit()
    finally:
        interrupted = in_main_thread and signal.getsignal(signal.SIGINT) is _interrupt_marker \
            and not _tune_sigint_disabled()
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
    # Results are matched to packs by their folder's name: a pack that failed before its
    # first report (its node cannot reach the storage, say) has no config in its result.
    pack_of_folder = {folder: pack for pack in packs for folder in [folders[pack.pack_id]]}
    errors = {trial_id: str(result.error) for result in results if result.error is not None
              for trial_id in pack_of_folder[result.path.rstrip("/").rsplit("/", 1)[-1]].trial_ids()}
    return TrialsRun(errors, interrupted)


def _dirname(name: str) -> str:
    """A pack name as a folder name ("s1-a+3" stays, anything odd becomes '_')."""
    return "".join(c if c.isalnum() or c in "-_.+=" else "_" for c in name)[:80]


def _tune_sigint_disabled() -> bool:
    """Whether the user turned Tune's SIGINT handler off (then Ctrl-C raises KeyboardInterrupt)."""
    return bool(int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")))
