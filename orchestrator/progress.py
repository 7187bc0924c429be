"""What a sweep shows on the console: the dry run's trial table, a live progress line while
it runs, then a results table of every trial.

Pure Python on purpose (no ray, no mlflow): the Tune runner feeds it events, the sweep
command feeds it final results, and tests drive it directly.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator.expand import TrialPoint, shown_keys
from orchestrator.text import METRIC_LABELS, count, format_metric, format_seconds, format_table, format_value
from workers import contract
from workers.contract import STATUS_DIVERGED as DIVERGED
from workers.contract import STATUS_FAILED as FAILED
from workers.contract import STATUS_FINISHED as FINISHED
from workers.contract import STATUS_INTERRUPTED as INTERRUPTED
from workers.contract import STATUS_PENDING as PENDING
from workers.contract import STATUS_RUNNING as RUNNING
from workers.contract import TRIAL_STATUSES as STATES
from workers.contract import ERROR_USER, RESULT_STATUSES

# The end-of-sweep table's metric columns (labels and formats: orchestrator.text).
RESULTS_TABLE_METRICS = (contract.TRAIN_ACC, contract.TEST_BEST_ACC, contract.ALIGN_GRAD)


def format_trial_table(trials: list[TrialPoint], packs: list[list[str]] | None = None) -> str:
    """An aligned plain-text table (trial id, name, one column per varying key) and a count
    line: what ``xmem sweep SPEC --dry-run`` prints.

    ``packs``: the trial ids of each pack; when some pack holds several trials, a ``pack``
    column numbers them (1, 2, ...) and the count line says how many packs there are.
    """
    keys = shown_keys(trials)
    pack_of = {tid: i + 1 for i, members in enumerate(packs or []) for tid in members}
    packed = any(len(members) > 1 for members in packs or [])
    header = ["trial_id", "name", *keys] + (["pack"] if packed else [])
    rows = [[trial.trial_id, trial.name,
             *(format_value(trial.varying[k]) if k in trial.varying else "" for k in keys)]
            + ([str(pack_of.get(trial.trial_id, ""))] if packed else [])
            for trial in trials]
    total = count(len(trials), "trial")
    if packed:
        total += f" in {count(len(packs or []), 'pack')}"
    return format_table(header, rows) + "\n" + total


@dataclass
class _TrialProgress:
    epochs: int
    state: str = PENDING
    epoch: int = 0
    first_epoch: int | None = None  # the first epoch reported in this session (a resumed trial starts late)


@dataclass
class SweepProgress:
    """Counts trials by state and estimates the time left from epochs done.

    ``echo`` receives one line per update when ``live`` is False (logs, CI), or rewrites one
    terminal line when ``live`` is True.
    """

    epochs_by_trial: dict[str, int]
    echo: Callable[[str], None] = print
    live: bool = False
    interval_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    trials: dict[str, _TrialProgress] = field(init=False)

    def __post_init__(self) -> None:
        self.trials = {tid: _TrialProgress(epochs) for tid, epochs in self.epochs_by_trial.items()}
        self.started_at = self.clock()
        self.last_print = -float("inf")
        self.last_line = ""

    # --- events (orchestrator.tune_runner.TrialEvents) ------------------------------
    def trial_started(self, trial_id: str) -> None:
        self.trials[trial_id].state = RUNNING
        self.tick()

    def trial_result(self, trial_id: str, epoch: int | None, status: str | None) -> None:
        if epoch is not None:
            trial = self.trials[trial_id]
            trial.epoch = max(trial.epoch, int(epoch))
            if trial.first_epoch is None:
                trial.first_epoch = int(epoch)
        self.tick()

    def trial_retrying(self, trial_id: str) -> None:
        self.trials[trial_id].state = PENDING
        self.tick(force=True)

    def trial_completed(self, trial_id: str, status: str) -> None:
        trial = self.trials[trial_id]
        trial.state = status if status in STATES else FINISHED
        if status == FINISHED:
            trial.epoch = trial.epochs
        self.tick(force=True)

    def interrupted(self) -> None:
        """Ctrl-C or SIGTERM stopped the sweep: every trial still running is interrupted
        (trials not started stay pending)."""
        for trial in self.trials.values():
            if trial.state == RUNNING:
                trial.state = INTERRUPTED
        self.tick(force=True)

    def tick(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_print < (1.0 if self.live else self.interval_s):
            return
        line = self.summary()
        if line == self.last_line and not self.live:
            return
        self.last_print, self.last_line = now, line
        if self.live:
            sys.stdout.write("\r\033[K" + line)
            sys.stdout.flush()
        else:
            self.echo(line)

    def close(self) -> None:
        if self.live:
            sys.stdout.write("\r\033[K" + self.summary() + "\n")
            sys.stdout.flush()

    # --- what is shown --------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for trial in self.trials.values():
            counts[trial.state] += 1
        return counts

    def fraction_done(self) -> float:
        """Share of the epochs this session has to train that are trained (epochs a resumed
        trial had done before this session count neither as work nor as progress)."""
        total = done = 0
        for t in self.trials.values():
            start = t.first_epoch or 0
            todo = max(t.epochs - start, 1)
            total += todo
            done += todo if t.state in (FINISHED, FAILED, DIVERGED) else max(t.epoch - start, 0)
        return done / total if total else 1.0

    def summary(self) -> str:
        counts = self.counts()
        elapsed = self.clock() - self.started_at
        fraction = self.fraction_done()
        eta = format_seconds(elapsed * (1 - fraction) / fraction) if fraction > 0.02 else "?"
        # "interrupted" only once there are some: it is the state of a stopped sweep alone.
        states = " | ".join(f"{counts[s]} {s}" for s in STATES if s != INTERRUPTED or counts[s])
        return f"[{format_seconds(elapsed)}] {states} | {fraction:5.1%} of epochs | ~{eta} left"


def format_results_table(rows: list[dict[str, Any]], varying_keys: list[str]) -> str:
    """The end-of-sweep table: varying keys, status, then ``RESULTS_TABLE_METRICS``, and an
    ``error`` column (each failed trial's error in one line) when a trial has one.

    ``rows`` hold the varying keys' values plus ``name``, ``status``, metric values under
    their metric names (missing = not logged) and ``error`` (None unless failed).
    """
    errors = any(row.get("error") for row in rows)
    header = (["trial"] + varying_keys + ["status"]
              + [METRIC_LABELS[name] for name in RESULTS_TABLE_METRICS] + (["error"] if errors else []))
    body = [[row["name"]] + [format_value(row.get(k), missing="-") for k in varying_keys]
            + [row.get("status") or "-"]
            + [format_metric(name, row.get(name)) for name in RESULTS_TABLE_METRICS]
            + ([row.get("error") or ""] if errors else [])
            for row in rows]
    return format_table(header, body, rule=True)


def closing_advice(rows: list[dict[str, Any]], rerun: str) -> list[str]:
    """What to do about the trials that did not finish, by why: an interrupted trial (Ctrl-C
    or SIGTERM) continues from its checkpoint on a rerun; a user error needs its input fixed
    first (rerunning as is fails the same way); a crash resumes on a rerun. ``rerun`` is the
    command that reruns the sweep. Empty when all finished."""
    undone = [row for row in rows if row.get("status") not in RESULT_STATUSES]
    stopped = [row for row in undone if row.get("status") == INTERRUPTED]
    undone = [row for row in undone if row.get("status") != INTERRUPTED]
    user = [row for row in undone if row.get("error_kind") == ERROR_USER]
    others = [row for row in undone if row.get("error_kind") != ERROR_USER]
    advice = []
    if stopped:
        advice.append(f"Interrupted: {count(len(stopped), 'trial')} stopped (not failed); rerun "
                      f"`{rerun}` to continue from their checkpoints (one with none starts over)")
    if user:
        advice.append(f"{count(len(user), 'trial')} failed on a user error (the error column): "
                      f"fix the spec or the data, then rerun: {rerun}")
    if others:
        failed = sum(row.get("status") == FAILED for row in others)
        what = (f"{count(failed, 'trial')} failed (error.txt in their MLflow runs)" if failed
                else "") + (", " if failed and len(others) > failed else "")
        what += (f"{count(len(others) - failed, 'trial')} did not finish"
                 if len(others) > failed else "")
        advice.append(f"{what}. Rerun to resume them: {rerun}  (or add --restart-failed to "
                      "start failed ones over)")
    return advice
