"""Which code ran an attempt: the xmem version and the git commit of the ``workers`` package.

Recorded on every attempt's run (``workers.mlflow_log``), so a series continued by another
version of the code says so. Plain Python (git is asked once per process, when present).
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import workers


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``cwd``; None when unknown (no git,
    not a checkout: an installed wheel, a container image)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


@functools.lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The git commit of the checkout this ``workers`` package was imported from (cached)."""
    return git_commit(Path(workers.__file__).resolve().parent)


def code_version() -> str:
    """xmem's version (``workers.__version__``)."""
    return workers.__version__
