"""``xmem sweep`` end to end: real Ray cluster, real MLflow server, read back with MlflowClient."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import assert_user_error
from orchestrator.cli import main
from orchestrator.run import run_sweep
from workers import contract
from workers.config import TrialConfig

pytestmark = pytest.mark.slow

TINY = """
defaults:
  dataset: digits
  hidden: 32
  train_size: 200
  test_size: 100
  probe_per_class: 5
  epochs: 4
  eval_every: 1
  align_every: 2
  data_dir: {data_dir}
"""


def _spec(tmp_path: Path, body: str, name: str | None = None) -> tuple[Path, str]:
    name = name or f"t-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + TINY.format(data_dir=tmp_path / "data") + body)
    return path, name


def test_small_sweep_is_tracked_in_mlflow_and_a_raising_trial_fails_alone(
        tmp_path, ray_cluster, mlflow_server):
    spec, name = _spec(tmp_path, """
grid:
  sigma: [0.01, 10.0]
  seed: [0]
include:
  - {sigma: 1.0, device: cuda}      # a user error only the worker sees: it has no GPU
max_failures: 0
""")
    lines: list[str] = []
    outcome = run_sweep(str(spec), address=ray_cluster, tracking_uri=mlflow_server.uri,
                        storage=str(tmp_path / "store"), echo=lines.append)
    output = "\n".join(lines)

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    by_id = {r.data.tags["xmem.trial_id"]: r for r in children}
    assert set(by_id) == {t.trial_id for t in outcome.trials}

    for trial in outcome.trials:
        run = by_id[trial.trial_id]
        assert run.info.run_name == trial.name
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["xmem.sweep"] == name
        assert run.data.params["sigma"] == str(trial.config.sigma)
        assert set(run.data.params) == set(TrialConfig.keys())
        if trial.config.device == "cuda":
            assert run.info.status == "FAILED"
            assert run.data.tags["xmem.status"] == "failed"
            error = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
            assert "device: 'cuda' was requested" in Path(error).read_text()
            continue
        assert run.info.status == "FINISHED"
        assert run.data.tags["xmem.status"] == "finished"
        assert run.data.tags["xmem.device"] == "cpu"
        assert run.data.tags["xmem.ray_node_id"]
        assert run.data.tags["xmem.attempts"] == "1"
        history = client.get_metric_history(run.info.run_id, contract.TRAIN_ACC)
        assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]   # one value per step
        aligned = client.get_metric_history(run.info.run_id, contract.ALIGN_GRAD)
        assert sorted(m.step for m in aligned) == [0, 2, 4]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "history.parquet", "alignment.parquet", "weights.pt"} <= artifacts
        table = pq.read_table(client.download_artifacts(run.info.run_id, "history.parquet", str(tmp_path)))
        assert table.column("epoch").to_pylist() == [0, 1, 2, 3, 4]
        final = table.column(contract.TRAIN_ACC).to_pylist()[-1]
        assert math.isclose(final, run.data.metrics[contract.TRAIN_ACC])

    statuses = {row["name"]: row["status"] for row in outcome.rows}
    assert sorted(statuses.values()) == ["failed", "finished", "finished"]
    assert "failed" in output and "best test acc" in output and "finished" in output
    failed = next(row for row in outcome.rows if row["status"] == "failed")
    assert "device: 'cuda' was requested" in failed["error"] and failed["error_kind"] == "user"
    assert failed["error"] in output                              # its error, in the table
    assert "failed on a user error" in output and "fix the spec" in output
    assert outcome.exit_code == 1


# Ctrl-C and SIGTERM on a running sweep: tests/test_interrupt.py.


def test_dry_run_prints_the_trials_and_creates_nothing(tmp_path, mlflow_server):
    spec, name = _spec(tmp_path, "grid:\n  sigma: [0.1, 1.0, 10.0]\n  seed: [0, 1]\n")
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--dry-run", "--storage", str(store),
                                       "--tracking-uri", mlflow_server.uri])
    assert result.exit_code == 0, result.output
    assert "6 trials" in result.output and "sigma10-seed1" in result.output
    assert not store.exists()
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name(name) is None


BAD_SPECS = {
    "yaml syntax": ("grid:\n  sigma: [0.1, 1.0\n", "line"),
    "unknown top-level key": ("grid: {sigma: [1.0]}\ngird: {}\n", "gird"),
    "unknown trial key": ("grid: {sigmaa: [1.0]}\n", "sigmaa"),
    "wrong type": ("grid: {sigma: [1.0]}\nmax_failures: two\n", "max_failures"),
    "out of range": ("grid: {sigma: [1.0, -1.0]}\n", "grid.sigma[1]"),
    "unknown activation": ("grid: {activation: [sin, tanh]}\n", "tanh"),
    "empty grid": ("grid: {}\n", "nothing to run"),
    "empty grid values": ("grid: {sigma: []}\n", "grid.sigma"),
    "duplicate trials": ("grid: {sigma: [1.0]}\ninclude: [{sigma: 1.0}]\n", "duplicate"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_exits_2_with_a_clear_message_and_creates_nothing(tmp_path, mlflow_server, case):
    body, expected = BAD_SPECS[case]
    spec, name = _spec(tmp_path, body)
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--storage", str(store),
                                       "--tracking-uri", mlflow_server.uri])
    assert_user_error(result, str(spec), expected)
    assert not store.exists()
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name(name) is None


# --- preflight: bad input stops before anything starts ------------------------------------

def _write_table(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_preflight_reports_every_bad_source_and_folder_together_and_creates_nothing(
        tmp_path, ray_cluster, mlflow_server):
    wrong_columns = _write_table(tmp_path / "wrong.parquet", {"split": ["train"], "y": [1]})
    not_parquet = tmp_path / "passwd.parquet"
    not_parquet.write_text("root:x:0:0:root:/root:/bin/bash\n")
    empty = tmp_path / "empty-data-dir"
    empty.mkdir()
    spec, name = _spec(tmp_path, f"""
