"""Ctrl-C and SIGTERM on a running ``xmem sweep`` driver (real Ray, real ``mlflow server``).

The trials stop as *interrupted*: not failed, no ``error.txt``, resumable; the sweep says how to
continue and exits 130; a rerun continues from the checkpoints. A second Ctrl-C exits at once.
The driver runs as a process of its own session, signalled by its process id.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.run import run_sweep
from workers import contract

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 40
# Three trials, two per pack, one pack at a time: at an interrupt one pack (two runs) trains
# and one trial waits, never started. Batches of 4 make an epoch last long enough (~0.2 s) that
# a signal sent once MLflow shows an epoch (metrics arrive at checkpoints, every 5 epochs) lands
# before the trials end: with batches of 16 a resumed pack could finish first.
SPEC = """
name: {name}
defaults:
  dataset: digits
  hidden: 256
  batch_size: 4
  train_size: 400
  test_size: 200
  probe_per_class: 5
  epochs: {epochs}
  eval_every: 1
  align_every: 5
  checkpoint_every: 5
  data_dir: {data_dir}
grid:
  sigma: [0.1, 1.0, 10.0]
packing: {{max_size: 2}}
max_concurrent: 1
max_failures: 0
"""
ONE_VALUE_PER_STEP = (contract.TRAIN_LOSS, contract.TEST_ACC, contract.ALIGN_GRAD)


def _spec(tmp_path: Path) -> tuple[Path, str]:
    name = f"i-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, epochs=EPOCHS, data_dir=tmp_path / "data"))
    return path, name


def _runs(uri: str, name: str) -> dict:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {}
    return {r.data.tags["xmem.trial_id"]: r for r in client.search_runs([experiment.experiment_id])
            if "xmem.trial_id" in r.data.tags and contract.TAG_SUPERSEDED_BY not in r.data.tags}


def _last_step(uri: str, run_id: str) -> int:
    return max((m.step for m in MlflowClient(uri).get_metric_history(run_id, contract.TRAIN_LOSS)),
               default=-1)


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


class Driver:
    """``xmem sweep SPEC`` in a session of its own, its output in a file."""

    def __init__(self, spec: Path, ray_address: str, uri: str, storage: Path, log: Path):
        self.log = log
        self.output = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "sweep", str(spec), "--address", ray_address,
             "--tracking-uri", uri, "--storage", str(storage)],
            stdout=self.output, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait(self, timeout_s: float) -> tuple[int, str]:
        """(exit code, output); the driver is killed if it outlives ``timeout_s``."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the driver did not exit within {timeout_s} s:\n{self.text()}")
        return code, self.text()

    def text(self) -> str:
        self.output.flush()
        return self.log.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.output.close()


def _training_past(uri: str, name: str, step: int) -> bool:
    """Every RUNNING trial run has logged beyond ``step`` (so each holds a checkpoint), and
    there is at least one."""
    running = [r for r in _runs(uri, name).values() if r.info.status == "RUNNING"]
    return bool(running) and all(_last_step(uri, r.info.run_id) > step for r in running)


def _interrupt(driver: Driver, signum: int, uri: str, name: str, past_step: int) -> str:
    """Signal the driver once every training trial is past ``past_step``; returns its output
    after it exited 130."""
    _wait_for(lambda: _training_past(uri, name, past_step), 180, f"trials past step {past_step}")
    driver.signal(signum)
    code, output = driver.wait(120)
    assert code == 130, output
    return output


def _assert_interrupted_not_failed(uri: str, name: str, output: str, spec: Path) -> list:
    """No run failed or holds error.txt; the runs that trained ended KILLED, xmem.status
    interrupted; the output says how to continue. Returns the interrupted runs."""
    client = MlflowClient(uri)
    runs = _runs(uri, name)
    stopped = [r for r in runs.values() if r.data.tags.get("xmem.status") == "interrupted"]
    for run in runs.values():
        assert run.info.status in ("KILLED", "SCHEDULED", "FINISHED"), (run.info, output)
        assert run.data.tags.get("xmem.status") != "failed" and "xmem.error" not in run.data.tags
        assert "error.txt" not in {a.path for a in client.list_artifacts(run.info.run_id)}
        if run.info.status == "KILLED":
            assert run.data.tags["xmem.status"] == "interrupted"
    assert stopped, output
    advice = re.search(r"Interrupted: (\d+) trials? stopped \(not failed\); rerun `xmem sweep "
                       + re.escape(str(spec)) + "` to continue from their checkpoints", output)
    assert advice and int(advice.group(1)) == len(stopped), output
    table = [line for line in output.splitlines() if line.startswith("sigma")]
    assert sum(" interrupted " in line for line in table) == len(stopped), output
    assert "error.txt" not in output and "trial failed" not in output
    assert "Tuner.restore" not in output                  # Tune's advice, not xmem's way
    parent = [r for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])
              if r.data.tags.get("xmem.role") == "parent"][0]
    assert parent.info.status == "KILLED"
    return stopped


