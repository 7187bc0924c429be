"""The MLflow UI as a researcher meets it, in a real browser: ``xmem ui`` serves the store of
a finished sweep (``finished_sweep``), headless Chromium opens the link it prints in a fresh
profile, and the rendered page (not the REST API) must show the runs in model-training
mode, every trial by name, and the sigma and metric columns. A screenshot is kept as a test
artifact (``test-artifacts/mlflow-ui-trials.png``).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it when it is missing); the
tests skip, saying so, where there is none.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = "1600,1000"            # a laptop screen: what "the first screen" means here
RENDER_BUDGET_MS = 20000        # virtual time the single-page app gets to fetch and render
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser() -> str:
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if found is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs "
                    "it when it runs as root with apt)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def printed_link(finished_sweep, mlflow_server):
    """``xmem ui --store`` over the session server's folder (a store like the embedded
    server's): yields the link it printed for the finished sweep; stopped with Ctrl-C."""
    name = finished_sweep.spec.name
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "ui", "--store", str(mlflow_server.root),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output: list[str] = []
    try:
        link = None
        deadline = time.monotonic() + 120
        while link is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith(f"sweep {name}: "):
                link = line.split(": ", 1)[1].strip()
        assert link, "xmem ui printed no link for the sweep:\n" + "".join(output)
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield link
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)   # what Ctrl-C does: one SIGINT
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        process.stdout.close()


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium in a fresh profile (a new user: nothing remembered)."""
    shutil.rmtree(profile, ignore_errors=True)
    return subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--virtual-time-budget={RENDER_BUDGET_MS}",
         f"--window-size={WINDOW}", *args],
        capture_output=True, text=True, timeout=180, check=True)


class _Page(HTMLParser):
    """What the test reads from the rendered DOM: title, sidebar links, column headers and
    the links of the table's rows."""

    def __init__(self):
        super().__init__()
        self.title = ""
        self.nav: list[tuple[str, str]] = []          # (href, text) of the sidebar's links
        self.columns: dict[str, str] = {}             # header col-id -> its text
        self.links: list[tuple[str, str]] = []        # (href, text) of every link
        self._stack: list[tuple[str, dict]] = []
        self._text: list[list[str]] = []

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self._stack.append((tag, dict(attrs)))
            self._text.append([])

    def handle_endtag(self, tag):
        if tag not in (t for t, _ in self._stack):
            return
        while True:   # close what the page left open inside it
            (name, attrs), text = self._stack.pop(), " ".join("".join(self._text.pop()).split())
            if self._text:
                self._text[-1].append(" " + text + " ")
            if name == tag:
                break
        in_nav = any(t == "nav" for t, _ in self._stack)
        if tag == "title" and not self.title:   # the document's (icons have titles too)
            self.title = text
        elif tag == "a":
            self.links.append((attrs.get("href", ""), text))
            if in_nav:
                self.nav.append((attrs.get("href", ""), text))
        if attrs.get("role") == "columnheader" and "col-id" in attrs:
            self.columns[attrs["col-id"]] = text

    def handle_data(self, data):
        if self._text:
            self._text[-1].append(data)


def test_the_printed_link_shows_every_trial_with_sigma_and_metrics_in_model_training_mode(
        browser, printed_link, finished_sweep, mlflow_server, tmp_path, request):
    name = finished_sweep.spec.name
    experiment_id = MlflowClient(mlflow_server.uri).get_experiment_by_name(name).experiment_id
    assert f"/#/experiments/{experiment_id}/runs?" in printed_link

    dom = _chromium(browser, tmp_path / "profile", "--dump-dom", printed_link).stdout
    page = _Page()
    page.feed(dom)

    # Model-training mode, on the experiment's runs: the tab's title, and a sidebar of
    # Runs / Models / Traces whose links keep the mode (GenAI's has Overview, Judges, ...).
    assert page.title.startswith(f"Runs - Experiment {experiment_id}"), page.title
    nav_texts = {text for _, text in page.nav}
    assert {"Runs", "Models"} <= nav_texts and not {"Overview", "Judges"} & nav_texts, nav_texts
    runs_link = next(href for href, text in page.nav if text == "Runs")
    assert "workflowType=machine_learning" in runs_link, runs_link

    # Every trial is a row of the table (a link to its run), and the parent run is not.
    rows = {text: href for href, text in page.links if "/runs/" in href}
    for row in finished_sweep.rows:
        assert row["name"] in rows and row["run_id"] in rows[row["name"]], (row["name"], sorted(rows))
    parent = [r.info.run_id for r in MlflowClient(mlflow_server.uri).search_runs(
        [experiment_id], "tags.`xmem.role` = 'parent'")]
    assert parent and not any(parent[0] in href for href in rows.values())

    # The sigma column and the metric columns, with their headers.
    assert page.columns.get("params.`sigma`") == "sigma", page.columns
    metrics = {col: text for col, text in page.columns.items() if col.startswith("metrics.")}
    assert metrics.get("metrics.`train/acc`") == "train/acc", page.columns
    assert "metrics.`test/best_acc`" in metrics

    # The screenshot a new user would see first, kept for the record.
    shot = tmp_path / "mlflow-ui-trials.png"
    _chromium(browser, tmp_path / "profile", f"--screenshot={shot}", printed_link)
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 20_000
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / shot.name
    shutil.copyfile(shot, kept)
    request.node.user_properties.append(("screenshot", str(kept)))
    print(f"screenshot of {printed_link}: {kept}")


def test_without_the_mode_in_the_link_the_ui_opens_in_genai_mode(browser, printed_link, tmp_path):
    """The control: the same page without ``workflowType`` is MLflow's GenAI overview, which
    is why every link xmem prints carries it."""
    bare = re.sub(r"/runs\?.*$", "", printed_link)
    page = _Page()
    page.feed(_chromium(browser, tmp_path / "profile", "--dump-dom", bare).stdout)
    assert {"Overview", "Judges"} <= {text for _, text in page.nav}, page.nav
