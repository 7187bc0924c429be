"""The chaos test (issue 11): a sweep of 12 short CPU trials survives random kills, from a seeded
schedule, of its worker processes, its driver and its MLflow server, and ends exactly like an
uninterrupted run of the same trials.

Everything is real and started here, by process id: a Ray head (``tests/ray_nodes.py``, 2 CPUs),
an ``mlflow server`` (``start_local_server``), and each ``xmem sweep`` driver as a subprocess in
a session of its own. The reference is the same grid under another sweep name, run once without
interruption first: trial ids are hashes of the trial configs, so the two sweeps' series are
matched by trial id.

The schedule is drawn from ``random.Random(seed)``, the seed from ``XMEM_CHAOS_SEED`` (printed
first: rerun with the same seed to replay a failure's schedule; the moments still depend on the
machine's speed). Each kill waits for a condition, never a fixed time: "a trial whose worker is
alive has logged step N". After the schedule the driver is rerun until it exits 0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from orchestrator.tracking.server import LocalTrackingServer, start_local_server
from ray_nodes import RayCluster, _session_members
from workers import contract

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("XMEM_CHAOS_SEED", "11"))
EPOCHS = 24
# 3 sigmas x 2 seeds x 2 widths = 12 trials, one Ray worker slot per CPU. Batches of 2 make
# training (500 steps an epoch, 1-2 s a trial on an idle core) outlast the MLflow and Ray
# overheads around it, so that kills land mid-training. checkpoint_every 3: a kill loses at
# most 3 epochs; metrics are flushed at each checkpoint, which is how the schedule sees a
# trial's progress.
SPEC = """name: {name}
defaults:
  dataset: digits
  batch_size: 2
  train_size: 1000
  test_size: 200
  probe_per_class: 5
  epochs: {epochs}
  eval_every: 1
  align_every: 4
  checkpoint_every: 3
  data_dir: {data_dir}
grid:
  sigma: [0.1, 1.0, 10.0]
  seed: [0, 1]
  hidden: [64, 128]