def test_sigterm_then_ctrl_c_stop_trials_as_interrupted_and_a_rerun_continues_them(
        tmp_path, ray_cluster, mlflow_server):
    """SIGTERM (a scheduler stopping the job) on the first session, Ctrl-C on the second (the
    resumed one); the third finishes. Each interrupt: exit 130, no run failed, no error.txt,
    the interrupted runs KILLED; every metric ends with exactly one value per step."""
    uri = mlflow_server.uri
    spec, name = _spec(tmp_path)
    storage = tmp_path / "store"
    epochs_at_stop: dict[str, int] = {}
    for session, signum in enumerate((signal.SIGTERM, signal.SIGINT)):
        driver = Driver(spec, ray_cluster, uri, storage, tmp_path / f"driver-{session}.log")
        try:
            # The first session: past its first checkpoint (every 5 epochs); the second: training
            # beyond where the first stopped.
            past = max(epochs_at_stop.values(), default=4) + 2
            output = _interrupt(driver, signum, uri, name, past)
        finally:
            driver.kill()
        for run in _assert_interrupted_not_failed(uri, name, output, spec):
            epochs_at_stop[run.data.tags["xmem.trial_id"]] = _last_step(uri, run.info.run_id)
        if session == 1:
            assert "resuming:" in output

    lines: list[str] = []
    outcome = run_sweep(str(spec), address=ray_cluster, tracking_uri=uri, storage=str(storage),
                        echo=lines.append)
    assert outcome.exit_code == 0, "\n".join(lines)
    client = MlflowClient(uri)
    for trial_id, run in _runs(uri, name).items():
        assert run.info.status == "FINISHED" and run.data.tags["xmem.status"] == "finished"
        if trial_id in epochs_at_stop:          # interrupted at least once: resumed, not restarted
            assert int(run.data.tags["xmem.start_epoch"]) >= 5
        for key in ONE_VALUE_PER_STEP:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            every = 5 if key == contract.ALIGN_GRAD else 1
            assert steps == list(range(0, EPOCHS + 1, every)), (key, run.info.run_name)


def test_a_second_ctrl_c_exits_at_once_and_the_rerun_resumes_from_the_checkpoints(
        tmp_path, ray_cluster, mlflow_server):
    """Ctrl-C twice while the first one waits on a hung worker (SIGSTOP: Tune would wait about
    10 s for it, then kill it): the driver exits at once, with no table, leaving the runs as
    they are; the rerun resumes each from its checkpoint."""
    uri = mlflow_server.uri
    spec, name = _spec(tmp_path)
    storage = tmp_path / "store"
    driver = Driver(spec, ray_cluster, uri, storage, tmp_path / "driver.log")
    worker = None
    try:
        _wait_for(lambda: _training_past(uri, name, 6), 180, "trials past step 6")
        worker = int(next(r for r in _runs(uri, name).values()
                          if r.info.status == "RUNNING").data.tags["xmem.pid"])
        os.kill(worker, signal.SIGSTOP)
        driver.signal(signal.SIGINT)
        _wait_for(lambda: "Stop signal received" in driver.text(), 30, "Tune to take the Ctrl-C")
        second = time.monotonic()
        driver.signal(signal.SIGINT)
        code, output = driver.wait(60)
        exited_after = time.monotonic() - second
    finally:
        if worker is not None:
            try:
                os.kill(worker, signal.SIGCONT)  # for Ray to end it with the driver's job
            except ProcessLookupError:           # it has already
                pass
        driver.kill()
    assert code == 130, output
    assert exited_after < 8, output              # not the ~10 s Tune gives a hung worker
    assert f"Stopped at once; the trials' runs are left as they were. Rerun `xmem sweep {spec}`" \
        in output
    assert "best test acc" not in output         # no results table
    runs = _runs(uri, name)
    trained = {r.info.run_id for r in runs.values() if r.info.status != "SCHEDULED"}
    assert len(trained) == 2 and all(r.info.status == "RUNNING" for r in runs.values()
                                     if r.info.run_id in trained)

    lines: list[str] = []
    outcome = run_sweep(str(spec), address=ray_cluster, tracking_uri=uri, storage=str(storage),
                        echo=lines.append)
    assert outcome.exit_code == 0, "\n".join(lines)
    for run in _runs(uri, name).values():
        assert run.info.status == "FINISHED"
        if run.info.run_id in trained:
            assert int(run.data.tags["xmem.start_epoch"]) >= 5, "\n".join(lines)
            assert _last_step(uri, run.info.run_id) == EPOCHS


