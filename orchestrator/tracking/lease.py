"""One driver per sweep: a lease held on the sweep's parent run.

A driver (``xmem sweep`` / ``xmem resume``) takes the lease before it decides anything (the
resume plan, deleting checkpoints, creating runs) and gives it back when it ends, however it
ends. The lease is two tags on the parent run:

    xmem.lease.holder   JSON {"host", "pid", "token", "started", "process_start", "pid_ns"}
    xmem.lease.expires  Unix seconds; renewed every ``heartbeat`` by a daemon thread, "0"
                        once released

A second driver, while the lease has not expired, refuses with an ``XmemError`` that names
the holder and how to take over. It takes over at once, with a note, when the holder ran on
this machine (same host name, same process-id namespace) and its process is gone (a driver
killed with ``kill -9``) or is another process with the same pid (its start time differs);
``--take-over`` takes it over whatever the holder (for a holder on another machine that is
known to be dead).

MLflow has no compare-and-swap. A driver writes its token, waits ``settle`` seconds and reads
the tag back: of two drivers that wrote in that time, the last writer wins and the other
refuses. The window left: a driver whose read (lease free) and write are more than ``settle``
apart (a process paused between them) can still overwrite a lease another driver has just
confirmed; the first holder's heartbeat then sees another token and says so on stderr.

Durations (seconds) can be overridden through ``XMEM_LEASE_SECONDS`` (90),
``XMEM_LEASE_HEARTBEAT_SECONDS`` (20) and ``XMEM_LEASE_SETTLE_SECONDS`` (1).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

from workers.contract import TAG_LEASE_EXPIRES, TAG_LEASE_HOLDER
from workers.errors import XmemError

if TYPE_CHECKING:
    from orchestrator.tracking.writer import SweepTracker

LEASE_SECONDS_ENV = "XMEM_LEASE_SECONDS"
HEARTBEAT_SECONDS_ENV = "XMEM_LEASE_HEARTBEAT_SECONDS"
SETTLE_SECONDS_ENV = "XMEM_LEASE_SETTLE_SECONDS"
DEFAULT_LEASE_S, DEFAULT_HEARTBEAT_S, DEFAULT_SETTLE_S = 90.0, 20.0, 1.0
# Process start times read twice through psutil differ by rounding only.
START_TIME_TOLERANCE_S = 1.0
# Rounds of "take the lease, check the parent run is still the oldest" (first runs racing).
SETTLE_ROUNDS = 3
RELEASED = "0"


@dataclass(frozen=True)
class LeaseTimes:
    """How long a lease lasts, how often it is renewed, how long a driver waits before it
    reads its claim back (seconds)."""

    duration: float = DEFAULT_LEASE_S
    heartbeat: float = DEFAULT_HEARTBEAT_S
    settle: float = DEFAULT_SETTLE_S

    @classmethod
    def from_environment(cls, environ=os.environ) -> "LeaseTimes":
        """The defaults, overridden by ``XMEM_LEASE_*_SECONDS`` (tests shorten them).

        Raises:
            XmemError: a value that is not a positive number, or a heartbeat not shorter
                than the lease.
        """
        values = {}
        for field_name, name, default in (("duration", LEASE_SECONDS_ENV, DEFAULT_LEASE_S),
                                          ("heartbeat", HEARTBEAT_SECONDS_ENV, DEFAULT_HEARTBEAT_S),
                                          ("settle", SETTLE_SECONDS_ENV, DEFAULT_SETTLE_S)):
            text = environ.get(name)
            try:
                value = float(text) if text else default
            except ValueError:
                value = -1.0
            if not value >= 0 or (value == 0 and field_name != "settle"):
                raise XmemError(f"{name}={text!r} is not a positive number of seconds")
            values[field_name] = value
        times = cls(**values)
        if times.heartbeat >= times.duration:
            raise XmemError(f"{HEARTBEAT_SECONDS_ENV} ({times.heartbeat:g}) must be shorter than "
                            f"{LEASE_SECONDS_ENV} ({times.duration:g})")
        return times


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease: the driver process, and a token of its own."""

    host: str
    pid: int
    token: str
    started: float
    """When the driver took the lease (Unix seconds)."""
    process_start: float | None = None
    """The process's start time (Unix seconds, psutil): tells a reused pid apart."""
    pid_ns: str | None = None
    """The process-id namespace (Linux): two containers may share a host name, not pids."""

    @classmethod
    def this_process(cls) -> "LeaseHolder":
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex, round(time.time(), 3),
                   _process_start(os.getpid()), _pid_namespace())

    @classmethod
    def parse(cls, text: str | None) -> "LeaseHolder | None":
        """The holder in a tag's JSON; None when absent or unreadable."""
        try:
            values = json.loads(text) if text else None
            return cls(str(values["host"]), int(values["pid"]), str(values["token"]),
                       float(values.get("started") or 0), values.get("process_start"),
                       values.get("pid_ns"))
        except (TypeError, KeyError, ValueError):
            return None

    def to_tag(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid} (since {_clock(self.started)})"

    def is_gone(self) -> bool:
        """Whether this holder ran on this machine and its process no longer does: no process
        of that pid, a zombie, or another process that reused the pid. False when it ran on
        another machine (nothing can be known from here)."""
        here = LeaseHolder.this_process()
        if self.host != here.host or (self.pid_ns and here.pid_ns and self.pid_ns != here.pid_ns):
            return False
        import psutil

        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
            started = process.create_time()
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False  # not ours to inspect: assume it runs
        return (self.process_start is not None
                and abs(started - float(self.process_start)) > START_TIME_TOLERANCE_S)


