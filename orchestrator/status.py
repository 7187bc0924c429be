"""``xmem status`` and ``xmem resume``: a sweep seen from its MLflow runs alone."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from orchestrator.settings import tracking_uri_for
from orchestrator.text import METRIC_LABELS, format_metric, format_table
from orchestrator.tracking.records import TrialRecord
from orchestrator.tracking.server import open_tracking
from workers import contract
from workers.contract import TAG_ATTEMPTS, TAG_SPEC_PATH, TAG_STORAGE
from workers.errors import XmemError

if TYPE_CHECKING:
    from orchestrator.run import SweepOutcome

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
        echo(reader.browse_line(store=str(root) if root else None))


def resume_sweep(sweep: str, *, tracking_uri: str | None = None, store: str | None = None,
                 address: str | None = None, restart_failed: bool = False,
                 echo: Callable[[str], None] = print, live: bool = False) -> "SweepOutcome | None":
    """Rerun sweep ``sweep`` from the spec and storage its parent run recorded."""
    from orchestrator.run import run_sweep
    from orchestrator.tracking.reader import SweepReader

    with open_tracking(tracking_uri, store, artifacts=False) as uri:
        tags = SweepReader(uri, sweep).parent_tags()
    spec_path = tags.get(TAG_SPEC_PATH)
    storage = tags.get(TAG_STORAGE)
    if not spec_path or not Path(spec_path).is_file():
        spec_path = _spec_from_parent_run(sweep, tracking_uri, store, spec_path)
    echo(f"resuming sweep {sweep} from {spec_path} (storage {storage})")
    return run_sweep(spec_path, address=address, tracking_uri=tracking_uri, storage=storage,
                     restart_failed=restart_failed, store=None if tracking_uri else store,
                     echo=echo, live=live)


def _spec_from_parent_run(sweep: str, tracking_uri: str | None, store: str | None,
                          recorded: str | None) -> str:
    """The spec the sweep last ran, from its parent run's ``spec.yaml`` artifact."""
    from orchestrator.tracking.reader import SweepReader

    folder = Path(tempfile.mkdtemp(prefix=f"xmem-{sweep}-"))
    with open_tracking(tracking_uri, store, artifacts=True) as uri:
        try:
            return SweepReader(uri, sweep).download_spec(folder)
        except XmemError as error:
            raise XmemError(f"sweep {sweep}: its spec file {recorded or '(not recorded)'} is gone and "
                            f"its parent run's spec.yaml cannot be read ({error}); run xmem sweep "
                            "SPEC.yaml instead") from None
