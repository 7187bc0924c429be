"""``xmem report``: a sweep's figures, claims table and trial table, as PNGs and one
self-contained HTML page, also logged to the sweep's parent MLflow run.

What ``write_report`` leaves in ``out_dir`` (and under ``report/`` in the parent run)::

    report.html              figures embedded (base64 PNG), claims table, trial table
    fig*.png                 the figures of orchestrator.results.figures
    claims.parquet           the claims table (claim, statement, scope, evidence, verdict,
                             missing, source, rule: ``claims.claims_table``)
    results.parquet          the trials table the figures and claims were computed from
    history.parquet          the history table (one row per trial and evaluated epoch)

The tables are exactly what ``xmem export`` writes (with the same ``include_stale``): the
figures and claims read them and nothing else. Runs of stale trial ids are left out unless
``include_stale``, and even then the figures and claims never read them. In the trial table a
value from before the trial's last epoch is marked with its epoch (``stale_metrics``); the
claims and figures treat it as missing, and the output says which trials that left out.
"""

from __future__ import annotations

import base64
import datetime
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.results import claims, grouping, tables
from orchestrator.results.claims import ClaimCheck
from orchestrator.settings import default_report_dir, tracking_uri_for
from orchestrator.text import format_metric, format_value
from workers import contract
from workers.contract import REPORT_ARTIFACT_DIR
from workers.errors import XmemError

HTML_FILE = "report.html"
CLAIMS_FILE = "claims.parquet"
RESULTS_FILE = "results.parquet"
HISTORY_FILE = "history.parquet"
PAPER = ("H. Mehta, A. Cutkosky, B. Neyshabur, <i>Extreme Memorization via Scale of "
         "Initialization</i>, ICLR 2021 (arXiv 2008.13363)")
TABLE_METRICS = (contract.TRAIN_ACC, contract.TEST_ACC, contract.TEST_BEST_ACC, contract.ALIGN_GRAD,
                 contract.ALIGN_REP)


@dataclass(frozen=True)
class Report:
    """What ``write_report`` made."""

    out_dir: Path
    html: Path
    figures: list[Path]
    checks: list[ClaimCheck]
    parent_run_id: str
    tracking_uri: str


def write_report(sweep: str, out_dir: str | Path | None = None, *, tracking_uri: str | None = None,
                 store: str | None = None, echo: Callable[[str], None] = print,
                 include_stale: bool = False) -> Report:
    """Read the sweep, draw its figures, check the claims, write ``out_dir`` and log it to the
    sweep's parent run. Runs of stale trial ids only in the tables, with ``include_stale``.

    Raises:
        XmemError: ``out_dir`` cannot be written (checked first), no such sweep (listing the
            ones that exist), no store, server trouble.
    """
    from orchestrator.results import figures  # matplotlib: only when drawing
    from orchestrator.tracking.server import open_tracking
    from orchestrator.tracking.writer import SweepTracker

    out = Path(out_dir) if out_dir is not None else default_report_dir(sweep)
    check_out_dir(out)
    with open_tracking(tracking_uri, store) as uri:
        tracker = SweepTracker(uri, sweep)
        loaded = tables.load_results(tracker, with_history=True, include_stale=include_stale)
        parent_run_id = tracker.find_parent_run_id()
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(loaded.trials, out / RESULTS_FILE)
        pq.write_table(loaded.history, out / HISTORY_FILE)
        checks = claims.check_claims(loaded.trials, loaded.history)
        pq.write_table(claims.claims_table(checks), out / CLAIMS_FILE)
        drawn = figures.draw_figures(loaded.trials, loaded.history, out)
        given, root = tracking_uri_for(tracking_uri, store)
        source = given or f"the store {root}"   # not the port of a server gone after this
        browse = tracker.browse_target(store=None if given else str(root))
        (out / HTML_FILE).write_text(render_html(sweep, source, loaded.trials, checks, drawn,
                                                 browse, loaded.stale), encoding="utf-8")
        tracker.log_to_parent_run(out, REPORT_ARTIFACT_DIR)
        browse_line = tracker.browse_line(store=None if given else str(root))
    echo(f"report of sweep {sweep}: {out / HTML_FILE} ({len(drawn)} figures, "
         f"{len(loaded.trials)} trials)")
    if loaded.stale.note():
        echo(loaded.stale.note())
    echo(format_claims(checks))
    echo(claims.finals_note(loaded.trials))
    echo(f"how each claim is checked: {out / HTML_FILE}#rules")
    echo(f"logged to the parent run {parent_run_id} under {REPORT_ARTIFACT_DIR}/")
    echo(browse_line)
    return Report(out, out / HTML_FILE, [f.path for f in drawn], checks, parent_run_id, uri)


