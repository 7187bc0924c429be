"""The embedded MLflow tracking server: ``mlflow server`` on 127.0.0.1 over a folder.

``xmem sweep`` without a tracking URI runs one for the duration of the sweep; ``xmem ui``
serves a store for browsing; the commands that read a sweep back serve (or read) the store
through ``open_tracking``. What a store folder holds::

    <root>/mlflow.db      SQLite store of experiments, runs, params, tags and metrics
    <root>/artifacts/     artifacts, uploaded and downloaded over HTTP through the server
    <root>/server.log     the server's stdout and stderr
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
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
from typing import Callable, Iterator

from orchestrator.settings import tracking_uri_for
from workers.errors import XmemError

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
LOG_FILE = "server.log"
# The server's environment. Job execution (MLflow 3's GenAI job runner) starts seven
# `huey_consumer` processes next to the server; xmem uses none of them, and on a 2-core
# machine they roughly double the start-up time and keep competing with the trials for CPU.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
STOP_TIMEOUT_S = 10.0   # SIGTERM -> SIGKILL
LOG_TAIL_LINES = 30
_PR_SET_PDEATHSIG = 1   # linux prctl option


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


def serve_ui(root: Path, host: str, port: int, echo: Callable[[str], None] = print) -> None:
    """Serve the store under ``root`` (UI and API) until Ctrl-C; for ``xmem ui``. Prints a
    link to each sweep's trials (``runs_view.runs_url``) while the server starts.

    Raises:
        XmemError: ``root`` holds no store, the port is taken, or the server fails.
    """
    from orchestrator.tracking import runs_view
    from orchestrator.tracking.reader import sweep_experiments

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
        # Read from the SQLite file while the server starts (both take a few seconds).
        link_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        sweeps = sweep_experiments(f"sqlite:///{root / STORE_FILE}")
        for sweep in sweeps:
            echo(f"sweep {sweep.name}: "
                 f"{runs_view.runs_url(f'http://{link_host}:{port}', sweep.experiment_id, sweep.has_trials_view)}")
        if not sweeps:
            echo("no sweeps in this store yet")
        code = process.wait()
    except KeyboardInterrupt:
        server.stop()
        return
    except BaseException:
        server.stop()
        raise
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