# --- the worker's side: what it writes when it does get the SystemExit in time ---------------
# Ray 2.x usually ends a stopped worker before its training thread reaches the next report
# (the driver then marks the runs, as above); a worker parked in tune.report gets the
# SystemExit at once and ends its runs itself. Those calls, against the real server:

def _member(uri: str, run_id: str):
    from workers.contract import TrialPayload
    from workers.tune_trial import _Member

    return _Member(TrialPayload(trial={"device": "cpu"}, trial_id=run_id[:12], name="t",
                                run_id=run_id, tracking_uri=uri))


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_interrupted_worker_sends_its_metrics_and_ends_its_runs_interrupted_not_failed(mlflow_server):
    from workers.trial import EpochRecord
    from workers.tune_trial import _end_interrupted

    client = MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment(f"i-{uuid.uuid4().hex[:8]}")
    members = [_member(mlflow_server.uri, client.create_run(experiment).info.run_id) for _ in range(2)]
    for m in members:
        m.logger.start({})
        m.logger.log_record(EpochRecord(0, {contract.TRAIN_LOSS: 2.0}))
        m.logger.log_record(EpochRecord(1, {contract.TRAIN_LOSS: 1.5}))   # queued, not sent
    _end_interrupted(members)
    for m in members:
        run = client.get_run(m.logger.run_id)
        assert run.info.status == "KILLED" and run.data.tags["xmem.status"] == "interrupted"
        assert "xmem.error" not in run.data.tags and "xmem.error_kind" not in run.data.tags
        assert not client.list_artifacts(m.logger.run_id)                  # no error.txt
        steps = [x.step for x in client.get_metric_history(m.logger.run_id, contract.TRAIN_LOSS)]
        assert sorted(steps) == [0, 1] and m.ended


def test_an_interrupted_worker_does_not_wait_on_a_server_that_is_away(caplog):
    """Ray ends the worker within seconds: one try per call, and once the server failed the
    other members' runs are left to the driver; a warning names them."""
    from workers.tune_trial import _end_interrupted

    uri = f"http://127.0.0.1:{_free_port()}"                # nothing listens there
    members = [_member(uri, f"{'a' * 31}{i}") for i in range(3)]
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="workers"):
        _end_interrupted(members)
    assert time.monotonic() - started < 4           # MLflow's default retries take minutes
    warning = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert warning and all(m.logger.run_id in warning[0] for m in members), caplog.text
    assert not any(m.ended for m in members)


def test_an_error_while_recording_a_failure_is_logged_with_the_run_id(caplog, monkeypatch):
    from workers.contract import ERROR_CRASH
    from workers.tune_trial import _end_failed

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")   # fail fast: the user's setting wins
    member = _member(f"http://127.0.0.1:{_free_port()}", "b" * 32)
    with caplog.at_level("WARNING", logger="workers"):
        _end_failed(member.logger, "Traceback ...", "RuntimeError: boom", ERROR_CRASH)  # no raise
    (record,) = [r for r in caplog.records if r.name == "workers.tune_trial"]
    assert "b" * 32 in record.getMessage() and "could not record the failure" in record.getMessage()
    assert "Error" in record.getMessage()           # the error's type and text
