"""MLflow on PostgreSQL, as on a cluster: a throwaway PostgreSQL server on 127.0.0.1 (the
machine's own ``initdb`` and ``pg_ctl``, a temporary data folder), a real ``mlflow server
--backend-store-uri postgresql://...`` on it, a small sweep tracked there, and the sweep
read back with ``xmem status``, ``xmem export`` and ``xmem report``.

Skips with the reason where PostgreSQL or its Python driver (psycopg 3, in the ``test`` and
``cluster`` extras) is missing.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.tracking.server import SERVER_ENV, LocalTrackingServer
from test_sweep import TINY

pytestmark = pytest.mark.slow

SPEC = "name: {name}" + TINY + """grid:
  sigma: [0.01, 10.0]
max_failures: 0
"""


def _postgres_bin(name: str) -> str | None:
    """A PostgreSQL program on PATH, else in Debian's versioned folder (the newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_uri():
    """A PostgreSQL server of its own on 127.0.0.1 with a database ``mlflow`` owned by user
    ``xmem`` (password authentication over TCP); yields its SQLAlchemy URI. PostgreSQL refuses
    to run as root: as root, the server runs as ``nobody`` from a folder it owns. Stopped
    (``pg_ctl stop -m immediate``, then its postmaster's pid) whatever happens."""
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is missing: "
                                  "pip install -e '.[test]'")
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (initdb, pg_ctl): apt-get install postgresql")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="xr-pg-", dir="/tmp"))  # short: it holds the socket
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: PostgreSQL refuses to run as root")
        as_user = ["runuser", "-u", "nobody", "--"]
        shutil.chown(folder, "nobody")
    data = folder / "data"
    password = secrets.token_hex(16)
    port = _free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True, cwd=folder)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")

    try:
        (folder / "pw").write_text(password)
        if as_user:
            shutil.chown(folder / "pw", "nobody")
        run(initdb, "-D", str(data), "-U", "xmem", f"--pwfile={folder / 'pw'}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync")
        run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        # CREATE DATABASE runs outside a transaction: autocommit.
        with psycopg.connect(host="127.0.0.1", port=port, user="xmem", password=password,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE mlflow")
        # The driver named, as docker/compose.yaml does: SQLAlchemy 2.0 would pick psycopg2.
        yield f"postgresql+psycopg://xmem:{password}@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, cwd=folder)
        _kill_postmaster(data)
        shutil.rmtree(folder, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """SIGKILL the server whose pid its data folder records, if it still runs."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def postgres_mlflow(postgres_uri, tmp_path_factory):
    """``mlflow server`` over the PostgreSQL database, artifacts served from a folder."""
    root = tmp_path_factory.mktemp("pg-mlflow")
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres_uri,
               "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, **SERVER_ENV},
                                   start_new_session=True)
    server = LocalTrackingServer(uri=f"http://127.0.0.1:{port}", root=root, process=process,
                                 command=tuple(command))
    try:
        server.wait_until_ready(timeout_s=180)   # a fresh database is migrated first
        yield server
    finally:
        server.stop()


def test_a_sweep_on_a_postgresql_backed_server_reads_back(tmp_path, ray_cluster, postgres_uri,
                                                          postgres_mlflow):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, data_dir=tmp_path / "data"))
    uri = ["--tracking-uri", postgres_mlflow.uri]
    runner = CliRunner()

    result = runner.invoke(main, ["sweep", str(spec), "--address", ray_cluster, *uri,
                                  "--storage", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output

    result = runner.invoke(main, ["status", name, *uri])
    assert result.exit_code == 0, result.output
    assert result.output.count("finished") >= 2 and "sigma10" in result.output

    table_path = tmp_path / "results.parquet"
    result = runner.invoke(main, ["export", name, "-o", str(table_path), *uri])
    assert result.exit_code == 0, result.output
    table = pq.read_table(table_path)
    assert table.num_rows == 2
    assert sorted(table.column("sigma").to_pylist()) == [0.01, 10.0]
    assert table.column("status").to_pylist() == ["finished", "finished"]

    report = tmp_path / "report"
    result = runner.invoke(main, ["report", name, "--out", str(report), *uri])
    assert result.exit_code == 0, result.output
    assert (report / "report.html").stat().st_size > 0
    assert list(report.glob("*.png"))

    # The runs are in PostgreSQL itself: the parent run and one run per trial.
    import psycopg

    with psycopg.connect(postgres_uri.replace("postgresql+psycopg://", "postgresql://")) as connection:
        count = connection.execute("SELECT count(*) FROM runs JOIN experiments USING "
                                   "(experiment_id) WHERE experiments.name = %s", (name,)).fetchone()
    assert count[0] == 3
