"""Real Ray clusters of one or more nodes on this machine, for tests.

Each node is one ``ray start`` run in a session of its own; the node's processes (GCS,
raylet, agents, the worker processes the raylet forks, which take process groups of their
own) all stay in that session, so a node is torn down, or killed mid-trial like a machine
that dies, by signalling exactly the processes of its session. Never ``ray stop``: it stops
every Ray process of the user on the machine, other test runs' included.

Everything Ray writes (sessions, sockets, logs, the current-cluster file) goes under one
short folder in /tmp (``RAY_TMPDIR``: Ray's socket paths must stay under 108 characters).
A driver with the same ``RAY_TMPDIR`` and no address joins this cluster through its
current-cluster file, as ``ray.init()`` does on a machine where ``ray start`` ran.

A node can be given a host name of its own (a UTS namespace) and folders it does not see (a
mount namespace with an empty tmpfs over them): a stand-in, named as such, for a node on
another machine, where that cannot run here. It still shares this machine's network.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"


def can_fake_another_host() -> bool:
    """Whether this machine lets us give a process its own host name and mounts (root, and
    a kernel and container that allow new UTS and mount namespaces)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--uts", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


@dataclass
class RayNode:
    """One ``ray start``: its session id is the pid of the process that ran it."""

    session: int
    log: Path

    def node_id(self) -> str:
        """The node's Ray id, read from its raylet's command line (``--node_id=...``)."""
        for pid in self.processes():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"/raylet"):
                for arg in args:
                    if arg.startswith(b"--node_id="):
                        return arg.split(b"=", 1)[1].decode()
        raise LookupError(f"no raylet in session {self.session} (log: {self.log})")

    def processes(self) -> list[int]:
        """The pids of every live process of this node's session."""
        return _session_members(self.session)

    def kill(self) -> None:
        """SIGKILL every process of the node at once, like a machine losing power."""
        for _ in range(5):  # a process forked while we signal joins the session: go again
            members = self.processes()
            if not members:
                return
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


@dataclass
class RayCluster:
    """A head and more nodes on 127.0.0.1; use as a context manager (``stop`` on exit)."""

    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="xr-", dir="/tmp")))
    nodes: list[RayNode] = field(default_factory=list)
    address: str = ""
    node_env: dict[str, str] = field(default_factory=dict)
    """More environment for the nodes (e.g. Ray's health-check settings)."""

    @property
    def env(self) -> dict[str, str]:
        """The environment of a driver meant to find the cluster on its own."""
        return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(self.temp_dir)}

    def start_head(self, cpus: int = 1) -> str:
        """Start the head node; returns its address (``127.0.0.1:<port>``)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._start(["--head", f"--port={port}", "--include-dashboard=false"], cpus, "head")
        self.address = f"127.0.0.1:{port}"
        return self.address

    def add_node(self, cpus: int = 1, hostname: str | None = None,
                 hidden: Sequence[Path] = ()) -> RayNode:
        """Start a node joining the head. ``hostname`` / ``hidden``: the stand-in for another
        machine (module docstring); ``hidden`` folders appear empty to this node."""
        wrapper: list[str] = []
        if hostname or hidden:
            steps = [f"hostname {shlex.quote(hostname)}"] if hostname else []
            steps += [f"mount -t tmpfs xmem-test-hidden {shlex.quote(str(folder))}" for folder in hidden]
            wrapper = ["unshare", *(["--uts"] if hostname else []), *(["--mount"] if hidden else []),
                       "sh", "-c", " && ".join(steps) + ' && exec "$@"', "sh"]
        return self._start([f"--address={self.address}"], cpus, f"node{len(self.nodes)}", wrapper)

    def _start(self, args: list[str], cpus: int, name: str, wrapper: Sequence[str] = ()) -> RayNode:
        """``ray start``, tried twice: on a loaded 2-core machine a raylet can miss Ray's
        fixed 30 s to register (the failed try's processes are killed first)."""
        log = self.temp_dir / f"{name}.log"
        command = [*wrapper, RAY, "start", *args, "--node-ip-address=127.0.0.1",
                   f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats"]
        for attempt in (1, 2):
            with open(log, "ab") as out:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT,
                                           env={**self.env, **self.node_env},
                                           start_new_session=True)
            node = RayNode(process.pid, log)
            self.nodes.append(node)  # before waiting: torn down even if the start fails
            if process.wait(timeout=120) == 0:
                return node
            node.kill()
        raise RuntimeError(f"ray start failed twice ({shlex.join(command)}):\n{log.read_text()}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _session_members(session: int) -> list[int]:
    """Pids of the live processes whose session id is ``session`` (field 6 of /proc/PID/stat)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return members
