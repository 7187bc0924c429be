"""``xmem report`` on a real sweep (``finished_sweep``: its outcome is known) and on a sweep
logged by hand (the issue's under-trained ConvNet), the claims' text and HTML, and the figures
drawn from hand-made results tables (no servers)."""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from orchestrator.results import claims, figures, grouping, report
from orchestrator.cli import main
from orchestrator.tracking.writer import SweepTracker
from workers import contract
from workers.config import TrialConfig

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
    assert verdicts["6"]["verdict"] == claims.NOT_TESTABLE and "digits" in verdicts["6"]["missing"]
    # Seeds aggregated: two per sigma, and claim 1's numbers are the table's means.
    trials = pq.read_table(exported).to_pylist()
    best_small = sum(r[contract.TEST_BEST_ACC] for r in trials if r["sigma"] == 0.01) / 2
    assert f"σ=0.01 {best_small:.1%} ± " in verdicts["1"]["evidence"]
    assert "(n=2)" in verdicts["1"]["evidence"]

    page = (out / "report.html").read_text()
    page_claims = page.split("<table class='claims'>")[1].split("</table>")[0]
    images = re.findall(r"<img [^>]*src='data:image/png;base64,[A-Za-z0-9+/=]+'", page)
    assert len(images) == len(pngs)
    assert "src='fig" not in page                 # self-contained: nothing linked
    assert "<table class='claims'>" in page and "<table class='trials'>" in page
    assert page_claims.count(">PASS<") == 3 and page_claims.count(">not testable here<") == 8
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


@dataclass
class _HandTrial:
    trial_id: str
    name: str
    config: TrialConfig


def test_report_cli_on_the_issues_under_trained_convnet(mlflow_server, tmp_path):
    """An MLP and a ConvNet logged by hand as after 20 epochs: the ConvNet at 44.8% train
    accuracy. ``xmem report`` calls claim 7a inconclusive, says what to change, and gives
    every row its rule (a tooltip and a link into "How the claims are checked")."""
    name = f"hand-{uuid.uuid4().hex[:8]}"
    tracker = SweepTracker(mlflow_server.uri, name)
    tracker.ensure_experiment()
    parent = tracker.start_parent_run({"name": name}, trial_count=2)
    config = dict(dataset="cifar10", train_size=2000, test_size=1000, activation="relu",
                  hidden=256, epochs=20)
    trials = [_HandTrial("hand00000001", "mlp", TrialConfig(model="mlp", **config)),
              _HandTrial("hand00000002", "convnet", TrialConfig(model="convnet", **config))]
    run_ids = tracker.create_trial_runs(trials, parent)
    client = MlflowClient(mlflow_server.uri)
    final = {"mlp": {contract.TRAIN_ACC: 1.0, contract.TEST_ACC: 0.36,
                     contract.TEST_BEST_ACC: 0.371, contract.ALIGN_REP: 0.12},
             "convnet": {contract.TRAIN_ACC: 0.448, contract.TEST_ACC: 0.36,
                         contract.TEST_BEST_ACC: 0.367, contract.ALIGN_REP: 0.56}}
    for trial in trials:
        run_id = run_ids[trial.trial_id]
        for key, value in final[trial.name].items():
            client.log_metric(run_id, key, 0.1, step=0)
            client.log_metric(run_id, key, value, step=20)
        client.set_tag(run_id, contract.TAG_STATUS, contract.STATUS_FINISHED)
        client.set_terminated(run_id, "FINISHED")

    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", name, "--out", str(out),
                                       "--tracking-uri", mlflow_server.uri])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip().startswith("7a "))
    assert lines[row].split()[:2] == ["7a", claims.INCONCLUSIVE]
    assert lines[row + 1].strip() == ("needs: ConvNet train accuracy 44.8% < 99% after 20 "
                                      "epochs: train longer, e.g. epochs: 200")
    assert f"how each claim is checked: {out / 'report.html'}#rules" in result.output
    # Its parent run's spec.yaml ({"name": ...}) is no sweep: every run read, and said so.
    assert ("note: stale trial ids not checked (its spec.yaml does not load: grid: nothing to "
            "run") in result.output
    assert "finals are values at the trial's last epoch; every trial has them" in result.output

    verdicts = {r["claim"]: r for r in pq.read_table(out / "claims.parquet").to_pylist()}
    assert verdicts["7a"]["verdict"] == claims.INCONCLUSIVE
    assert verdicts["7a"]["rule"] == claims.RULES["7a"].text()

    page = (out / "report.html").read_text()
    assert "NOTES" not in page
    assert "<td class='inconclusive' title='Claim 7a (Sec. 5, Fig. 1c)." in page
    assert "<a href='#rule-7a'>7a</a>" in page and "<tr id='rule-7a'>" in page
    assert "Missing: ConvNet train accuracy 44.8%" in page


