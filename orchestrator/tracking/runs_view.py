"""The MLflow UI's view of a sweep: the link xmem prints, and the saved view it opens.

MLflow 3.17 opens an experiment in its GenAI mode (traces, "No data available") unless the URL
carries ``workflowType=machine_learning``, and shows a sweep's trials only after the parent
run is expanded and their columns are picked by hand. xmem's link therefore opens the
experiment's runs in model-training mode through a *saved view* that xmem writes as an
experiment tag (MLflow's own format, the one its "Views" menu and shared links use)::

    <uri>/#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=xmem-trials

The view lists the trial runs alone (``tags.`xmem.role` = 'trial'``), in the spec's order
(sorted by ``xmem.trial_index``; any sort other than by creation time also shows child runs
flat, without their parent), with the columns the spec's varying keys (sigma, seed, ...),
``xmem.status``, train accuracy, best test accuracy, gradient alignment and the dataset.
The experiment also carries ``mlflow.experimentKind`` = ``custom_model_development``.

Plain data, no mlflow import: ``orchestrator.tracking.writer`` writes the tags.
"""

from __future__ import annotations

import json
from typing import Iterable

from workers import contract

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
WORKFLOW_QUERY = "workflowType=machine_learning"   # MLflow's model-training mode
VIEW_TAG_PREFIX = "mlflow.sharedViewState."        # + view id: a saved view of the runs page
TRIALS_VIEW_ID = "xmem-trials"
TRIALS_VIEW_TAG = VIEW_TAG_PREFIX + TRIALS_VIEW_ID
TRIALS_VIEW_NAME = "xmem trials"                   # its name in the UI's "Views" menu
TRIAL_INDEX_WIDTH = 4                              # 0000, 0001, ...: sorts as text
UI_PORT = 5000                                     # xmem ui's default port
TABLE_METRICS = (contract.TRAIN_ACC, contract.TEST_BEST_ACC, contract.ALIGN_GRAD)
# Above this many trials the charts show the first 20 (MLflow's default is 10): each shown
# run costs the charts one metric-history request per metric.
CHARTS_SHOW_ALL_UP_TO = 50
# Column widths (px) that fit run name, sigma, seed, status and the three metrics beside the
# UI's side panels on a 1600 px wide window; the dataset column comes after them.
WIDTH_PX = {"params": 70, "tags": 85, "metrics": 95, "attributes": 200}


def trial_index(position: int) -> str:
    """The ``xmem.trial_index`` tag of the trial at ``position`` in the spec's order."""
    return f"{position:0{TRIAL_INDEX_WIDTH}d}"


def column(kind: str, key: str) -> str:
    """A runs-table column as MLflow's UI names it: ``params.`sigma```, ``metrics.`train/acc```."""
    return f"{kind}.`{key}`"


def trials_view_state(varying_keys: Iterable[str], trial_count: int) -> dict:
    """The saved view's state: search facets (filter, sort) and table state (columns)."""
    kinds = ([("params", key) for key in varying_keys] + [("tags", contract.TAG_STATUS)]
             + [("metrics", name) for name in TABLE_METRICS] + [("attributes", "Dataset")])
    columns = [column(kind, key) for kind, key in kinds]
    return {
        # Runs superseded by a later attempt of their trial are not the trial's (readers skip
        # them too); they stay in the experiment, found by clearing the filter.
        "searchFilter": (f"tags.`{contract.TAG_ROLE}` = '{contract.ROLE_TRIAL}' "
                         f"AND tags.`{contract.TAG_SUPERSEDED_BY}` IS NULL"),
        "orderByKey": column("tags", contract.TAG_TRIAL_INDEX),
        "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {column(kind, key): WIDTH_PX[kind] for kind, key in kinds},
        "runsHiddenMode": "SHOW_ALL" if trial_count <= CHARTS_SHOW_ALL_UP_TO else "FIRST_20_RUNS",
    }


def trials_view_tag(varying_keys: Iterable[str], trial_count: int, now_ms: int) -> str:
    """The value of ``TRIALS_VIEW_TAG``: MLflow's saved-view envelope around the state."""
    state = json.dumps(trials_view_state(varying_keys, trial_count), separators=(",", ":"))
    return json.dumps({"name": TRIALS_VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms,
                       "state": state})


def runs_url(server_uri: str, experiment_id: str, with_view: bool = True) -> str:
    """The link to an experiment's runs in model-training mode, through the trials view
    (``with_view``: the experiment carries it; sweeps of older xmem versions do not)."""
    url = f"{server_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}"
    return url + (f"&viewStateShareKey={TRIALS_VIEW_ID}" if with_view else "")


def is_served(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` is a server a browser can open (http or https)."""
    return tracking_uri.startswith(("http://", "https://"))


def browse_target(experiment_id: str, with_view: bool, *, server_uri: str | None = None,
                  store: str | None = None, tracking_uri: str | None = None) -> tuple[str | None, str]:
    """Where to look at a sweep's trials: (the command that serves them first, or None; the
    link). The link on ``server_uri`` as it is; for a ``store`` folder, ``xmem ui`` and the
    link it serves; for another tracking URI (a database), ``mlflow server`` over it."""
    if server_uri is not None and is_served(server_uri):
        return None, runs_url(server_uri, experiment_id, with_view)
    local = runs_url(f"http://127.0.0.1:{UI_PORT}", experiment_id, with_view)
    if store is not None:
        return f"xmem ui --store {store}", local
    return f"mlflow server --backend-store-uri {tracking_uri} --port {UI_PORT}", local


def browse_line(experiment_id: str, with_view: bool, **where: str | None) -> str:
    """``browse_target`` as the line xmem prints: ``Browse the runs: [COMMAND, then open] URL``."""
    command, url = browse_target(experiment_id, with_view, **where)
    return f"Browse the runs: {url}" if command is None else f"Browse the runs: {command}, then open {url}"
