"""``xmem report`` on a real sweep (``finished_sweep``: its outcome is known), and the figures
drawn from hand-made results tables (no servers)."""

from __future__ import annotations

import html
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from orchestrator.results import claims, figures, grouping
from orchestrator.cli import main
from workers import contract

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIN_FIGURES = {"fig1_test_acc_over_epochs.png", "fig2_accuracy_vs_sigma.png",
               "fig3_alignment_vs_sigma.png", "fig3_alignment_over_epochs.png",
               "fig4_test_acc_vs_alignment.png"}


@pytest.mark.slow
def test_report_writes_figures_html_and_claims_and_logs_them_to_the_parent_run(
        finished_sweep, mlflow_server, tmp_path):
    name = finished_sweep.spec.name
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", name, "--out", str(out),
                                       "--tracking-uri", mlflow_server.uri])
    assert result.exit_code == 0, result.output

    pngs = {path.name for path in out.glob("*.png")}
    assert pngs == SIN_FIGURES        # no fig5: model and shuffle_labels do not vary
    for png in pngs:
        assert (out / png).read_bytes().startswith(PNG_MAGIC)

    # The tables the figures and claims were computed from are the export's.
    exported = tmp_path / "exported.parquet"
    assert CliRunner().invoke(main, ["export", name, "-o", str(exported), "--tracking-uri",
                                     mlflow_server.uri]).exit_code == 0
    assert pq.read_table(out / "results.parquet").equals(pq.read_table(exported))
    history = pq.read_table(out / "history.parquet")
    assert history.num_rows == 4 * 5

    # Claims on a sweep whose outcome is known: sin, sigma 0.01 generalizes, 10 memorizes.
    verdicts = {row["claim"]: row for row in pq.read_table(out / "claims.parquet").to_pylist()}
    assert verdicts["1"]["verdict"] == claims.PASS
    assert verdicts["2"]["verdict"] == claims.PASS
    assert verdicts["3"]["verdict"] == claims.PASS
    for claim in ("4a", "4b", "4c", "5", "7a", "7b", "8"):
        assert verdicts[claim]["verdict"] == claims.NOT_TESTABLE, claim
    assert verdicts["6"]["verdict"] == claims.NOT_TESTABLE and "digits" in verdicts["6"]["evidence"]
    # Seeds aggregated: two per sigma, and claim 1's numbers are the table's means.
    trials = pq.read_table(exported).to_pylist()
    best_small = sum(r[contract.TEST_BEST_ACC] for r in trials if r["sigma"] == 0.01) / 2
    assert f"σ=0.01 {best_small:.1%} ± " in verdicts["1"]["evidence"]
    assert "(n=2)" in verdicts["1"]["evidence"]

    page = (out / "report.html").read_text()
    images = re.findall(r"<img [^>]*src='data:image/png;base64,[A-Za-z0-9+/=]+'", page)
    assert len(images) == len(pngs)
    assert "src='fig" not in page                 # self-contained: nothing linked
    assert "<table class='claims'>" in page and "<table class='trials'>" in page
    assert page.count(">PASS<") == 3 and page.count(">not testable here<") == 8
    for row in trials:
        assert row["name"] in page and row["run_id"] in page
    # The link to the trials in the MLflow UI (model-training mode, the trials view).
    assert f"<a href='{html.escape(finished_sweep.experiment_url)}'>" in page
    assert f"Browse the runs: {finished_sweep.experiment_url}" in result.output.splitlines()

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(name)
    parent = [r for r in client.search_runs([experiment.experiment_id])
              if r.data.tags.get("xmem.role") == "parent"][0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{f}" for f in pngs | {"report.html", "claims.parquet", "results.parquet"}} <= logged
    assert f"logged to the parent run {parent.info.run_id}" in result.output


@pytest.mark.slow
def test_report_of_an_unknown_sweep_exits_2_and_writes_nothing(finished_sweep, mlflow_server, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "no-such-sweep", "--out", str(out),
                                       "--tracking-uri", mlflow_server.uri])
    assert result.exit_code == 2, result.output
    assert "no sweep named 'no-such-sweep'" in result.output
    assert finished_sweep.spec.name in result.output
    assert not out.exists()


# --- figures from hand-made tables ----------------------------------------------------------

def _trial(**values) -> dict:
    row = {"status": "finished", "trial_id": f"t{len(values)}-{id(values)}", "run_id": "r",
           "name": "n", "dataset": "cifar10", "model": "mlp", "activation": "relu",
           "loss": "cross_entropy", "temperature": 1.0, "shuffle_labels": False, "seed": 0,
           "sigma": None, "lr": 0.01, "test_size": 1000, contract.TRAIN_ACC: 1.0,
           contract.TEST_ACC: 0.4, contract.TEST_BEST_ACC: 0.45, contract.ALIGN_GRAD: 0.1,
           contract.ALIGN_REP: 0.3}
    row.update(values)
    return row


def _history(trials: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"trial_id": t["trial_id"], "epoch": e,
                                  contract.TEST_ACC: t[contract.TEST_ACC] * e / 4,
                                  contract.ALIGN_GRAD: t[contract.ALIGN_GRAD] if e % 2 == 0 else None,
                                  contract.ALIGN_REP: t[contract.ALIGN_REP]}
                                 for t in trials for e in range(5)])


def test_architecture_sweep_gets_the_condition_figure(tmp_path):
    trials = [_trial(trial_id=f"{model}-{shuffled}-{seed}", model=model, shuffle_labels=shuffled,
                     seed=seed, **{contract.TEST_BEST_ACC: 0.3 + 0.1 * (model == "convnet")})
              for model in ("mlp", "convnet") for shuffled in (False, True) for seed in (0, 1)]
    drawn = figures.draw_figures(pa.Table.from_pylist(trials), _history(trials), tmp_path)
    names = {f.path.name for f in drawn}
    assert "fig5_conditions.png" in names
    # Sigma is null (glorot) everywhere: nothing to draw against sigma.
    assert "fig2_accuracy_vs_sigma.png" not in names and "fig3_alignment_vs_sigma.png" not in names
    for figure in drawn:
        assert figure.path.read_bytes().startswith(PNG_MAGIC)


def test_linked_temperature_labels_sigma_instead_of_splitting_panels(tmp_path):
    trials = [_trial(trial_id=f"s{sigma}", sigma=sigma, temperature=sigma / 0.01)
              for sigma in (0.01, 0.1, 1.0)]
    rows = pa.Table.from_pylist(trials).to_pylist()
    assert grouping.sigma_linked_keys(rows) == ["temperature"]
    assert grouping.panel_keys(rows) == []
    drawn = figures.draw_figures(pa.Table.from_pylist(trials), _history(trials), tmp_path)
    assert {f.path.name for f in drawn} >= {"fig1_test_acc_over_epochs.png", "fig2_accuracy_vs_sigma.png"}


def test_failed_trials_are_not_drawn_and_an_all_failed_sweep_draws_nothing(tmp_path):
    failed = [_trial(trial_id="f", status="failed", sigma=1.0)]
    assert figures.draw_figures(pa.Table.from_pylist(failed), None, tmp_path) == []
