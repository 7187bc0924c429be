"""Shared fixtures. ``mlflow_server``: one real ``mlflow server`` for the whole session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A running local tracking server (SQLite store, served artifacts) in a temp folder.

    Started once per session (about 10 s); tests keep apart by using unique experiment
    names. Yields ``orchestrator.tracking.LocalTrackingServer``.
    """
    from orchestrator.tracking import start_local_server

    server = start_local_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real single-node Ray cluster (``ray start --head``) for the whole session.

    Sweeps join it by address, exactly as they would join a remote cluster; disconnecting a
    driver leaves it running for the next test. Yields its address (``127.0.0.1:<port>``).
    """
    import os
    import shutil
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    temp_dir = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
