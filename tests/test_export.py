"""``xmem export``: the results tables, checked against what MlflowClient holds for a real
sweep (``finished_sweep``), and built from hand-made run records (fast, no servers)."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import assert_user_error
from orchestrator import settings
from orchestrator.results import tables
from orchestrator.cli import main
from orchestrator.tracking.params import config_params
from orchestrator.tracking.records import TrialRecord
from workers import contract
from workers.config import TrialConfig

EXPECTED_TYPES = {"sweep": pa.string(), "trial_id": pa.string(), "run_id": pa.string(),
                  "name": pa.string(), "status": pa.string(), "attempts": pa.int64(),
                  "epochs_done": pa.int64(), "dataset": pa.string(), "data_file": pa.string(),
                  "download": pa.bool_(), "train_size": pa.int64(), "test_size": pa.int64(),
                  "shuffle_labels": pa.bool_(), "hidden": pa.int64(), "sigma": pa.float64(),
                  "temperature": pa.float64(), "lr": pa.float64(), "seed": pa.int64(),
                  "checkpoint_every": pa.int64()}


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _child_runs(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    return [run for run in client.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" in run.data.tags and contract.TAG_SUPERSEDED_BY not in run.data.tags]


# --- a real sweep -----------------------------------------------------------------------------

@pytest.mark.slow
def test_export_has_one_typed_row_per_trial_matching_mlflow(finished_sweep, mlflow_server, tmp_path):
    name = finished_sweep.spec.name
    out = tmp_path / "results.parquet"
    result = _invoke("export", name, "-o", str(out), "--tracking-uri", mlflow_server.uri)
    assert result.exit_code == 0, result.output
    assert "4 rows" in result.output

    table = pq.read_table(out)
    client = MlflowClient(mlflow_server.uri)
    runs = {run.info.run_id: run for run in _child_runs(client, name)}
    assert table.num_rows == len(runs) == 4
    for column, expected in EXPECTED_TYPES.items():
        assert table.schema.field(column).type == expected, column
    metric_names = set().union(*(run.data.metrics for run in runs.values()))
    assert {contract.TRAIN_ACC, contract.TEST_BEST_ACC, contract.ALIGN_GRAD} <= metric_names
    for metric in metric_names:
        assert table.schema.field(metric).type == pa.float64(), metric
    assert set(table.column_names) == (set(tables.TRIAL_COLUMNS) | {"attempts", "epochs_done"}
                                       | set(TrialConfig.keys()) | metric_names
                                       | {f"{m}@epoch" for m in metric_names
                                          if not m.startswith("system/")}
                                       | {"stale_metrics"})

    for row in table.to_pylist():
        run = runs[row["run_id"]]
        assert row["sweep"] == name
        assert row["trial_id"] == run.data.tags["xmem.trial_id"]
        assert row["name"] == run.info.run_name
        assert row["status"] == run.data.tags["xmem.status"] == "finished"
        assert row["attempts"] == int(run.data.tags["xmem.attempts"]) == 1
        steps = [m.step for m in client.get_metric_history(row["run_id"], contract.TRAIN_ACC)]
        assert row["epochs_done"] == max(steps) == 20
        # Config values, typed: the params as the driver wrote them.
        assert config_params(TrialConfig.from_mapping(
            {k: row[k] for k in TrialConfig.keys()})) == run.data.params
        assert row["data_file"] is None and row["checkpoint_every"] is None
        for metric in metric_names:
            assert math.isclose(row[metric], run.data.metrics[metric]), metric
            if metric.startswith("system/"):   # MLflow's samples: indexed by sample, not epoch
                assert f"{metric}@epoch" not in row
                continue
            history = client.get_metric_history(row["run_id"], metric)
            assert row[f"{metric}@epoch"] == max(m.step for m in history) == 20, metric
        # Alignment (every 10 epochs) is measured at the last epoch too: nothing is stale.
        assert row["stale_metrics"] == [] and row["in_spec"] is True


@pytest.mark.slow
def test_export_history_has_a_row_per_trial_and_evaluated_epoch(finished_sweep, mlflow_server,
                                                                 tmp_path, monkeypatch):
    # Through --store: the same store, read from its SQLite file (beside the running server).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = finished_sweep.spec.name
    out = tmp_path / "history.parquet"
    result = _invoke("export", name, "--history", "-o", str(out), "--store", str(mlflow_server.root))
    assert result.exit_code == 0, result.output

    table = pq.read_table(out)
    assert table.schema.field("epoch").type == pa.int64()
    assert table.schema.field("sigma").type == pa.float64()
    client = MlflowClient(mlflow_server.uri)
    runs = _child_runs(client, name)
    expected_rows = 0
    for run in runs:
        history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                   for key in run.data.metrics if not key.startswith("system/")}  # by sample
        steps = sorted(set().union(*history.values()))
        assert steps == [0, 5, 10, 15, 20]        # the evaluated epochs
        expected_rows += len(steps)
        rows = [r for r in table.to_pylist() if r["run_id"] == run.info.run_id]
        assert [r["epoch"] for r in rows] == steps
        for row in rows:
            for key, values in history.items():
                if row["epoch"] in values:
                    assert math.isclose(row[key], values[row["epoch"]]), (key, row["epoch"])
                else:
                    assert row[key] is None, (key, row["epoch"])   # alignment: epochs 0, 10, 20
    assert table.num_rows == expected_rows == 4 * 5
    assert not [c for c in table.column_names if c.startswith("system/")]


@pytest.mark.slow
def test_unknown_sweep_exits_2_listing_the_sweeps_that_exist(finished_sweep, mlflow_server, tmp_path):
    out = tmp_path / "x.parquet"
    result = _invoke("export", "no-such-sweep", "-o", str(out), "--tracking-uri", mlflow_server.uri)
    assert_user_error(result, "no sweep named 'no-such-sweep'", finished_sweep.spec.name)
    assert not out.exists()


def test_missing_store_exits_2_with_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = _invoke("export", "quickstart", "--store", str(tmp_path / "nothing"))
    assert_user_error(result, "no MLflow store at", "--tracking-uri")


def test_unreachable_server_exits_2_quickly(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = _invoke("export", "quickstart", "-o", str(tmp_path / "x.parquet"),
                     "--tracking-uri", "http://127.0.0.1:9")
    assert_user_error(result, "http://127.0.0.1:9")


# --- the tables from hand-made records (no servers) ----------------------------------------

def _record(name: str, config: TrialConfig, latest: dict[str, tuple[int, float]], *,
            status: str | None = "finished", attempts: str = "1", params: dict | None = None
            ) -> TrialRecord:
    tags = {"xmem.trial_id": f"id-{name}", "xmem.attempts": attempts}
    if status is not None:
        tags["xmem.status"] = status
    return TrialRecord(run_id=f"run-{name}", name=name, trial_id=f"id-{name}",
                       run_status="FINISHED" if status else "SCHEDULED", tags=tags,
                       params=config_params(config) if params is None else params, latest=latest)


def test_trials_table_types_every_config_key_and_leaves_missing_values_null():
    done = _record("a", TrialConfig(sigma=0.1, data_file="/d/t.parquet", train_size=100),
                   {contract.TRAIN_ACC: (20, 1.0), contract.ALIGN_GRAD: (20, 0.25),
                    "align/grad_hidden": (20, 0.5), "custom/x": (3, 7.0)})
    scheduled = _record("b", TrialConfig(sigma=None), {}, status=None, attempts="0",
                        params={**config_params(TrialConfig()), "hidden": "not json",
                                "old_key": "3"})
    table = tables.trials_table("s", [done, scheduled])
    assert table.num_rows == 2
    for column, expected in EXPECTED_TYPES.items():
        assert table.schema.field(column).type == expected, column
    assert table.schema.field("old_key").type == pa.string()   # a param of another version
    first, second = table.to_pylist()
    assert (first["sigma"], first["data_file"], first["train_size"]) == (0.1, "/d/t.parquet", 100)
    assert (second["sigma"], second["data_file"], second["train_size"]) == (None, None, None)
    assert second["hidden"] is None and second["old_key"] == "3"
    assert (first["status"], second["status"]) == ("finished", "scheduled")
    assert (first["attempts"], second["attempts"]) == (1, 0)
    assert (first["epochs_done"], second["epochs_done"]) == (20, None)
    assert first[contract.ALIGN_GRAD] == 0.25 and second[contract.ALIGN_GRAD] is None
    # Metric columns: evaluation, then alignment (layers after align/grad), then the rest.
    names = table.column_names
    assert names.index(contract.TRAIN_ACC) < names.index(contract.ALIGN_GRAD) \
        < names.index("align/grad_hidden") < names.index("custom/x")


def test_history_table_has_a_row_per_evaluated_epoch_and_keeps_the_latest_of_a_step():
    record = _record("a", TrialConfig(sigma=1.0), {contract.TEST_ACC: (4, 0.5),
                                                   contract.ALIGN_GRAD: (4, 0.1),
                                                   "system/cpu_utilization_percentage": (7, 50.0)})
    empty = _record("b", TrialConfig(sigma=2.0), {})
    histories = {record.run_id: {
        contract.TEST_ACC: [(0, 100, 0.1), (2, 200, 0.3), (2, 300, 0.35), (4, 400, 0.5)],
        contract.ALIGN_GRAD: [(0, 100, 0.9), (4, 400, 0.1)],
        # MLflow's system metrics count samples, not epochs: no rows, no column.
        "system/cpu_utilization_percentage": [(s, 100 * s, 50.0) for s in range(8)]}}
    table = tables.history_table("s", [record, empty], histories)
    assert "system/cpu_utilization_percentage" not in table.column_names
    assert table.num_rows == 3          # epochs 0, 2, 4 of "a"; "b" logged nothing
    rows = table.to_pylist()
    assert [r["epoch"] for r in rows] == [0, 2, 4]
    assert [r[contract.TEST_ACC] for r in rows] == [0.1, 0.35, 0.5]   # step 2 re-logged later
    assert [r[contract.ALIGN_GRAD] for r in rows] == [0.9, None, 0.1]
    assert all(r["sigma"] == 1.0 and r["run_id"] == "run-a" for r in rows)


def test_tracking_uri_precedence_flag_then_environment_then_store(tmp_path):
    assert settings.tracking_uri_for("http://flag", str(tmp_path), {"MLFLOW_TRACKING_URI": "http://env"}) \
        == ("http://flag", None)
    assert settings.tracking_uri_for(None, str(tmp_path), {"MLFLOW_TRACKING_URI": "http://env"}) \
        == ("http://env", None)
    assert settings.tracking_uri_for(None, str(tmp_path), {"MLFLOW_TRACKING_URI": ""}) \
        == (None, tmp_path.resolve())
    uri, root = settings.tracking_uri_for(None, None, {})
    assert uri is None and root.parts[-2:] == ("xmem-runs", "mlflow")


def test_trials_table_carries_each_values_epoch_and_flags_values_before_the_last_epoch():
    """A hinge-loss trial whose alignment became undefined (no longer logged) after epoch 4:
    its align/grad is the epoch-4 value, kept with its epoch and flagged, never passed off as
    final. Alignment is measured at every trial's last epoch, so an ordinary trial is not
    flagged; a diverged trial's last epoch is its last evaluated one before the blow-up."""
    def evaluated(epoch: int, **extra) -> dict[str, tuple[int, float]]:
        return {contract.TRAIN_LOSS: (epoch, 0.1), contract.TEST_ACC: (epoch, 0.5), **extra}

    hinge = _record("hinge", TrialConfig(loss="hinge"),
                    evaluated(20, **{contract.ALIGN_GRAD: (4, 0.8), contract.ALIGN_REP: (20, 0.3)}))
    # MLflow's system metrics count samples, not epochs: never stale, no epoch column.
    ordinary = _record("ordinary", TrialConfig(), evaluated(20, **{
        contract.ALIGN_GRAD: (20, 0.2), "system/cpu_utilization_percentage": (37, 12.0)}))
    diverged = _record("diverged", TrialConfig(), evaluated(6, **{contract.ALIGN_GRAD: (0, 0.9)}),
                       status="diverged")
    assert hinge.last_epoch == 20 and hinge.is_stale(contract.ALIGN_GRAD)
    assert hinge.final(contract.ALIGN_GRAD) is None
    assert hinge.final(contract.ALIGN_REP) == (0.3, 20)

    table = tables.trials_table("s", [hinge, ordinary, diverged])
    assert table.schema.field("align/grad@epoch").type == pa.int64()
    assert table.schema.field("stale_metrics").type == pa.list_(pa.string())
    rows = {row["name"]: row for row in table.to_pylist()}
    assert rows["hinge"][contract.ALIGN_GRAD] == 0.8           # kept, with its epoch and flag
    assert (rows["hinge"]["align/grad@epoch"], rows["hinge"]["epochs_done"]) == (4, 20)
    assert rows["hinge"]["stale_metrics"] == [contract.ALIGN_GRAD]
    assert rows["hinge"]["align/rep@epoch"] == 20 and rows["hinge"]["test/acc@epoch"] == 20
    assert rows["ordinary"]["stale_metrics"] == [] and rows["ordinary"]["align/grad@epoch"] == 20
    assert rows["ordinary"]["epochs_done"] == 20
    assert "system/cpu_utilization_percentage@epoch" not in table.column_names
    assert rows["ordinary"]["align/rep@epoch"] is None       # never logged: no epoch
    assert rows["diverged"]["epochs_done"] == 6
    assert rows["diverged"]["stale_metrics"] == [contract.ALIGN_GRAD]
    assert all(row["in_spec"] is None for row in rows.values())   # no spec given: not known


