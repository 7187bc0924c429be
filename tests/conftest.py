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
