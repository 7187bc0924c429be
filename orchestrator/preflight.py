"""Preflight: every problem the driver can see, reported together before anything is created.

``xmem sweep`` checks, and reports all it finds in one user error (exit 2):

1. before any service starts: the storage folder and the embedded store folder can be
   written; a given tracking server answers;
2. once Ray is up: each distinct dataset source of the trials (a ``data_file`` that exists,
   is Parquet and has the image table's columns; torchvision's files under ``data_dir`` unless
   ``download``), read from file names and Parquet footers alone: on this machine when the
   cluster is this one node, else by one small Ray task on a worker node (the message says
   which), since a cluster's workers may mount the data where the driver does not; and the
   spec's resources against the cluster;
3. once Ray is up, where the cluster Ray actually joined has nodes beyond this driver's:
   the embedded tracking server (127.0.0.1 of this machine) when some node is on another
   host (with no address, ``ray.init()`` may have joined a cluster through RAY_ADDRESS or
   Ray's current-cluster file), and a local ``--storage`` folder that some node does not see
   (a trial resumes from its checkpoint on whichever node runs it next).

The embedded tracking server starts only when step 1 found nothing, and its folder is removed
again when step 2 or 3 finds a problem (``orchestrator.run``).
"""

from __future__ import annotations

import collections
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from orchestrator.expand import TrialPoint
from orchestrator.settings import embedded_server_refusal
from orchestrator.text import count, listing
from workers.config import TrialConfig
from workers.errors import XmemError

if TYPE_CHECKING:
    from orchestrator.settings import SweepSettings
    from orchestrator.spec import SweepSpec
    from orchestrator.tune_runner import ClusterInfo


def data_problems(trials: Sequence[TrialPoint], configs: Sequence[TrialConfig],
                  cluster: "ClusterInfo") -> list[str]:
    """One problem per distinct dataset source that cannot be used, naming the trials that
    use it. ``configs`` are the trials' configs as workers get them (paths absolute, ``~``
    left to each worker). Checked here when the cluster is this one node; on a cluster of
    several nodes, by one Ray task on a worker node, whose files the trials will read."""
    from workers.data.images import source_problems  # the data layer: only past the dry run

    users: dict[tuple, list[str]] = collections.defaultdict(list)
    for trial, config in zip(trials, configs):
        key = (config.dataset, config.data_dir, config.data_file, config.download)
        users[key].append(trial.name)
    sources = list(users)
    if cluster.nodes > 1:
        from orchestrator import tune_runner

        where, found = tune_runner.run_on_a_worker_node(source_problems, sources)
        where = f"checked on {where}"
    else:
        where, found = "checked on this machine", source_problems(sources)
    return [f"{problem} ({where}; used by {count(len(users[source]), 'trial')}: "
            f"{listing(users[source])})"
            for source, problem in zip(sources, found) if problem]


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be made a writable folder (``strerror (path)``), or None.

    Tried for real (make the folders, write a temporary file, remove what was made), since
    permission bits do not tell (root, read-only mounts, /proc); nothing is left behind.
    """
    missing = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"{error.strerror or error} ({error.filename or folder})"
    finally:
        for path in missing:
            if path.is_dir():
                path.rmdir()
    return None


def folder_problem(folder: Path, what: str) -> str | None:
    """The preflight problem of a folder xmem must write in, or None."""
    reason = unwritable(folder)
    return (f"{what} {folder}: cannot write in {folder}: {reason}; choose a folder you can "
            "write to") if reason else None


def local_problems(settings: "SweepSettings", store_root: Path | None) -> list[str]:
    """Step 1 of the module docstring: storage, store folder, tracking server."""
    problems: list[str | None] = []
    storage = None if "://" in settings.storage else Path(settings.storage)
    if storage is not None:
        problems.append(folder_problem(storage, "storage"))
    # The store usually lies under the storage: one problem with the folder is said once.
    if store_root is not None and not (problems and problems[-1]
                                       and store_root.is_relative_to(storage)):
        problems.append(folder_problem(store_root, "the embedded MLflow store"))
    if settings.tracking_uri is not None:
        from orchestrator.tracking.server import check_reachable

        try:
            check_reachable(settings.tracking_uri)
        except XmemError as error:
            problems.append(str(error))
    return [problem for problem in problems if problem]


def cluster_problems(spec: "SweepSpec", cluster: "ClusterInfo") -> list[str]:
    """A trial asking for more than the whole cluster has would wait forever."""
    short = [f"{kind} {need:g} (the cluster has {have:g})"
             for kind, need, have in (("cpu", spec.resources.cpu, cluster.cpus),
                                      ("gpu", spec.resources.gpu, cluster.gpus)) if need > have]
    if not short:
        return []
    return [f"resources: each trial asks for {' and '.join(short)}; no trial could ever "
            "start. Lower resources in the spec, or join a bigger cluster with --address."]


def placement_problems(settings: "SweepSettings", cluster: "ClusterInfo") -> list[str]:
    """Step 3 of the module docstring: what the nodes of the cluster Ray joined cannot reach."""
    problems = []
    if settings.tracking_uri is None and cluster.other_hosts:
        how = {"flag": "--address", "environment": "RAY_ADDRESS"}.get(
            settings.sources.get("address", ""), "found through Ray's current-cluster file")
        problems.append(embedded_server_refusal(
            f"the Ray cluster at {cluster.joined} ({how}; nodes on {listing(cluster.other_hosts)})"))
    if cluster.nodes > 1 and "://" not in settings.storage:
        problems += _storage_problems(Path(settings.storage))
    return problems


def _storage_problems(storage: Path) -> list[str]:
    """A marker file written here and looked for on every other node: a node that does not
    see it would write its checkpoints where no other node can resume them (Ray Tune then
    fails the trial at its first checkpoint)."""
    from orchestrator import tune_runner

    missing = [path for path in (storage, *storage.parents) if not path.exists()]  # deepest first
    marker = storage / f".xmem-storage-check-{uuid.uuid4().hex}"
    try:
        storage.mkdir(parents=True, exist_ok=True)
        marker.touch()
        seen = tune_runner.run_on_every_other_node(os.path.isfile, str(marker))
    except OSError:
        return []  # an unwritable storage folder is step 1's problem
    finally:
        marker.unlink(missing_ok=True)
        for path in missing:
            if path.is_dir():
                path.rmdir()
    blind = [where for where, found in seen if not found]
    if not blind:
        return []
    return [f"storage {storage}: not visible on {listing(blind)}; a trial resumes from its "
            "checkpoint on whichever node runs it next, so every node must see the same folder. "
            "Use --storage on a filesystem every node mounts at the same path (NFS, a shared "
            "volume), or s3://bucket/prefix."]


def report(spec_path: str, problems: Sequence[str]) -> XmemError:
    """The user error listing every problem, and what to do next."""
    lines = [f"{spec_path}: the sweep cannot start: {count(len(problems), 'problem')}:"]
    lines += ["  - " + problem.replace("\n", "\n    ") for problem in problems]
    lines.append(f"Nothing was created. Fix them, then run: xmem sweep {spec_path}")
    return XmemError("\n".join(lines))