# --- stale trial ids: runs of an earlier version of the spec ---------------------------------

STALE_SPEC = """
name: {name}
defaults:
  dataset: digits
  activation: sin
  train_size: 200
  test_size: 200
  epochs: {epochs}
grid:
  sigma: [0.01, 10.0]
"""


def _log_sweep_version(uri: str, folder, name: str, epochs: int) -> list[str]:
    """Write what ``xmem sweep`` writes for the spec with ``epochs`` (the parent run with its
    spec.yaml, one run per trial), and finish each trial as a worker would; return the runs'
    ids. Run twice with other ``epochs``, the first version's runs have stale trial ids."""
    from orchestrator.expand import expand_trials
    from orchestrator.spec import load_spec
    from orchestrator.tracking.writer import SweepTracker

    path = folder / f"spec-{epochs}.yaml"
    path.write_text(STALE_SPEC.format(name=name, epochs=epochs))
    spec = load_spec(path)
    trials = expand_trials(spec)
    tracker = SweepTracker(uri, name)
    tracker.ensure_experiment()
    parent = tracker.start_parent_run(spec.raw, len(trials))
    run_ids = tracker.create_trial_runs(trials, parent)
    client = MlflowClient(uri)
    for trial in trials:
        run_id = run_ids[trial.trial_id]
        for key in (contract.TRAIN_LOSS, contract.TRAIN_ACC, contract.TEST_BEST_ACC):
            client.log_metric(run_id, key, 0.5, step=epochs)
        client.set_tag(run_id, contract.TAG_STATUS, contract.STATUS_FINISHED)
        client.set_terminated(run_id, "FINISHED")
    return [run_ids[trial.trial_id] for trial in trials]


