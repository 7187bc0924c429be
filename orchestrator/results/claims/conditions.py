"""Claims 7 and 8: architectures, shuffled labels, and the squared loss's blow-up.

Each ``claimN(rows, epoch0)`` returns one ``Finding`` per like-with-like group, or one "not
testable here" finding (see ``sweeps`` for the signature). The rules and thresholds are
``rules.RULES`` and the constants beside it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from orchestrator.results import tables
from orchestrator.results.claims.regime import (Finding, Row, apart, at_chance_bound,
                                                inconclusive, judge, like_groups, mean_of,
                                                not_testable, num, pct, scale, sigma_text,
                                                split_diverged, untrained, with_evidence,
                                                with_finals)
from orchestrator.results.claims.rules import BLOW_UP_SCALE, PAPER_LR
from orchestrator.results.grouping import SIGMA, chance, group_rows
from orchestrator.text import format_value
from workers import contract
from workers.contract import STATUS_DIVERGED

# A check of one pair of conditions: (trials with a, trials with b) -> (problems, PASS?, evidence).
PairCheck = Callable[[list[Row], list[Row]], tuple[list[str], bool, str]]


def compare(rows: Sequence[Row], key: str, a: tuple[Any, str], b: tuple[Any, str],
            check: PairCheck, needs: str) -> list[Finding]:
    """``check`` on every group of ``rows`` identical but for ``key`` (and seeds) holding both
    ``a`` and ``b`` (each: the value, its name in the row), after the regime: both trained to
    memorization. Diverged trials are left out. Not testable, saying ``needs``, when no group
    holds both."""
    found = []
    def holds_both(members):
        return all(any(r.get(key) == value for r in members) for value, _ in (a, b))

    for group in like_groups(rows, (key,), holds_both):
        sides = [[r for r in group.members if r.get(key) == value] for value, _ in (a, b)]
        (kept_a, lost_a), (kept_b, lost_b) = (split_diverged(side) for side in sides)
        problems = [f"{name}: every trial diverged at lr {format_value(side[0].get('lr'))}; a "
                    f"smaller lr for the whole group may train it"
                    for (_, name), side, kept in ((a, sides[0], kept_a), (b, sides[1], kept_b))
                    if not kept]
        problems += untrained([(name, kept) for (_, name), kept in ((a, kept_a), (b, kept_b))
                               if kept])
        if not kept_a or not kept_b:
            found.append(inconclusive(group.scope, problems))
            continue
        more, ok, evidence = check(kept_a, kept_b)
        evidence = with_finals(evidence, kept_a + kept_b, (contract.ALIGN_REP,))
        found.append(judge(group.scope, problems + more, ok,
                           with_evidence(evidence, lost_a + lost_b)))
    if found:
        return found
    both = [r for r in rows if r.get(key) in (a[0], b[0])]
    return not_testable(needs + apart(both, (key,)))


def _alignment_logged(*sides: list[Row]) -> list[str]:
    if all(mean_of(side, contract.ALIGN_REP) is not None for side in sides):
        return []
    return [f"{contract.ALIGN_REP} not logged"]


def claim7a(rows, epoch0):
    true_labels = [r for r in rows if r.get("shuffle_labels") is False]
    return compare(true_labels, "model", ("mlp", "MLP"), ("convnet", "ConvNet"), _claim7a,
                   "needs MLP and ConvNet trials on true labels with otherwise identical config")


def _claim7a(mlp, convnet):
    accuracy = [mean_of(side, contract.TEST_BEST_ACC) for side in (mlp, convnet)]
    alignment = [mean_of(side, contract.ALIGN_REP) for side in (mlp, convnet)]
    ok = (None not in accuracy and None not in alignment
          and accuracy[1].mean > accuracy[0].mean and alignment[1].mean > alignment[0].mean)
    return _alignment_logged(mlp, convnet), ok, (
        f"best test: MLP {pct(accuracy[0])}, ConvNet {pct(accuracy[1])}; {contract.ALIGN_REP}: "
        f"MLP {num(alignment[0])}, ConvNet {num(alignment[1])}")


def claim7b(rows, epoch0):
    return compare(rows, "shuffle_labels", (False, "true labels"), (True, "shuffled labels"),
                   _claim7b, "needs trials with true and with shuffled labels, otherwise identical")


def _claim7b(true_labels, shuffled):
    final = mean_of(shuffled, contract.TEST_ACC)
    alignment = [mean_of(side, contract.ALIGN_REP) for side in (true_labels, shuffled)]
    bound = max(at_chance_bound(r) for r in shuffled)
    ok = (final is not None and final.mean <= bound and None not in alignment
          and alignment[1].mean < alignment[0].mean)
    return _alignment_logged(true_labels, shuffled), ok, (
        f"shuffled labels: final test {pct(final)} (chance {chance(shuffled[0]['dataset']):.0%}, "
        f"counts as chance up to {bound:.1%}); {contract.ALIGN_REP}: true labels "
        f"{num(alignment[0])}, shuffled {num(alignment[1])}")


def claim8(rows, epoch0):
    squared = [r for r in rows if r.get("activation") == "relu" and r.get("loss") == "squared"
               and r.get("lr") == PAPER_LR and r.get(SIGMA) is not None
               and scale(r) >= BLOW_UP_SCALE]
    found = []
    for group in like_groups(squared, (SIGMA,)):
        counts = []
        for (sigma,), at in sorted(group_rows(group.members, [SIGMA]).items()):
            diverged = sum(r[tables.STATUS] == STATUS_DIVERGED for r in at)
            counts.append(f"{sigma_text(sigma)}: {diverged}/{len(at)} diverged")
        any_diverged = any(r[tables.STATUS] == STATUS_DIVERGED for r in group.members)
        found.append(judge(group.scope, [], any_diverged, "; ".join(counts)))
    return found or not_testable(
        f"needs ReLU + squared-loss trials at lr {PAPER_LR:g} with σ·||x|| >= "
        f"{BLOW_UP_SCALE:g} (on 32x32x3 images σ >= 0.9)")