grid:
  sigma: [0.01, 10.0]
include:
  - {{data_file: {tmp_path / "missing.parquet"}}}
  - {{data_file: {wrong_columns}}}
  - {{data_file: {not_parquet}}}
  - {{dataset: cifar10, data_dir: {empty}}}
""")
    storage = Path("/proc/xmem-runs")            # nobody can write there, root included
    result = CliRunner().invoke(main, ["sweep", str(spec), "--address", ray_cluster,
                                       "--tracking-uri", mlflow_server.uri,
                                       "--storage", str(storage)])
    assert_user_error(result, "the sweep cannot start: 5 problems",
                      f"data_file {tmp_path / 'missing.parquet'}: no such file",
                      f"data_file {wrong_columns}: missing column(s) label, image",
                      f"data_file {not_parquet}: not a readable Parquet file",
                      f"dataset cifar10: 6 file(s) missing in torchvision's layout under {empty}",
                      f"storage {storage}: cannot write in /proc",
                      "(checked on this machine; used by 1 trial: sigma-default-",
                      "Nothing was created")
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name(name) is None
    assert not storage.exists()


def test_a_cluster_too_small_removes_the_embedded_servers_folder_again(tmp_path, ray_cluster):
    """The local checks pass, so the embedded server starts (making <storage>/mlflow) while Ray
    comes up; then the cluster check fails: the folders it made go again."""
    spec, name = _spec(tmp_path, """
grid:
  sigma: [0.01]
resources: {cpu: 64}
""")
    storage = tmp_path / "runs"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--address", ray_cluster,
                                       "--storage", str(storage)])
    assert_user_error(result, "1 problem:", "resources: each trial asks for cpu 64 (the cluster has 2)")
    assert not storage.exists()


def _processes_with(marker: str) -> list[int]:
    """Ids of the processes whose environment holds ``marker`` (what this test started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_data_on_a_worker_node_is_checked_there(tmp_path, mlflow_server):
    """Stand-in, named as such, for a data file that lives only on a second machine: a Ray
    cluster of two nodes on this machine, the second started with its own HOME, so that
    ``~/only-on-b.parquet`` exists for it alone. Preflight checks the sources on that worker
    node: it finds the file there, and reports a file that neither has, naming the node."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile

    marker = f"XMEM_TEST_CLUSTER={uuid.uuid4().hex}"
    name_, value = marker.split("=")
    home_b = tmp_path / "home-b"
    home_b.mkdir()
    _write_table(home_b / "only-on-b.parquet", {"split": ["train"], "label": [1], "image": [b""]})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", name_: value}
    temp_dir = tempfile.mkdtemp(prefix="xr-", dir="/tmp")  # Ray's socket paths must be short
    try:
        subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                        "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                        f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                       check=True, capture_output=True, env=env)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"],
                       check=True, capture_output=True, env={**env, "HOME": str(home_b)})
        spec, name = _spec(tmp_path, """
grid:
  sigma: [0.01]
include:
  - {data_file: "~/only-on-b.parquet"}
  - {data_file: "~/on-no-node.parquet"}
""")
        result = CliRunner().invoke(main, ["sweep", str(spec), "--address", f"127.0.0.1:{port}",
                                           "--tracking-uri", mlflow_server.uri,
                                           "--storage", str(tmp_path / "store")])
        assert_user_error(result, "1 problem:", f"data_file {home_b}/on-no-node.parquet: no such file",
                          "(checked on node ")
        assert "only-on-b" not in result.output           # node B has it
        assert MlflowClient(mlflow_server.uri).get_experiment_by_name(name) is None
    finally:
        for pid in _processes_with(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
