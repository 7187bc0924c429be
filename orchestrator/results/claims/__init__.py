"""The paper's claims checked on a sweep's own numbers.

Each claim the sweep's trials can test gets one row per like-with-like group of trials, with
a verdict (PASS, FAIL, inconclusive, not testable here), the numbers it rests on, and, when
inconclusive or not testable, what is missing and what to change. How each claim is checked
(which trials it compares, its regime, its rule, its thresholds) is written once, in
``rules.py``; the report renders it from there.

  rules       verdicts, thresholds, and RULES: one ClaimRule per claim
  regime      like-with-like groups, the regime checks, shared definitions
  sweeps      claims 1-6 (sweeps of sigma)
  conditions  claims 7a, 7b, 8 (architectures, labels, blow-up)

Input: the results tables of ``orchestrator.results.tables`` (``trials``; ``history`` for the
claims about initialization, epoch 0). Finals are values at the trial's last epoch: a metric
whose value is from an earlier epoch (``stale_metrics``) counts as missing, and the rows that
read it say how many trials that left out (``finals_note``: the whole sweep's, for the
output). Runs of stale trial ids never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

from orchestrator.results import grouping, tables
from orchestrator.results.claims import conditions, sweeps
from orchestrator.results.claims.regime import at_chance_bound
from orchestrator.results.claims.rules import (CHANCE_MARGIN, CHANCE_STANDARD_ERRORS, FAIL,
                                               INCONCLUSIVE, LIKE_WITH_LIKE, MEMORIZED,
                                               NOT_TESTABLE, PASS, RULES, STATEMENTS, VERDICTS,
                                               ClaimRule)
from workers import contract

__all__ = ["CHANCE_MARGIN", "CHANCE_STANDARD_ERRORS", "FAIL", "INCONCLUSIVE", "LIKE_WITH_LIKE",
           "MEMORIZED",
           "NOT_TESTABLE", "PASS", "RULES", "STATEMENTS", "VERDICTS", "ClaimCheck", "ClaimRule",
           "at_chance_bound", "check_claims", "claims_table", "finals_note"]

_CHECKS = {"1": sweeps.claim1, "2": sweeps.claim2, "3": sweeps.claim3, "4a": sweeps.claim4a,
           "4b": sweeps.claim4b, "4c": sweeps.claim4c, "5": sweeps.claim5, "6": sweeps.claim6,
           "7a": conditions.claim7a, "7b": conditions.claim7b, "8": conditions.claim8}


@dataclass(frozen=True)
class ClaimCheck:
    """One row of the claims table."""

    claim: str
    """The claim's number, with a letter for its parts (4a, 4b, ...): a key of RULES."""
    statement: str
    scope: str
    """The group of trials it was checked on (``dataset=cifar10 · loss=hinge``); empty if none."""
    evidence: str
    """The numbers the verdict rests on (also, for information, those of an inconclusive row)."""
    verdict: str
    """PASS, FAIL, inconclusive or "not testable here"."""
    missing: str = ""
    """Inconclusive / not testable: what the trials lack and what to change; else empty."""

    @property
    def rule(self) -> ClaimRule:
        return RULES[self.claim]


def check_claims(trials: pa.Table, history: pa.Table | None = None) -> list[ClaimCheck]:
    """Every claim, in the order of RULES: one row per group of trials it was checked on, or
    one "not testable here" row saying what the sweep lacks."""
    rows = grouping.finals(grouping.result_rows(trials))
    epoch0 = _epoch0(history, {row[tables.TRIAL_ID] for row in rows})
    checks: list[ClaimCheck] = []
    for claim, rule in RULES.items():
        checks += [ClaimCheck(claim, rule.statement, f.scope, f.evidence, f.verdict, f.missing)
                   for f in _CHECKS[claim](rows, epoch0)]
    return checks


def finals_note(trials: pa.Table) -> str:
    """The rule for final values, and the result trials it left out of some metric (what
    ``xmem report`` prints under the claims)."""
    return grouping.finals_note(grouping.result_rows(trials))


CLAIMS_COLUMNS = ("claim", "statement", "scope", "evidence", "verdict", "missing", "source",
                  "rule")


def claims_table(checks: Sequence[ClaimCheck]) -> pa.Table:
    """The checks as a table of strings: claim, statement, scope, evidence, verdict, missing,
    and the claim's source in the paper and rule (``ClaimRule.text``)."""
    def value(check: ClaimCheck, name: str) -> str:
        if name == "source":
            return check.rule.source
        if name == "rule":
            return check.rule.text()
        return getattr(check, name)

    return pa.table({name: pa.array([value(c, name) for c in checks], pa.string())
                     for name in CLAIMS_COLUMNS})


def _epoch0(history: pa.Table | None, trial_ids: set[str]) -> dict[str, dict[str, Any]] | None:
    """trial_id -> its history row at epoch 0, or None when no history was read."""
    if history is None:
        return None
    return {row[tables.TRIAL_ID]: row for row in history.to_pylist()
            if row[contract.EPOCH] == 0 and row[tables.TRIAL_ID] in trial_ids}
