"""Environment variables set only around some calls, and only where the user left them unset.

MLflow's client reads its HTTP retry and time-out settings from the environment; both sides
(``workers.mlflow_log`` and ``orchestrator.tracking``) tune them for their own calls with this.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping


@contextlib.contextmanager
def env_defaults(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block, except names the user already set."""
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
