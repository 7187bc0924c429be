"""The live progress line and the end-of-sweep table (pure)."""

from __future__ import annotations

from orchestrator.progress import SweepProgress, format_results_table
from workers import contract


class FakeClock:
    """Stands in for time.monotonic so the ETA can be checked exactly."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_and_eta_from_epochs_done():
    clock, lines = FakeClock(), []
    progress = SweepProgress({"a": 10, "b": 10}, echo=lines.append, clock=clock)
    progress.trial_started("a")
    progress.trial_result("a", 0, "running")       # every fresh trial reports epoch 0 first
    clock.now = 10.0
    progress.trial_result("a", 5, "running")
    progress.trial_completed("a", "finished")      # 10 of 20 epochs in 10 s -> ~10 s left
    assert progress.counts() == {"pending": 1, "running": 0, "finished": 1, "failed": 0, "diverged": 0,
                                 "interrupted": 0}
    assert "1 pending" in lines[-1] and "1 finished" in lines[-1]
    assert "interrupted" not in lines[-1]           # shown only once a sweep is interrupted
    assert "50.0% of epochs" in lines[-1] and "~0:10 left" in lines[-1]
    progress.trial_started("b")
    progress.trial_completed("b", "diverged")
    assert progress.counts()["diverged"] == 1 and progress.fraction_done() == 1.0


def test_a_resumed_trial_counts_only_the_epochs_left_to_train():
    clock = FakeClock()
    progress = SweepProgress({"a": 1000}, echo=lambda line: None, clock=clock)
    progress.trial_started("a")
    progress.trial_result("a", 901, "running")     # resumed from a checkpoint at 900
    clock.now = 10.0
    progress.trial_result("a", 902, "running")     # 1 of the 99 epochs left in 10 s
    assert progress.fraction_done() == 1 / 99
    assert "~?" in progress.summary()              # too little done to extrapolate
    clock.now = 100.0
    progress.trial_result("a", 931, "running")     # 30 of 99 in 100 s: 69 more take 230 s
    assert progress.fraction_done() == 30 / 99
    assert "30.3% of epochs" in progress.summary() and "~3:50 left" in progress.summary()


def test_an_interrupt_shows_running_trials_as_interrupted_and_pending_ones_as_pending():
    lines = []
    progress = SweepProgress({"a": 5, "b": 5, "c": 5}, echo=lines.append)
    progress.trial_started("a")
    progress.trial_started("b")
    progress.trial_completed("b", "finished")
    progress.interrupted()
    assert progress.counts() == {"pending": 1, "running": 0, "finished": 1, "failed": 0,
                                 "diverged": 0, "interrupted": 1}
    assert "1 interrupted" in lines[-1] and "0 running" in lines[-1]


def test_interrupted_trials_are_told_to_continue_from_their_checkpoints_not_as_failed():
    from orchestrator.progress import closing_advice

    rows = [{"name": "a", "status": "interrupted", "error": "an earlier attempt's", "error_kind": "user"},
            {"name": "b", "status": "interrupted"},
            {"name": "c", "status": "scheduled"},
            {"name": "d", "status": "finished"}]
    advice = closing_advice(rows, "xmem sweep s.yaml")
    assert advice[0] == ("Interrupted: 2 trials stopped (not failed); rerun `xmem sweep s.yaml` to "
                         "continue from their checkpoints (one with none starts over)")
    assert advice[1].startswith("1 trial did not finish. Rerun to resume them")
    assert not any("failed on a user error" in line or "trial failed" in line for line in advice)
    table = format_results_table(rows, [])
    assert table.splitlines()[2].split()[:2] == ["a", "interrupted"]


def test_a_retried_trial_goes_back_to_pending():
    progress = SweepProgress({"a": 5}, echo=lambda line: None)
    progress.trial_started("a")
    progress.trial_retrying("a")
    assert progress.counts()["pending"] == 1


def test_results_table_has_a_row_per_trial_with_percentages_and_missing_values():
    table = format_results_table(
        [{"name": "sigma10-seed0", "sigma": 10.0, "status": "finished", contract.TRAIN_ACC: 1.0,
          contract.TEST_BEST_ACC: 0.114, contract.ALIGN_GRAD: 0.0004},
         {"name": "sigma1-seed0", "sigma": 1.0, "status": "failed"}],
        ["sigma"])
    lines = table.splitlines()
    assert lines[0].split() == ["trial", "sigma", "status", "train", "acc", "best", "test", "acc", "align/grad"]
    assert lines[2].split() == ["sigma10-seed0", "10", "finished", "100.0%", "11.4%", "0.000"]
    assert lines[3].split() == ["sigma1-seed0", "1", "failed", "-", "-", "-"]


def test_status_lists_state_attempts_epochs_and_totals():
    from orchestrator.status import format_status
    from orchestrator.tracking.records import TrialRecord

    def record(name, status, tags, latest):
        return TrialRecord(run_id=name, name=name, trial_id=name, run_status=status, tags=tags,
                           params={"epochs": "30"}, latest=latest)

    text = format_status("sw", [
        record("sigma1", "FINISHED", {"xmem.status": "finished", "xmem.attempts": "2"},
               {contract.TRAIN_LOSS: (30, 0.01), contract.TRAIN_ACC: (30, 1.0)}),
        record("sigma10", "SCHEDULED", {}, {})])
    lines = text.splitlines()
    assert lines[2].split()[:4] == ["sigma1", "finished", "2", "30/30"]
    assert lines[3].split()[:4] == ["sigma10", "scheduled", "0", "-/30"]
    assert lines[-1] == "sw: 2 trial(s): 1 finished, 1 scheduled"


def test_status_shows_metrics_as_the_results_table_does():
    """One way to show a metric in every table (orchestrator.text): labels, not MLflow keys;
    accuracies as percentages."""
    from orchestrator.status import format_status
    from orchestrator.tracking.records import TrialRecord

    record = TrialRecord(run_id="r", name="sigma1", trial_id="t", run_status="FINISHED",
                         tags={"xmem.status": "finished"}, params={"epochs": "30"},
                         latest={contract.TRAIN_ACC: (30, 1.0), contract.TEST_ACC: (30, 0.114),
                                 contract.TEST_BEST_ACC: (12, 0.2), contract.ALIGN_GRAD: (30, 0.0004)})
    lines = format_status("sw", [record]).splitlines()
    assert lines[0].split() == ["trial", "state", "attempts", "epochs", "train", "acc", "test",
                                "acc", "best", "test", "acc", "align/grad"]
    assert lines[2].split()[4:] == ["100.0%", "11.4%", "20.0%", "0.000"]


def test_values_read_as_yaml_in_every_table():
    from orchestrator.text import format_value

    assert [format_value(v) for v in (True, False, None, 0.001, 10.0, 3, "sin")] == \
        ["true", "false", "null", "0.001", "10", "3", "sin"]
    table = format_results_table([{"name": "a", "shuffle_labels": True, "status": "finished"}],
                                 ["shuffle_labels"])
    assert table.splitlines()[2].split()[:3] == ["a", "true", "finished"]


def test_failed_trials_show_their_error_and_the_advice_fits_the_failure():
    from orchestrator.progress import closing_advice

    rows = [{"name": "a", "status": "finished", "error": None},
            {"name": "b", "status": "failed", "error": "sweep trial: 'sigma' must be > 0",
             "error_kind": "user"},
            {"name": "c", "status": "failed", "error": "ActorDiedError: killed", "error_kind": "crash"},
            {"name": "d", "status": "running", "error": None}]
    lines = format_results_table(rows, []).splitlines()
    assert lines[0].split()[-1] == "error"
    assert lines[3].endswith("sweep trial: 'sigma' must be > 0")
    assert lines[4].endswith("ActorDiedError: killed")
    advice = closing_advice(rows, "xmem sweep s.yaml")
    assert advice[0].startswith("1 trial failed on a user error") and "fix the spec" in advice[0]
    assert advice[1].startswith("1 trial failed (error.txt in their MLflow runs), 1 trial did not "
                                "finish. Rerun to resume them: xmem sweep s.yaml")
    assert closing_advice(rows[:1], "xmem sweep s.yaml") == []
    assert "error" not in format_results_table(rows[:1], []).splitlines()[0]


def test_status_shows_a_failed_trials_error():
    from orchestrator.status import format_status
    from orchestrator.tracking.records import TrialRecord

    failed = TrialRecord(run_id="r", name="sigma1", trial_id="t", run_status="FAILED",
                         tags={"xmem.status": "failed", "xmem.error": "data_file x: no such file",
                               "xmem.error_kind": "user"}, params={"epochs": "3"}, latest={})
    lines = format_status("sw", [failed]).splitlines()
    assert lines[0].split()[-1] == "error" and lines[2].endswith("data_file x: no such file")
    assert failed.error_kind == "user"


def test_sweep_exit_codes_tell_the_truth():
    from orchestrator.run import SweepOutcome

    def outcome(*statuses, interrupted=False):
        return SweepOutcome(spec=None, trials=[], rows=[{"status": s} for s in statuses],
                            tracking_uri="", experiment_url="", timings={},
                            interrupted=interrupted)

    assert outcome("finished", "diverged").exit_code == 0
    assert outcome("finished", "failed").exit_code == 1
    assert outcome("finished", "running").exit_code == 1
    assert outcome("finished", None).exit_code == 1
    assert outcome("finished", "running", interrupted=True).exit_code == 130
    assert outcome("finished", "interrupted", interrupted=True).exit_code == 130


def test_ctrl_c_outside_the_trials_exits_130(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import orchestrator.run
    from orchestrator.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(orchestrator.run, "run_sweep", interrupted)
    result = CliRunner().invoke(main, ["sweep", str(tmp_path / "s.yaml")])
    assert result.exit_code == 130 and "interrupted" in result.output
