"""``xmem status`` and ``xmem resume``: a sweep seen from its MLflow runs alone."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from orchestrator.settings import tracking_uri_for
from orchestrator.text import METRIC_LABELS, format_metric, format_table
from orchestrator.tracking.records import TrialRecord
from orchestrator.tracking.server import open_tracking
from workers import contract
from workers.contract import TAG_ATTEMPTS, TAG_SPEC_PATH, TAG_STORAGE, TAG_WORKDIR
from workers.errors import XmemError

if TYPE_CHECKING:
    from orchestrator.run import SweepOutcome
    from orchestrator.tracking.reader import SweepReader

STATUS_METRICS = (contract.TRAIN_ACC, contract.TEST_ACC, contract.TEST_BEST_ACC, contract.ALIGN_GRAD)


def format_status(sweep: str, records: list[TrialRecord]) -> str:
    """One line per trial (state, attempts, epochs done, last metrics), then the totals."""
    errors = any(record.error for record in records)
    header = (["trial", "state", "attempts", "epochs"]
              + [METRIC_LABELS[name] for name in STATUS_METRICS] + (["error"] if errors else []))
    rows = []
    for record in sorted(records, key=lambda r: r.name):
        epochs = record.epochs_done
        total = record.params.get("epochs")
        rows.append([record.name, record.status, record.tags.get(TAG_ATTEMPTS, "0"),
                     f"{'-' if epochs is None else epochs}/{total}"]
                    + [format_metric(name, record.last_value(name)) for name in STATUS_METRICS]
                    + ([record.error or ""] if errors else []))
    counts = collections.Counter(row[1] for row in rows)
    totals = f"{sweep}: {len(rows)} trial(s): " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return format_table(header, rows, rule=True) + "\n\n" + totals


def sweep_status(sweep: str, *, tracking_uri: str | None = None, store: str | None = None,
                 echo: Callable[[str], None] = print) -> None:
    """Print ``format_status`` of the sweep, then where to browse its trials in the UI."""
    from orchestrator.tracking.reader import SweepReader

    _, root = tracking_uri_for(tracking_uri, store)
    with open_tracking(tracking_uri, store, artifacts=False) as uri:
        reader = SweepReader(uri, sweep)
        reader.open_existing()
        echo(format_status(sweep, reader.trial_records()))
        driver = _driver_line(reader)
        if driver:
            echo(driver)
        echo(reader.browse_line(store=str(root) if root else None))


def _driver_line(reader: "SweepReader") -> str | None:
    """Who runs the sweep now (its lease holder: ``orchestrator.tracking.lease``); None when
    no driver holds an unexpired lease, or the sweep has no parent run."""
    import time

    from orchestrator.tracking.lease import LeaseHolder

    try:
        tags = reader.parent_tags()
    except XmemError:
        return None
    holder = LeaseHolder.parse(tags.get(contract.TAG_LEASE_HOLDER))
    try:
        expires = float(tags.get(contract.TAG_LEASE_EXPIRES) or 0)
    except ValueError:
        return None
    if holder is None or expires <= time.time():
        return None
    until = time.strftime("%H:%M:%S", time.localtime(expires))
    return f"run now by the driver on {holder.describe()}; its lease runs to {until}"


def resume_sweep(sweep: str, *, tracking_uri: str | None = None, store: str | None = None,
                 address: str | None = None, restart_failed: bool = False,
                 echo: Callable[[str], None] = print, live: bool = False,
                 take_over: bool = False) -> "SweepOutcome | None":
    """Rerun sweep ``sweep`` with the spec stored with it (its parent run's ``spec.yaml``, not
    whatever file is now at the path it ran from), in the storage its parent run recorded,
    with relative data paths resolved against the folder they resolved against when it ran.

    Raises:
        XmemError: no such sweep, its spec cannot be read, or the stored spec is another
            sweep's (its ``name`` is not ``sweep``); and what ``run_sweep`` raises.
    """
    from orchestrator.run import SpecOrigin, run_sweep
    from orchestrator.tracking.reader import SweepReader

    with tempfile.TemporaryDirectory(prefix=f"xmem-{sweep}-") as folder:
        with open_tracking(tracking_uri, store, artifacts=True) as uri:
            reader = SweepReader(uri, sweep)
            tags = reader.parent_tags()
            spec_path = _stored_spec(reader, folder)
        _check_spec_name(spec_path, sweep)
        storage = tags.get(TAG_STORAGE)
        workdir = tags.get(TAG_WORKDIR)
        recorded = tags.get(TAG_SPEC_PATH) or spec_path
        echo(f"resuming sweep {sweep} with the spec stored with it (first run from {recorded}; "
             f"storage {storage})")
        if workdir is None:
            echo(f"note: sweep {sweep} did not record its working directory (an earlier xmem): "
                 f"relative data paths resolve against {Path.cwd()}")
        origin = SpecOrigin(spec_path=recorded, workdir=workdir or str(Path.cwd()),
                            command=f"xmem resume {sweep}")
        return run_sweep(spec_path, address=address, tracking_uri=tracking_uri, storage=storage,
                         restart_failed=restart_failed, store=None if tracking_uri else store,
                         echo=echo, live=live, take_over=take_over, origin=origin)


def _stored_spec(reader: "SweepReader", folder: str) -> str:
    """The sweep's ``spec.yaml`` artifact, downloaded into ``folder``."""
    try:
        return reader.download_spec(folder)
    except XmemError as error:
        raise XmemError(f"sweep {reader.sweep_name}: its parent run's spec.yaml cannot be read "
                        f"({error}); run xmem sweep SPEC.yaml instead") from None


def _check_spec_name(spec_path: str, sweep: str) -> None:
    """Refuse a stored spec whose ``name`` is not ``sweep`` (it would run another sweep)."""
    try:
        name = (yaml.safe_load(Path(spec_path).read_text()) or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError) as error:
        raise XmemError(f"sweep {sweep}: the spec stored with it cannot be read ({error}); "
                        "run xmem sweep SPEC.yaml instead") from None
    if name != sweep:
        raise XmemError(f"sweep {sweep}: the spec stored with it is named {name!r}, not "
                        f"{sweep!r}, so resuming it would run another sweep; run that sweep's "
                        "spec with xmem sweep SPEC.yaml instead")
