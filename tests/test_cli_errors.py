"""User errors of ``xmem ui`` and ``xmem report`` caught before any server starts, the
trial keys' ranges, and a tracking server that stops answering ``xmem sweep``'s driver (exit
code 2, a message naming what was wrong, nothing created)."""

from __future__ import annotations

import sys
import time
import uuid

import pytest
from click.testing import CliRunner

from conftest import assert_user_error
from orchestrator.cli import main
from workers.config import MAX_SEED, key_problems


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("port", ["-1", "99999"])  # (not 0: before the fix that served for good)
def test_ui_port_out_of_range_is_a_usage_error(tmp_path, port):
    (tmp_path / "mlflow.db").write_text("")  # a store, so that only the port is wrong
    result = _invoke("ui", "--store", str(tmp_path), "--port", port)
    assert_user_error(result, f"{port} is not in the range 1<=x<=65535")


def test_ui_without_a_store_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default store is xmem-runs/mlflow under the working dir
    result = _invoke("ui")
    assert_user_error(result, "no MLflow store at", str(tmp_path / "xmem-runs" / "mlflow" / "mlflow.db"))
    assert not (tmp_path / "xmem-runs").exists()


def _report_to(out, monkeypatch):
    # An unreachable server: had the output been checked after reading the sweep, the error
    # would be about the server.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return _invoke("report", "quickstart", "--out", str(out), "--tracking-uri", "http://127.0.0.1:9")


def test_report_out_under_a_file_fails_before_reading_the_sweep(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _report_to(blocker / "report", monkeypatch)
    assert_user_error(result, f"cannot write the report to {blocker / 'report'}", "Pass --out")
    assert "127.0.0.1:9" not in result.output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_report_out_in_proc_fails_before_reading_the_sweep(monkeypatch):
    result = _report_to("/proc/nope", monkeypatch)
    assert_user_error(result, "cannot write the report to /proc/nope")


def test_report_out_check_leaves_nothing_behind(tmp_path):
    from orchestrator.results.report import check_out_dir

    check_out_dir(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    check_out_dir(tmp_path / "kept")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


@pytest.mark.parametrize("key", ["seed", "data_seed"])
def test_seeds_fit_in_31_bits(key):
    assert key_problems(key, MAX_SEED) == []
    assert key_problems(key, MAX_SEED + 1) == [f"'{key}' must be <= 2147483647, got {MAX_SEED + 1}"]


@pytest.mark.parametrize("key", ["sigma", "lr", "temperature", "momentum"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"),
                                   pytest.param(10**400, id="int-1e400")])
def test_float_keys_must_be_finite(key, value):
    (problem,) = key_problems(key, value)
    assert problem.startswith(f"'{key}' must be a finite number, got ")


# A stopped server is given up on after 3 retries (0 + 2 + 4 s of back-off, up to 1 s of
# jitter each: writer.DRIVER_CLIENT_ENV), not after MLflow's default of about 4 minutes.
DRIVER_GIVES_UP_WITHIN_S = 30


@pytest.mark.slow
def test_a_server_that_stops_answering_the_driver_is_a_user_error_within_the_bound(
        tmp_path, ray_cluster, monkeypatch):
    """Breaks: the tracking server stops right after preflight found it answering."""
    from orchestrator import preflight
    from orchestrator.tracking.server import start_local_server

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    server = start_local_server(tmp_path / "mlflow")
    checked, stopped = preflight.placement_problems, {}

    def stop_the_server_after_preflight(*args, **kwargs):
        problems = checked(*args, **kwargs)
        server.stop()
        stopped["at"] = time.monotonic()
        return problems

    monkeypatch.setattr(preflight, "placement_problems", stop_the_server_after_preflight)
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: gone-{uuid.uuid4().hex[:8]}\ndefaults:\n  dataset: digits\n"
                    f"  epochs: 1\n  data_dir: {tmp_path / 'data'}\ngrid:\n  sigma: [1.0]\n")
    try:
        result = _invoke("sweep", str(spec), "--address", ray_cluster, "--tracking-uri",
                         server.uri, "--storage", str(tmp_path / "store"))
    finally:
        server.stop()
    assert "at" in stopped, result.output
    assert time.monotonic() - stopped["at"] < DRIVER_GIVES_UP_WITHIN_S
    assert_user_error(result, f"the MLflow tracking server at {server.uri} did not answer",
                      "checkpoints are safe", "run the same command again")