def test_runs_of_stale_trial_ids_are_left_out_unless_asked_for(mlflow_server, tmp_path,
                                                                monkeypatch):
    """A sweep run, its defaults changed (epochs 2 -> 3: every trial gets a new id), run
    again: export and report read the second version's runs only, say how many they left
    out and how to include them; --include-stale includes them, marked in_spec false."""
    import uuid

    name = f"stale-{uuid.uuid4().hex[:8]}"
    old = _log_sweep_version(mlflow_server.uri, tmp_path, name, epochs=2)
    new = _log_sweep_version(mlflow_server.uri, tmp_path, name, epochs=3)

    out = tmp_path / "current.parquet"
    result = _invoke("export", name, "-o", str(out), "--tracking-uri", mlflow_server.uri)
    assert result.exit_code == 0, result.output
    assert sorted(pq.read_table(out).column("run_id").to_pylist()) == sorted(new)
    assert pq.read_table(out).column("in_spec").to_pylist() == [True, True]
    assert "left out 2 run(s) of trial ids no longer in the sweep's spec" in result.output
    assert "include them with --include-stale" in result.output

    result = _invoke("export", name, "-o", str(out), "--include-stale",
                     "--tracking-uri", mlflow_server.uri)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    assert {r["run_id"]: r["in_spec"] for r in rows} == {**{i: False for i in old},
                                                         **{i: True for i in new}}
    assert "included 2 run(s) of trial ids no longer in the sweep's spec" in result.output

    # Read from the store's SQLite file (no server serving its artifacts): the same.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    history = tmp_path / "history.parquet"
    result = _invoke("export", name, "--history", "-o", str(history),
                     "--store", str(mlflow_server.root))
    assert result.exit_code == 0, result.output
    assert set(pq.read_table(history).column("run_id").to_pylist()) == set(new)
    assert "left out 2 run(s)" in result.output

    report_dir = tmp_path / "report"
    result = _invoke("report", name, "--out", str(report_dir), "--tracking-uri", mlflow_server.uri)
    assert result.exit_code == 0, result.output
    assert "left out 2 run(s)" in result.output and "--include-stale" in result.output
    assert sorted(pq.read_table(report_dir / "results.parquet").column("run_id").to_pylist()) \
        == sorted(new)
    result = _invoke("report", name, "--out", str(report_dir), "--include-stale",
                     "--tracking-uri", mlflow_server.uri)
    assert result.exit_code == 0, result.output
    assert pq.read_table(report_dir / "results.parquet").num_rows == 4
    assert "(stale id)" in (report_dir / "report.html").read_text()
