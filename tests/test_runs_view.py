"""The MLflow UI's view of a sweep (``orchestrator.tracking.runs_view``): the link xmem
prints, the saved view it opens, and what a finished sweep leaves for them on a real server
(experiment kind, the view's tag, each trial's place), read back the way the UI reads it.
The rendered page itself is checked in a real browser by ``test_ui_browser.py``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.tracking import runs_view
from workers import contract

LINK = ("http://h:5000/#/experiments/7/runs?workflowType=machine_learning"
        "&viewStateShareKey=xmem-trials")


def test_the_link_opens_the_runs_in_model_training_mode_through_the_trials_view():
    assert runs_view.runs_url("http://h:5000/", "7") == LINK
    assert runs_view.runs_url("http://h:5000", "7", with_view=False) == \
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning"


def test_browse_line_names_the_link_or_what_serves_it_first():
    assert runs_view.browse_line("7", True, server_uri="http://h:5000") == f"Browse the runs: {LINK}"
    local = LINK.replace("h:5000", "127.0.0.1:5000")
    assert runs_view.browse_line("7", True, store="/s/mlflow") == \
        f"Browse the runs: xmem ui --store /s/mlflow, then open {local}"
    assert runs_view.browse_target("7", True, tracking_uri="sqlite:///x.db") == \
        ("mlflow server --backend-store-uri sqlite:///x.db --port 5000", local)


def test_the_view_lists_trials_flat_in_spec_order_with_the_varying_keys_and_results():
    state = runs_view.trials_view_state(["sigma", "seed"], trial_count=10)
    # No parent run, no run superseded by a later attempt of its trial.
    assert state["searchFilter"] == "tags.`xmem.role` = 'trial' AND tags.`xmem.superseded_by` IS NULL"
    # Any sort but the creation time shows child runs flat (the UI nests only under that one).
    assert state["orderByKey"] == "tags.`xmem.trial_index`" and state["orderByAsc"] is True
    assert state["selectedColumns"] == [
        "params.`sigma`", "params.`seed`", "tags.`xmem.status`", "metrics.`train/acc`",
        "metrics.`test/best_acc`", "metrics.`align/grad`", "attributes.`Dataset`"]
    assert state["columnOrder"] == state["selectedColumns"]
    assert state["runsHiddenMode"] == "SHOW_ALL"
    assert runs_view.trials_view_state(["sigma"], trial_count=500)["runsHiddenMode"] == "FIRST_20_RUNS"


def test_the_view_tag_is_mlflows_saved_view_envelope():
    envelope = json.loads(runs_view.trials_view_tag(["sigma"], 2, now_ms=123))
    assert envelope["name"] == "xmem trials" and envelope["createdAt"] == 123
    assert json.loads(envelope["state"]) == runs_view.trials_view_state(["sigma"], 2)
    assert runs_view.TRIALS_VIEW_TAG == "mlflow.sharedViewState.xmem-trials"
    assert [runs_view.trial_index(i) for i in (0, 7, 123)] == ["0000", "0007", "0123"]


# --- what a finished sweep leaves on a real server ----------------------------------------

@pytest.mark.slow
def test_a_finished_sweep_is_a_model_training_experiment_with_its_trials_view(
        finished_sweep, mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(finished_sweep.spec.name)
    assert experiment.tags[runs_view.EXPERIMENT_KIND_TAG] == "custom_model_development"
    envelope = json.loads(experiment.tags[runs_view.TRIALS_VIEW_TAG])
    state = json.loads(envelope["state"])
    assert state["selectedColumns"][:2] == ["params.`sigma`", "params.`seed`"]  # the grid's keys
    assert finished_sweep.experiment_url == runs_view.runs_url(mlflow_server.uri,
                                                               experiment.experiment_id)

    # What the UI asks the server for with the view's filter and sort: the four trials,
    # without the parent run, in the spec's order.
    order = f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"
    runs = client.search_runs([experiment.experiment_id], state["searchFilter"], order_by=[order])
    assert [r.info.run_name for r in runs] == [t.name for t in finished_sweep.trials]
    assert [r.data.tags[contract.TAG_TRIAL_INDEX] for r in runs] == ["0000", "0001", "0002", "0003"]


@pytest.mark.slow
def test_status_prints_the_link_to_the_trials(finished_sweep, mlflow_server):
    result = CliRunner().invoke(main, ["status", finished_sweep.spec.name,
                                       "--tracking-uri", mlflow_server.uri])
    assert result.exit_code == 0, result.output
    assert f"Browse the runs: {finished_sweep.experiment_url}" in result.output.splitlines()


@pytest.mark.slow
def test_status_of_a_store_says_to_serve_it_with_xmem_ui(finished_sweep, mlflow_server):
    """The session server's folder is a store like the embedded server's: read through its
    SQLite file, and browsed with xmem ui."""
    experiment_id = MlflowClient(mlflow_server.uri).get_experiment_by_name(
        finished_sweep.spec.name).experiment_id
    result = CliRunner().invoke(main, ["status", finished_sweep.spec.name,
                                       "--store", str(mlflow_server.root)],
                                env={"MLFLOW_TRACKING_URI": ""})
    assert result.exit_code == 0, result.output
    local = runs_view.runs_url("http://127.0.0.1:5000", experiment_id)
    assert f"Browse the runs: xmem ui --store {mlflow_server.root}, then open {local}" \
        in result.output.splitlines()