packing: {{max_size: 1}}
max_failures: 3
"""
TRIALS = 12
WORKER_KILLS, DRIVER_KILLS, SERVER_KILLS = 4, 2, 1
OUTAGE_S = (5.0, 8.0)          # the server stays dead this long (then ~10 s to start again)
TRIGGER_STEPS = (4, EPOCHS - 6)  # a kill waits for a live trial that has logged this step
DRIVER_AGE_S = (3.0, 20.0)     # or, for a driver kill, for the driver to be this old (any phase)
FINAL_RERUNS = 4               # reruns after the schedule before the test gives up
DRIVER_TIMEOUT_S = 300         # one driver invocation, start to exit
EVENT_TIMEOUT_S = 240          # one kill's trigger condition


# --- processes started here --------------------------------------------------------------

@dataclass
class Drivers:
    """``xmem sweep`` invocations of one spec, each a subprocess in a session of its own, so
    that it and anything it forks is one process group to kill."""

    command: list[str]
    env: dict[str, str]
    log: Path
    sessions: list[int] = field(default_factory=list)
    process: subprocess.Popen | None = None
    started: float = 0.0
    """time.monotonic() of the current invocation's start."""
    exits: list[str] = field(default_factory=list)
    """How each invocation ended: "exit N" or "killed"."""

    def start(self) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            out.write(f"\n=== driver {len(self.sessions) + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        self.sessions.append(self.process.pid)
        self.started = time.monotonic()
        return self.process

    def kill(self) -> int:
        """SIGKILL the current invocation's process group; returns its pid."""
        pid = self.process.pid
        _killpg(pid)
        self.process.wait(timeout=30)
        self.exits.append("killed")
        return pid

    def poll(self) -> int | None:
        """The current invocation's exit code once it exited (recorded once), else None."""
        code = self.process.poll()
        if code is not None and len(self.exits) < len(self.sessions):
            self.exits.append(f"exit {code}")
        return code

    def wait(self, timeout_s: float = DRIVER_TIMEOUT_S) -> int:
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the driver ran longer than {timeout_s:g} s; log:\n{self.tail()}")
        return self.poll()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Kill whatever is left of every invocation (by the sessions started here)."""
        for session in self.sessions:
            _killpg(session)
        if self.process is not None and self.process.poll() is None:
            self.process.wait(timeout=30)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_session(session: int) -> None:
    for pid in _session_members(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Kill:
    at_s: float
    what: str
    pid: int
    detail: str


@dataclass
class Chaos:
    """The chaos run's moving parts: the server (replaced when it is restarted), the drivers,
    the kills so far, and every worker pid seen in an ``xmem.pid`` tag."""

    root: Path
    port: int
    server: LocalTrackingServer
    drivers: Drivers
    name: str
    started: float = field(default_factory=time.monotonic)
    kills: list[Kill] = field(default_factory=list)
    server_sessions: list[int] = field(default_factory=list)
    workers_seen: dict[int, float] = field(default_factory=dict)
    """pid -> its create time (psutil), for every live worker seen in a run's xmem.pid tag."""
    worker_killed_trials: set[str] = field(default_factory=set)
    workers_killed: set[int] = field(default_factory=set)
    """Workers killed, or whose driver was: never picked again."""
    problems: list[str] = field(default_factory=list)
    """What went wrong during the schedule (reported with the results)."""

    @property
    def uri(self) -> str:
        return self.server.uri

    def note(self, what: str, pid: int, detail: str) -> None:
        kill = Kill(time.monotonic() - self.started, what, pid, detail)
        self.kills.append(kill)
        print(f"  chaos t={kill.at_s:6.1f}s  {what:<7} pid {pid:<7} {detail}", flush=True)

    # --- what the runs say ---

    def live_trials(self) -> list[tuple[str, int, int]]:
        """(trial id, worker pid, last logged step) of every RUNNING run whose worker is alive."""
        found = []
        try:
            client = MlflowClient(self.uri)
            for run in _trial_runs(self.uri, self.name):
                tags = run.data.tags
                if run.info.status != contract.RUN_RUNNING or tags.get(contract.TAG_STATUS) != contract.STATUS_RUNNING:
                    continue
                pid = _live_worker(tags.get(contract.TAG_PID))
                if pid is None or pid in self.workers_killed:
                    continue
                self.workers_seen.setdefault(pid, psutil.Process(pid).create_time())
                steps = [m.step for m in client.get_metric_history(run.info.run_id, contract.TRAIN_LOSS)]
                step = max(steps, default=-1)
                if step < EPOCHS:  # mid-training, not ending
                    found.append((tags[contract.TAG_TRIAL_ID], pid, step))
        except Exception as error:  # a read racing a run's start: try again at the next poll
            print(f"  (poll: {type(error).__name__}: {error})", flush=True)
        return found

    def wait_for_trial_at(self, step: int, prefer_not: set[str] = frozenset(),
                          driver_age_s: float | None = None) -> tuple[str, int, int] | None:
        """A live trial at ``step`` or later, mid-training (preferring trials not in
        ``prefer_not``), or with ``driver_age_s``: the moment the current driver is that many
        seconds old, whatever it does then ((none, 0, -1) when no trial runs). None when the
        driver exited 0 first (the sweep is done). A driver that exits non-zero meanwhile is
        rerun."""
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while time.monotonic() < deadline:
            if driver_age_s is not None:
                if time.monotonic() - self.drivers.started >= driver_age_s:
                    return (self.live_trials() or [("none", 0, -1)])[0]
            elif ready := [t for t in self.live_trials() if t[2] >= step]:
                fresh = [t for t in ready if t[0] not in prefer_not]
                return (fresh or ready)[0]
            code = self.drivers.poll()
            if code is not None:
                if code == 0:
                    return None
                self.note("rerun", self.drivers.start().pid, f"the driver had exited {code}")
            time.sleep(0.5)
        raise AssertionError(f"no live trial reached step {step} in {EVENT_TIMEOUT_S} s; "
                             f"driver log:\n{self.drivers.tail()}")

    # --- the kills ---

    def kill_worker(self, step: int) -> bool:
        while True:
            found = self.wait_for_trial_at(step, prefer_not=self.worker_killed_trials)
            if found is None:
                return False
            trial_id, pid, at = found
            try:
                os.kill(pid, signal.SIGKILL)
                break
            except ProcessLookupError:  # its trial ended meanwhile: look again
                continue
        self.worker_killed_trials.add(trial_id)
        self.workers_killed.add(pid)
        self.note("worker", pid, f"trial {trial_id} at step {at}")
        # Gone before the next kill looks for a live trial (its run still says RUNNING).
        assert _wait_until(lambda: not _alive({pid: self.workers_seen[pid]}), timeout_s=30), \
            f"worker {pid} outlived SIGKILL"
        return True

    def kill_driver(self, step: int, age_s: float | None) -> bool:
        """At a trial's ``step``, or (``age_s``) at a moment of the driver's life."""
        found = self.wait_for_trial_at(step, driver_age_s=age_s)
        if found is None:
            return False
        age = time.monotonic() - self.drivers.started
        workers = {pid: self.workers_seen[pid] for _, pid, _ in self.live_trials()}
        pid = self.drivers.kill()
        self.workers_killed.update(workers)
        self.note("driver", pid, f"process group, {age:.1f} s old; trial {found[0]} at step {found[2]}")
        self.note("rerun", self.drivers.start().pid, "the same command")
        # Ray ends a dead driver's workers; the next kill must not pick one of them.
        if not _wait_until(lambda: not _alive(workers), timeout_s=60):
            self.problems.append(f"no process left: worker(s) {_alive(workers)} of the driver killed "
                                 f"at t={self.kills[-2].at_s:.0f}s still alive 60 s later")
        return True

    def kill_server(self, step: int, outage_s: float) -> bool:
        found = self.wait_for_trial_at(step)
        if found is None:
            return False
        pid = self.server.process.pid
        _killpg(pid)
        self.server.process.wait(timeout=30)
        self.note("server", pid, f"process group, down {outage_s:.1f} s + start; "
                                 f"trial {found[0]} at step {found[2]}")
        time.sleep(outage_s)  # the outage itself: nothing to wait for
        _kill_session(pid)    # anything of the old server still there would hold the port
        self.server = start_local_server(self.root, port=self.port, timeout_s=120)
        self.server_sessions.append(self.server.process.pid)
        self.note("back", self.server.process.pid, f"server restarted on port {self.port}")
        return True


def _live_worker(pid_text: str | None) -> int | None:
    """The pid when it names a live Ray worker process (not a reused pid), else None."""
    if not pid_text:
        return None
    try:
        process = psutil.Process(int(pid_text))
        alive = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        return int(pid_text) if alive and process.name().startswith("ray::") else None
    except (psutil.Error, ValueError):
        return None


# --- reading the results ------------------------------------------------------------------

def _trial_runs(uri: str, name: str, superseded: bool = False) -> list:
    """The sweep's trial runs, without the superseded ones unless asked."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if contract.TAG_TRIAL_ID in r.data.tags and r.data.tags.get(contract.TAG_ROLE) != contract.ROLE_PARENT
            and (superseded or contract.TAG_SUPERSEDED_BY not in r.data.tags)]


def _series(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    """metric key -> (step, value) of every logged value, by step (system/* left out: they
    sample the machine, not the training)."""
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics if not key.startswith("system/")}


def _run_problems(client: MlflowClient, runs: list, superseded: int, reference: list) -> list[str]:
    """What breaks "runs == trials; none FAILED; one value per step; each series equals the
    reference's" for the chaos sweep's (non-superseded) ``runs``."""
    problems = []
    by_trial: dict[str, list] = {}
    for run in runs:
        by_trial.setdefault(run.data.tags[contract.TAG_TRIAL_ID], []).append(run)
    if len(runs) != TRIALS or len(by_trial) != TRIALS:
        problems.append(f"runs == trials: {len(runs)} non-superseded runs for {len(by_trial)} trial ids "
                        f"(of {TRIALS}); {superseded} superseded; duplicated: "
                        f"{sorted(t for t, rs in by_trial.items() if len(rs) > 1)}")
    failed = [(r.data.tags[contract.TAG_TRIAL_ID], r.info.status, r.data.tags.get(contract.TAG_STATUS))
              for r in runs if r.info.status != contract.RUN_FINISHED
              or r.data.tags.get(contract.TAG_STATUS) != contract.STATUS_FINISHED]
    if failed:
        problems.append(f"none FAILED: not finished: {failed}")
    reference_runs = {r.data.tags[contract.TAG_TRIAL_ID]: r for r in reference}
    assert len(reference_runs) == TRIALS
    for trial_id, (run, *_) in sorted(by_trial.items()):
        problems += _series_problems(trial_id, _series(client, run), _series(client, reference_runs[trial_id]))
    return problems


def _series_problems(trial_id: str, series: dict, expected: dict) -> list[str]:
    """One value per step, and every series equal to the reference run's.

    Exact equality, no tolerance: both runs train on one CPU thread in a Ray worker with the
    same seeds, a resume restores the weights, optimizer and RNG state bit for bit, and MLflow
    stores doubles; any difference at all is a mixed-up, lost or shifted step, not rounding
    (measured: every seed tried so far matches exactly)."""
    problems = []
    for key, values in sorted(series.items()):
        steps = [step for step, _ in values]
        if len(steps) != len(set(steps)):
            dupes = sorted({s for s in steps if steps.count(s) > 1})
            problems.append(f"one value per step: trial {trial_id} {key} has several values at steps {dupes}")
    if series.keys() != expected.keys():
        problems.append(f"same metrics: trial {trial_id} has {sorted(series.keys() ^ expected.keys())} "
                        "on one side only")
    differing = sorted(key for key in series.keys() & expected.keys() if series[key] != expected[key])
    if differing:
        key = differing[0]
        got, want = dict(series[key]), dict(expected[key])
        first = next((s for s in sorted(set(got) | set(want)) if got.get(s) != want.get(s)), None)
        problems.append(f"series equal the reference: trial {trial_id}: {len(differing)} metric(s) differ, "
                        f"e.g. {key} at step {first}: {got.get(first)} vs reference {want.get(first)} "
                        f"(steps {len(got)} vs {len(want)})")
    return problems


def _checkpoints_per_trial(storage: Path, name: str) -> dict[str, int]:
    """trial id -> how many checkpoint info files of it are left in the sweep's storage
    (``orchestrator/checkpoints.py``: one per member folder of each ``checkpoint_N``)."""
    counts: dict[str, int] = {}
    for info in (storage / name).rglob(contract.CHECKPOINT_INFO_FILE):
        try:
            trial_id = json.loads(info.read_text())["trial_id"]
        except (OSError, ValueError, KeyError):
            trial_id = f"unreadable:{info}"
        counts[trial_id] = counts.get(trial_id, 0) + 1
    return counts


def _leftovers(sessions: list[int]) -> dict[int, list[int]]:
    return {s: members for s in sessions if (members := _session_members(s))}


def _alive(pids: dict[int, float]) -> list[int]:
    """The pids still running the process seen then (same create time)."""
    alive = []
    for pid, created in pids.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            pass
    return alive


def _wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return bool(condition())


# --- the test -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """One kill of the schedule: what, and when (a trial's step; or for a driver, maybe its
    age, so that some kills land while it starts, plans or creates runs); a server's outage."""

    kind: str
    step: int
    age_s: float | None = None
    outage_s: float = 0.0

    def __str__(self) -> str:
        when = f"age {self.age_s}s" if self.age_s is not None else f"step {self.step}"
        return f"{self.kind}@{when}" + (f" down {self.outage_s}s" if self.outage_s else "")


def _schedule(rng: random.Random) -> list[Event]:
    """Every kill, in a seeded order with seeded moments. The first is never a driver kill,
    so that the first driver lives to create the runs."""
    kinds = ["worker"] * WORKER_KILLS + ["driver"] * DRIVER_KILLS + ["server"] * SERVER_KILLS
    rng.shuffle(kinds)
    if kinds[0] == "driver":
        swap = next(i for i, k in enumerate(kinds) if k != "driver")
        kinds[0], kinds[swap] = kinds[swap], kinds[0]
    events = []
    for kind in kinds:
        step = rng.randint(*TRIGGER_STEPS)
        age = round(rng.uniform(*DRIVER_AGE_S), 1) if kind == "driver" and rng.random() < 0.5 else None
        outage = round(rng.uniform(*OUTAGE_S), 1) if kind == "server" else 0.0
        events.append(Event(kind, step, age, outage))
    return events


def test_a_sweep_survives_random_kills_and_ends_like_an_uninterrupted_one(tmp_path):
    wall = time.monotonic()
    rng = random.Random(SEED)
    schedule = _schedule(rng)
    print(f"\nchaos seed {SEED} (XMEM_CHAOS_SEED): schedule {', '.join(map(str, schedule))}", flush=True)
    storage = tmp_path / "store"
    names = {"reference": f"chaos-ref-{uuid.uuid4().hex[:6]}", "chaos": f"chaos-{uuid.uuid4().hex[:6]}"}
    specs = {}
    for role, name in names.items():
        specs[role] = tmp_path / f"{name}.yaml"
        specs[role].write_text(SPEC.format(name=name, epochs=EPOCHS, data_dir=tmp_path / "data"))

    cluster = RayCluster()
    server = None
    chaos: Chaos | None = None
    drivers: list[Drivers] = []
    try:
        address = cluster.start_head(cpus=2)
        server = start_local_server(tmp_path / "mlflow", timeout_s=120)
        port = int(server.uri.rsplit(":", 1)[1])

        def driver(role: str) -> Drivers:
            made = Drivers([sys.executable, "-m", "orchestrator", "sweep", str(specs[role]),
                            "--address", address, "--tracking-uri", server.uri, "--storage", str(storage)],
                           env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())},
                           log=tmp_path / f"driver-{role}.log")
            drivers.append(made)
            return made

        # The reference: the same trials, uninterrupted.
        reference = driver("reference")
        reference.start()
        assert reference.wait() == 0, reference.tail()
        reference_s = time.monotonic() - wall
        print(f"  reference sweep done at t={reference_s:.0f}s", flush=True)

        # The chaos run.
        chaos = Chaos(root=tmp_path / "mlflow", port=port, server=server, drivers=driver("chaos"),
                      name=names["chaos"], server_sessions=[server.process.pid])
        chaos.drivers.start()
        survived = 0
        for event in schedule:
            done = {"worker": lambda: chaos.kill_worker(event.step),
                    "driver": lambda: chaos.kill_driver(event.step, event.age_s),
                    "server": lambda: chaos.kill_server(event.step, event.outage_s)}[event.kind]()
            if not done:
                break
            survived += 1
        server = chaos.server
        reruns = 0
        while True:
            code = chaos.drivers.wait()
            if code == 0:
                break
            assert reruns < FINAL_RERUNS, f"the driver still exits {code} after {reruns} reruns:\n{chaos.drivers.tail()}"
            reruns += 1
            chaos.note("rerun", chaos.drivers.start().pid, f"after the schedule: the driver had exited {code}")
        chaos_s = time.monotonic() - chaos.started
        print(f"\n  kills survived: {survived} of {len(schedule)}; driver invocations: "
              f"{len(chaos.drivers.sessions)} ({', '.join(chaos.drivers.exits)})")
        print(f"  {'t (s)':>7}  {'what':<7} {'pid':<7} detail")
        for kill in chaos.kills:
            print(f"  {kill.at_s:7.1f}  {kill.what:<7} {kill.pid:<7} {kill.detail}")
        print(f"  chaos run {chaos_s:.0f} s, reference {reference_s:.0f} s, "
              f"wall so far {time.monotonic() - wall:.0f} s", flush=True)
        assert survived == len(schedule), \
            f"the sweep ended before the schedule did ({survived} of {len(schedule)} kills)"

        # --- the results ---
        client = MlflowClient(server.uri)
        problems = chaos.problems
        runs = _trial_runs(server.uri, names["chaos"])
        every_run = _trial_runs(server.uri, names["chaos"], superseded=True)
        for run in every_run:  # the pids of attempts that ended before a poll saw them
            pid = _live_worker(run.data.tags.get(contract.TAG_PID))
            if pid is not None:
                chaos.workers_seen.setdefault(pid, psutil.Process(pid).create_time())
        problems += _run_problems(client, runs, len(every_run) - len(runs),
                                  _trial_runs(server.uri, names["reference"]))
        counts = _checkpoints_per_trial(storage, names["chaos"])
        if any(n > 2 for n in counts.values()):
            problems.append(f"at most two checkpoints per trial: {sorted((n, t) for t, n in counts.items() if n > 2)}")

        # --- no process left running ---
        # Tune ends its workers when a sweep ends, and Ray ends a killed driver's workers.
        _wait_until(lambda: not _alive(chaos.workers_seen), timeout_s=60)
        if alive := _alive(chaos.workers_seen):
            problems.append(f"no process left: worker pid(s) {alive} of xmem.pid tags still alive "
                            "after the sweep ended (before Ray stopped)")
        if left := _leftovers([s for d in drivers for s in d.sessions]):
            problems.append(f"no process left: driver sessions still have processes {left}")
        print(f"  {len(chaos.workers_seen)} worker pid(s) seen; {len(runs)} current runs, "
              f"{len(every_run) - len(runs)} superseded by a later attempt; checkpoints left per "
              f"trial: {sorted(counts.values())}; wall {time.monotonic() - wall:.0f} s", flush=True)
        assert not problems, "\n".join(["the chaos run broke:", *problems])
    finally:
        for made in drivers:
            made.stop()
        if chaos is not None:
            server = chaos.server
        if server is not None:
            server.stop()
        cluster.stop()
    # After everything is stopped: nothing of ours is left, the seen workers included.
    sessions = [s for d in drivers for s in d.sessions] + (chaos.server_sessions if chaos else [])
    assert not _leftovers(sessions), _leftovers(sessions)
    assert not _leftovers([n.session for n in cluster.nodes]), "Ray node processes left"
    if chaos is not None:
        assert not _alive(chaos.workers_seen), f"worker processes left: {_alive(chaos.workers_seen)}"
    print(f"  chaos test wall time {time.monotonic() - wall:.0f} s", flush=True)