@dataclass(frozen=True)
class LeaseState:
    """A parent run's lease tags, read."""

    holder: LeaseHolder | None
    expires: float
    """Unix seconds; 0 when released or never taken."""

    def held_by_other(self, token: str, now: float) -> bool:
        return self.holder is not None and self.holder.token != token and self.expires > now


class SweepLease:
    """This driver's lease on one sweep (``take_lease`` makes one)."""

    def __init__(self, tracker: "SweepTracker", run_id: str, times: LeaseTimes,
                 holder: LeaseHolder | None = None):
        self.tracker = tracker
        self.run_id = run_id
        self.times = times
        self.holder = holder or LeaseHolder.this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_to: LeaseHolder | None = None
        """Another driver's holder, when the heartbeat found that it took the lease."""

    def read(self) -> LeaseState:
        tags = self.tracker.run_tags(self.run_id)
        try:
            expires = float(tags.get(TAG_LEASE_EXPIRES) or 0)
        except ValueError:
            expires = 0.0
        return LeaseState(LeaseHolder.parse(tags.get(TAG_LEASE_HOLDER)), expires)

    def claim(self, *, take_over: bool, command: str) -> str | None:
        """Take the lease, or raise: (a note to print, or None).

        Raises:
            XmemError: another driver holds it (or won the race to take it); the message
                names it, when its lease expires, and how to take over.
        """
        state = self.read()
        note = None
        if state.held_by_other(self.holder.token, time.time()):
            other = state.holder
            if other.is_gone():
                note = (f"the previous driver of this sweep ({other.describe()}) is gone "
                        "(killed?): taking over its lease")
            elif take_over:
                note = f"taking over the lease of the driver {other.describe()} (--take-over)"
            else:
                raise XmemError(self._refusal(other, state.expires, command))
        self._write(time.time() + self.times.duration)
        time.sleep(self.times.settle)
        won = self.read()
        if won.holder is None or won.holder.token != self.holder.token:
            raise XmemError(self._refusal(won.holder, won.expires, command, raced=True))
        return note

    def start_heartbeat(self) -> None:
        """Renew the lease every ``heartbeat`` seconds, in a daemon thread, until ``release``."""
        self._thread = threading.Thread(target=self._beat, name="xmem-lease", daemon=True)
        self._thread.start()

    def release(self, echo: Callable[[str], None] = print) -> None:
        """Stop renewing and mark the lease released (when it is still ours). Never raises:
        when the server does not answer, the lease expires by itself, and the note says when."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.times.settle + 5)
        try:
            state = self.read()
            if state.holder is not None and state.holder.token == self.holder.token:
                self.tracker.set_run_tags(self.run_id, {TAG_LEASE_EXPIRES: RELEASED})
        except Exception as error:  # noqa: BLE001 - a release is best effort, said
            until = _clock(time.time() + self.times.duration)
            echo(f"note: the sweep's lease could not be released ({_first(error)}); it expires "
                 f"by itself by {until}")

    # --- internals ----------------------------------------------------------------------
    def _write(self, expires: float) -> None:
        self.tracker.set_run_tags(self.run_id, {TAG_LEASE_HOLDER: self.holder.to_tag(),
                                                TAG_LEASE_EXPIRES: f"{expires:.0f}"})

    def _beat(self) -> None:
        """The heartbeat: renew while the lease is ours; stop (with a word on stderr) when
        another driver took it. A failed renewal (a server outage) is retried next beat."""
        while not self._stop.wait(self.times.heartbeat):
            try:
                state = self.read()
                if state.holder is not None and state.holder.token != self.holder.token:
                    self.lost_to = state.holder
                    print(f"xmem: warning: another driver ({state.holder.describe()}) took over "
                          "this sweep's lease; this driver's results may mix with its",
                          file=sys.stderr)
                    return
                if not self._stop.is_set():
                    self.tracker.set_run_tags(self.run_id, {
                        TAG_LEASE_EXPIRES: f"{time.time() + self.times.duration:.0f}"})
            except Exception:  # noqa: BLE001 - an outage: the next beat tries again
                continue

    def _refusal(self, other: LeaseHolder | None, expires: float, command: str,
                 raced: bool = False) -> str:
        sweep = self.tracker.sweep_name
        who = other.describe() if other else "another driver"
        when = (f"its lease expires at {_clock(expires)} (in {max(0, expires - time.time()):.0f} s) "
                f"unless that driver renews it (every {self.times.heartbeat:g} s while it runs)")
        return (f"sweep {sweep} is being run by another driver ({who}"
                + (", which took the lease at the same moment" if raced else "") + f"); {when}.\n"
                f"Wait for it to end (xmem status {sweep} shows its trials). If that driver is "
                f"dead (killed, its machine gone), run {command} again once the lease has "
                f"expired, or now with {command} --take-over.")


def take_lease(tracker: "SweepTracker", *, take_over: bool = False, command: str,
               echo: Callable[[str], None] = print, times: LeaseTimes | None = None) -> SweepLease:
    """Take the lease on ``tracker``'s sweep (creating the experiment and the parent run on
    a first run, nothing else) and start its heartbeat. ``command`` is how the user reruns
    the sweep (named in a refusal, with ``--take-over``).

    Sets ``tracker.parent_run_id``. After the claim, the parent run must still be the oldest
    one: two first runs that raced may each have made one (``open_or_create_parent_run``);
    the lease on the older one decides.

    Raises:
        XmemError: another driver holds the lease (``SweepLease.claim``), or the server
            does not answer (``writer.driver_errors``).
    """
    times = times or LeaseTimes.from_environment()
    holder = LeaseHolder.this_process()
    for _ in range(SETTLE_ROUNDS):
        run_id = tracker.open_or_create_parent_run()
        lease = SweepLease(tracker, run_id, times, holder)
        note = lease.claim(take_over=take_over, command=command)
        if tracker.oldest_parent_run_id() == run_id:
            if note:
                echo(f"note: {note}")
            lease.start_heartbeat()
            return lease
        lease.release(echo)
        tracker.drop_created_parent_run(run_id)
        tracker.parent_run_id = None
    raise XmemError(f"sweep {tracker.sweep_name}: its parent run kept changing while this driver "
                    f"took the lease (other drivers starting it?); run {command} again")


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - psutil missing or the process unreadable
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _clock(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_s))


def _first(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]