def test_claims_text_shows_what_an_inconclusive_row_needs_and_a_fail_rows_rule():
    checks = [claims.ClaimCheck("1", claims.STATEMENTS["1"], "dataset=cifar10", "numbers",
                                claims.PASS),
              claims.ClaimCheck("4a", claims.STATEMENTS["4a"], "dataset=cifar10", "numbers",
                                claims.FAIL),
              claims.ClaimCheck("7a", claims.STATEMENTS["7a"], "dataset=cifar10", "numbers",
                                claims.INCONCLUSIVE, "ConvNet train accuracy 44.8% < 99%"),
              claims.ClaimCheck("8", claims.STATEMENTS["8"], "", "", claims.NOT_TESTABLE,
                                "needs ReLU + squared-loss trials")]
    lines = report.format_claims(checks).splitlines()
    assert [line.split()[0] for line in lines] == ["1", "4a", "PASS", "7a", "needs:", "8"]
    assert lines[2].strip() == f"PASS needs: {claims.RULES['4a'].passes}"
    assert lines[4].strip() == "needs: ConvNet train accuracy 44.8% < 99%"


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


def test_alignment_figure_draws_rho_only_over_one_setup(tmp_path):
    relu = [_trial(trial_id=f"r{sigma}", sigma=sigma, **{contract.ALIGN_GRAD: 0.1 / sigma})
            for sigma in (0.01, 0.1, 1.0)]
    sin = [dict(r, trial_id=f"s{r['sigma']}", activation="sin") for r in relu]

    def caption(trials):
        drawn = figures.draw_figures(pa.Table.from_pylist(trials), None, tmp_path)
        return next(f.caption for f in drawn if f.path.name == "fig4_test_acc_vs_alignment.png")

    assert "no ρ is drawn" not in caption(relu)
    assert caption(relu + sin).endswith("These trials are 2 setups: no ρ is drawn.")


def test_failed_trials_are_not_drawn_and_an_all_failed_sweep_draws_nothing(tmp_path):
    failed = [_trial(trial_id="f", status="failed", sigma=1.0)]
    assert figures.draw_figures(pa.Table.from_pylist(failed), None, tmp_path) == []


def _stale_alignment(trial: dict, stale: bool) -> dict:
    """``trial`` with its align/grad last logged at epoch 4 of 20 (``stale``: an alignment that
    became undefined, as with the hinge loss) or at its last epoch."""
    return dict(trial, epochs_done=20, **{"align/grad@epoch": 4 if stale else 20,
                                          "stale_metrics": [contract.ALIGN_GRAD] if stale else []})


def test_alignment_from_before_the_last_epoch_is_marked_in_the_table_and_never_drawn(tmp_path):
    trials = [_stale_alignment(_trial(trial_id=f"s{sigma}", name=f"hinge-s{sigma:g}", sigma=sigma,
                                      loss="hinge", **{contract.ALIGN_GRAD: 0.1 / sigma}),
                               stale=sigma == 1.0)
              for sigma in (0.01, 0.1, 1.0)]
    table = pa.Table.from_pylist(trials)
    drawn = {f.path.name: f for f in figures.draw_figures(table, None, tmp_path)}
    assert drawn["fig4_test_acc_vs_alignment.png"].caption.endswith(
        "Finals are values at the trial's last epoch; 1 trial(s) without one were left out: "
        "hinge-s1 (align/grad: epoch 4 of 20).")
    # With every align/grad from before its trial's last epoch there is nothing to draw.
    all_stale = pa.Table.from_pylist([_stale_alignment(t, stale=True) for t in trials])
    names = {f.path.name for f in figures.draw_figures(all_stale, None, tmp_path)}
    assert "fig4_test_acc_vs_alignment.png" not in names

    page = report.render_html("s", "here", table, claims.check_claims(table), [])
    cells = page.split("<table class='trials'>")[1].split("</table>")[0]
    assert cells.count("class='num stale'") == 1
    assert re.search(r"<td class='num stale' title='last logged at epoch 4, before the trial&#x27;s "
                     r"last epoch 20[^']*'>0\.100 \(epoch 4\)</td>", cells), cells
    assert ("<p class='finals'>Finals are values at the trial's last epoch; 1 trial(s) without "
            "one were left out") in html.unescape(page)