def check_out_dir(out: Path) -> None:
    """Raise ``XmemError`` when ``out`` cannot be made a writable folder; leaves nothing behind
    (``orchestrator.preflight.unwritable``)."""
    from orchestrator.preflight import unwritable

    reason = unwritable(out)
    if reason:
        raise XmemError(f"cannot write the report to {out}: {reason}.\nPass --out with a folder "
                        "you can write to (it is created when missing).")


def format_claims(checks: Sequence[ClaimCheck]) -> str:
    """The claims as text lines, ``claim  verdict  scope``; under an inconclusive row what it
    lacks, under a FAIL the rule that was not met."""
    width = max((len(c.verdict) for c in checks), default=0)
    indent = " " * (2 + 4 + width + 2)
    lines = []
    for check in checks:
        lines.append(f"  {check.claim:<3} {check.verdict:<{width}}  {check.scope or '-'}")
        if check.verdict == claims.INCONCLUSIVE:
            lines.append(f"{indent}needs: {check.missing}")
        elif check.verdict == claims.FAIL:
            lines.append(f"{indent}PASS needs: {check.rule.passes}")
    return "\n".join(lines)


# --- HTML -------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.PASS { background: #d9f2d9; font-weight: bold; }
td.FAIL { background: #f8d7d7; font-weight: bold; }
td.inconclusive { background: #fcefc7; font-weight: bold; }
td.untestable { color: #777; }
td[title] { cursor: help; }
p.missing { margin: 0.3em 0 0; font-style: italic; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.stale { color: #a05a00; font-style: italic; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
"""


def render_html(sweep: str, source: str, trials: pa.Table, checks: Sequence[ClaimCheck],
                drawn: Sequence[Any], browse: tuple[str | None, str] | None = None,
                stale: tables.StaleRuns | None = None) -> str:
    """The self-contained page: summary, claims table, figures (embedded), trial table.
    ``source`` says where the runs were read (a tracking URI or a store folder); ``browse``
    (the command that serves the runs first, or None; the link) where to see the trials in
    the MLflow UI; ``stale`` the runs of stale trial ids (left out or included)."""
    rows = trials.to_pylist()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[tables.STATUS]] = counts.get(row[tables.STATUS], 0) + 1
    status_text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    stale_ids = sum(row.get(tables.IN_SPEC) is False for row in rows)
    left_out = len(rows) - len(grouping.result_rows(trials)) - stale_ids
    stale_note = stale.note() if stale is not None else ""
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>xmem report: {_e(sweep)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Sweep <code>{_e(sweep)}</code></h1>",
        f"<p>{len(rows)} trials ({_e(status_text)}); MLflow runs read from {_e(source)}; "
        f"generated {_e(generated)}.",
        (f" {left_out} trial(s) neither finished nor diverged are left out of the figures and "
         "claims." if left_out else "")
        + (f" The {stale_ids} run(s) of stale trial ids are in the trial table only." if stale_ids
           else "") + "</p>",
        f"<p>{_e(_sentence(stale_note))}</p>" if stale_note else "",
        _browse_html(browse),
        "<h2>The paper's claims on this sweep</h2>",
        f"<p>Claims of {PAPER}, each checked on groups of trials that differ only in what the "
        "claim varies; seeds are aggregated as mean ± standard deviation (n). Hover over a "
        "verdict, or follow the claim's number, for the rule behind it "
        "(<a href='#rules'>how the claims are checked</a>).</p>",
        f"<p class='finals'>{_e(_sentence(claims.finals_note(trials)))}</p>",
        _claims_html(checks), "<h2>Figures</h2>",
    ]
    for figure in drawn:
        data = base64.b64encode(Path(figure.path).read_bytes()).decode("ascii")
        parts.append(f"<figure><h3>{_e(figure.title)}</h3><img alt='{_e(figure.title)}' "
                     f"src='data:image/png;base64,{data}'><figcaption>{_e(figure.caption)}"
                     "</figcaption></figure>")
    if not drawn:
        parts.append("<p>No finished trials to draw.</p>")
    parts += ["<h2>Trials</h2>", "<p>A value from before the trial's last epoch (epochs done) "
              "is marked with the epoch it is from: it is not a final value.</p>",
              _trials_html(trials), _rules_html(), "</body></html>"]
    return "\n".join(parts)


def _browse_html(browse: tuple[str | None, str] | None) -> str:
    """The paragraph linking to the trials in the MLflow UI (empty without ``browse``)."""
    if browse is None:
        return ""
    command, url = browse
    link = f"<a href='{_e(url)}'>{_e(url)}</a>"
    if command is None:
        return f"<p>The trials in the MLflow UI: {link}</p>"
    return f"<p>The trials in the MLflow UI: run <code>{_e(command)}</code>, then open {link}</p>"


def _claims_html(checks: Sequence[ClaimCheck]) -> str:
    head = ("<tr><th>claim</th><th>statement</th><th>paper</th><th>trials</th><th>evidence</th>"
            "<th>verdict</th></tr>")
    body = []
    for check in checks:
        css = {claims.PASS: "PASS", claims.FAIL: "FAIL",
               claims.INCONCLUSIVE: "inconclusive"}.get(check.verdict, "untestable")
        missing = ""
        if check.missing:   # under the numbers of an inconclusive row; alone when not testable
            prefix = "Missing: " if check.evidence else ""
            missing = f"<p class='missing'>{prefix}{_e(check.missing)}</p>"
        body.append(f"<tr><td><a href='#rule-{_e(check.claim)}'>{_e(check.claim)}</a></td>"
                    f"<td>{_e(check.statement)}</td><td>{_e(check.rule.source)}</td>"
                    f"<td>{_e(check.scope)}</td><td>{_e(check.evidence)}{missing}</td>"
                    f"<td class='{css}' title='{_e(check.rule.text())}'>{_e(check.verdict)}</td>"
                    "</tr>")
    return f"<table class='claims'>{head}{''.join(body)}</table>"


def _rules_html() -> str:
    """How the claims are checked: the verdicts, like with like, and every claim's rule
    (``orchestrator.results.claims.rules``)."""
    verdicts = "".join(f"<li><b>{_e(verdict)}</b>: {_e(meaning)}</li>"
                       for verdict, meaning in claims.VERDICTS.items())
    head = ("<tr><th>claim</th><th>paper</th><th>compares</th><th>regime (else inconclusive)"
            "</th><th>PASS when (else FAIL)</th></tr>")
    body = "".join(f"<tr id='rule-{_e(r.claim)}'><td>{_e(r.claim)}</td><td>{_e(r.source)}</td>"
                   f"<td>{_e(r.compares)}</td><td>{_e(r.regime)}</td><td>{_e(r.passes)}</td></tr>"
                   for r in claims.RULES.values())
    return ("<h2 id='rules'>How the claims are checked</h2>"
            f"<p>The claims are those of {PAPER}, in short; the rules below turn them into "
            f"checks.</p><ul>{verdicts}</ul><p>{_e(claims.LIKE_WITH_LIKE)}</p>"
            f"<table class='rules'>{head}{body}</table>")


def _trials_html(trials: pa.Table) -> str:
    rows = trials.to_pylist()
    keys = grouping.varying_keys(rows)
    names = [m for m in TABLE_METRICS if m in trials.column_names]
    header = ["trial", *keys, "status", "attempts", "epochs done", *names, "run id"]
    body = []
    for row in rows:
        cells = [f"<td>{_e(row[tables.NAME])}</td>"]
        cells += [f"<td>{_e(format_value(row.get(k)))}</td>" for k in keys]
        status = row[tables.STATUS] + (" (stale id)" if row.get(tables.IN_SPEC) is False else "")
        cells += [f"<td>{_e(status)}</td>",
                  f"<td class='num'>{_e(format_value(row.get(tables.ATTEMPTS)))}</td>",
                  f"<td class='num'>{_e(format_value(row.get(tables.EPOCHS_DONE)))}</td>"]
        for name in names:
            cells.append(_metric_cell(row, name))
        cells.append(f"<td><code>{_e(row[tables.RUN_ID])}</code></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f"<table class='trials'><tr>{head}</tr>{''.join(body)}</table>"


def _metric_cell(row: dict[str, Any], name: str) -> str:
    """A metric's cell: its value, marked with its epoch when that is before the trial's last
    epoch (``stale_metrics``)."""
    text = format_metric(name, row.get(name))
    if name not in grouping.stale(row):
        return f"<td class='num'>{_e(text)}</td>"
    step, last = row.get(tables.step_column(name)), row.get(tables.EPOCHS_DONE)
    title = (f"last logged at epoch {format_value(step)}, before the trial's last epoch "
             f"{format_value(last)}: not a final value (left out of the claims and figures)")
    return (f"<td class='num stale' title='{_e(title)}'>{_e(text)} "
            f"(epoch {_e(format_value(step))})</td>")


def _sentence(text: str) -> str:
    """``text`` as a sentence: its first letter upper case, a full stop at the end."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
