"""Claims 1-6: what the paper says about sweeps of sigma, checked group by group.

Each ``claimN(rows, epoch0)`` takes the result rows (finished and diverged trials) and the
epoch-0 history rows (trial_id -> row; None when no history was read) and returns one
``Finding`` per like-with-like group, or one "not testable here" finding. The rules and
thresholds are ``rules.RULES`` and the constants beside it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from orchestrator.results import tables
from orchestrator.results.claims.regime import (Finding, Row, apart, at_chance_bound,
                                                inconclusive, judge, like_groups, mlp_baseline,
                                                not_testable, num, pct, scale, series,
                                                sigma_range, sigma_text, sigmas, split_diverged,
                                                trials_by_sigma, untrained, with_evidence,
                                                with_finals)
from orchestrator.results.claims.rules import (LARGE_SCALE, LOGIT_ALIGNMENT_SATURATED,
                                               LOGIT_ALIGNMENT_TINY, MIN_DROP, MIN_RANK_TRIALS,
                                               MIN_RHO, NOT_TESTABLE, SAME_ALIGNMENT, SATURATED,
                                               UNCORRELATED, UNCORRELATED_FROM_SIGMA,
                                               WELL_ABOVE_CHANCE)
from orchestrator.results.grouping import SIGMA, Summary, by_sigma, chance, finite, spearman
from workers import contract
from workers.datasets import FACTS

# A check of one group: its trained trials -> (further problems, PASS?, evidence).
GroupCheck = Callable[[list[Row]], tuple[list[str], bool, str]]

# Claim 6's numbers (||x|| about 55) hold for 32x32x3 images: d = 3072.
IMAGE_32X32X3 = tuple(name for name, facts in FACTS.items() if facts.image_shape == (32, 32, 3))


def sigma_sweeps(candidates: Sequence[Row], check: GroupCheck, needs: str,
                 varied: Sequence[str] = (SIGMA,)) -> list[Finding]:
    """``check`` on every group of ``candidates`` differing only in ``varied`` (and seeds)
    with two or more sigmas, after the regime: the sigma range and training to memorization,
    on the trials that did not diverge. Not testable, saying ``needs``, when no group has
    two sigmas."""
    found = []
    for group in like_groups(candidates, varied, _two_sigmas):
        kept, diverged = split_diverged(group.members)
        problems = sigma_range(kept, diverged) + untrained(trials_by_sigma(kept))
        if len(sigmas(kept)) < 2:
            found.append(inconclusive(group.scope, problems or ["fewer than two σ trained"],
                                      with_evidence("", diverged)))
            continue
        more, ok, evidence = check(kept)
        found.append(judge(group.scope, problems + more, ok, with_evidence(evidence, diverged)))
    if found:
        return found
    return not_testable(needs + (apart(candidates, varied) if len(sigmas(candidates)) > 1 else ""))


def _two_sigmas(members: Sequence[Row]) -> bool:
    return len(sigmas(members)) >= 2


def at_init(members: Sequence[Row], epoch0: dict[str, dict]) -> list[dict]:
    """The trials of ``members`` with their metrics at epoch 0 instead of their last ones."""
    return [{**r, **epoch0[r[tables.TRIAL_ID]]} for r in members if r[tables.TRIAL_ID] in epoch0]


def _at(points: list[tuple[float, Summary]], sigma: float) -> Summary | None:
    return dict(points).get(sigma)


# --- claim 1 -------------------------------------------------------------------------------------

def claim1(rows, epoch0):
    return sigma_sweeps(mlp_baseline(rows, activation="sin"), _claim1,
                        "needs sin MLP trials (temperature 1, true labels) at two or more σ")


def _claim1(members):
    small, large = sigmas(members)[0], sigmas(members)[-1]
    best = by_sigma(members, contract.TEST_BEST_ACC)
    train = _at(by_sigma(members, contract.TRAIN_ACC), large)
    final = _at(by_sigma(members, contract.TEST_ACC), large)
    generalizing = _at(best, small)
    level = chance(members[0]["dataset"])
    bound = max(at_chance_bound(r) for r in members if r[SIGMA] == large)
    ok = (generalizing is not None and generalizing.mean >= level + WELL_ABOVE_CHANCE
          and final is not None and final.mean <= bound)
    return [], ok, (f"best test: {series(best, pct)}; at {sigma_text(large)}: train {pct(train)}, "
                    f"final test {pct(final)} (chance {level:.0%}, counts as chance up to "
                    f"{bound:.1%}; generalizing needs best test >= "
                    f"{level + WELL_ABOVE_CHANCE:.0%} at {sigma_text(small)})")


# --- claim 2 -------------------------------------------------------------------------------------

def claim2(rows, epoch0):
    return sigma_sweeps(mlp_baseline(rows, activation="sin"), _claim2,
                        "needs sin MLP trials (temperature 1, true labels) at two or more σ")


def _falls(members, metric: str) -> tuple[list[str], bool, str]:
    """Whether ``metric``'s seed means fall with sigma over ``members`` (``rules``, claim 2:
    down by SAME_ALIGNMENT overall, never up by more), and the numbers."""
    points = by_sigma(members, metric)
    if len(points) < 2:
        return [f"{metric} not logged at two or more σ"], False, f"{metric}: {series(points, num)}"
    means = [summary.mean for _, summary in points]
    drop = means[0] - means[-1]
    rise = max(b - a for a, b in zip(means, means[1:]))
    ok = drop >= SAME_ALIGNMENT and rise <= SAME_ALIGNMENT
    return [], ok, (f"{metric}: {series(points, num)} (falls by {drop:.3f}, needs >= "
                    f"{SAME_ALIGNMENT:g}; largest rise {max(rise, 0.0):.3f}, needs <= "
                    f"{SAME_ALIGNMENT:g})")


def _claim2(members):
    grad_problems, grad_ok, grad = _falls(members, contract.ALIGN_GRAD)
    rep_problems, rep_ok, rep = _falls(members, contract.ALIGN_REP)
    return grad_problems + rep_problems, grad_ok and rep_ok, with_finals(
        f"{grad}; {rep}", members, (contract.ALIGN_GRAD, contract.ALIGN_REP))


# --- claim 3 -------------------------------------------------------------------------------------

def claim3(rows, epoch0):
    # Fig. 1b pools datasets: a group varies sigma and dataset, nothing else.
    return sigma_sweeps(mlp_baseline(rows, activation="sin"), _claim3,
                        "needs sin MLP trials (temperature 1, true labels) at two or more σ, with "
                        "align/grad logged", varied=(SIGMA, "dataset"))


def _usable(members) -> list[Row]:
    """The trials with both a final align/grad and a best test accuracy."""
    return [r for r in members if finite(r.get(contract.ALIGN_GRAD))
            and finite(r.get(contract.TEST_BEST_ACC))]


def _rho(members) -> tuple[float, float, int] | None:
    """Spearman's (rho, two-sided p, n) of best test against align/grad; None if undefined."""
    usable = _usable(members)
    found = spearman([r[contract.ALIGN_GRAD] for r in usable],
                     [r[contract.TEST_BEST_ACC] for r in usable])
    return None if found is None else (found[0], found[1], len(usable))


def _claim3(members):
    usable = _usable(members)
    rho = _rho(members)
    if len(usable) < MIN_RANK_TRIALS or rho is None:
        problem = (f"{len(usable)} trial(s) with align/grad and best test < {MIN_RANK_TRIALS}, too "
                   f"few for a rank correlation: add seeds or σ" if len(usable) < MIN_RANK_TRIALS
                   else "ρ undefined: align/grad or best test is constant")
        return [problem], False, with_finals(f"n = {len(usable)}", members,
                                             (contract.ALIGN_GRAD,))
    parts = [f"ρ(align/grad, best test) = {rho[0]:+.2f} (one-sided p = "
             f"{_one_sided(rho):.2g}, n = {rho[2]}; needs ρ >= {MIN_RHO:g})"]
    datasets = sorted({r["dataset"] for r in members})
    if len(datasets) > 1:   # the per-dataset numbers beside the pooled one, as Fig. 1b shows them
        for dataset in datasets:
            value = _rho([r for r in members if r["dataset"] == dataset])
            parts.append(f"{dataset}: " + ("ρ undefined" if value is None
                                           else f"ρ = {value[0]:+.2f} (n = {value[2]})"))
    return [], rho[0] >= MIN_RHO, with_finals("; ".join(parts), members, (contract.ALIGN_GRAD,))


def _one_sided(rho: tuple[float, float, int]) -> float:
    """The one-sided p of a positive correlation from the two-sided p."""
    return rho[1] / 2 if rho[0] > 0 else 1 - rho[1] / 2


# --- claim 4 -------------------------------------------------------------------------------------

def _drop(members) -> tuple[list[tuple[float, Summary]], float]:
    """Best test accuracy by sigma, and its drop from the smallest to the largest sigma."""
    best = by_sigma(members, contract.TEST_BEST_ACC)
    return best, (best[0][1].mean - best[-1][1].mean if len(best) >= 2 else 0.0)


def claim4a(rows, epoch0):
    return sigma_sweeps(mlp_baseline(rows, activation="relu", loss="cross_entropy"), _claim4a,
                        "needs ReLU + cross-entropy MLP trials (temperature 1, true labels) at two "
                        "or more σ")


def _claim4a(members):
    best, drop = _drop(members)
    level = chance(members[0]["dataset"])
    large = [s for s in sigmas(members)
             if min(scale(r) for r in members if r[SIGMA] == s) >= LARGE_SCALE]
    problems = [] if len(best) >= 3 and len(large) >= 2 else [
        f"the saturation needs three or more σ, the two largest with σ·||x|| >= "
        f"{LARGE_SCALE:g}: add a σ between (e.g. σ: 1 beside σ: 10)"]
    change = abs(best[-1][1].mean - best[-2][1].mean) if len(best) >= 2 else 0.0
    ok = (drop >= MIN_DROP and best[-1][1].mean >= level + WELL_ABOVE_CHANCE
          and change <= SATURATED)
    return problems, ok, (
        f"best test: {series(best, pct)}; drop {drop * 100:.1f} points (needs >= "
        f"{MIN_DROP * 100:g}); at {sigma_text(best[-1][0])} {best[-1][1].mean:.1%} vs chance "
        f"{level:.0%} (needs >= {level + WELL_ABOVE_CHANCE:.0%}); saturation: "
        f"{change * 100:.1f} points between the two largest σ (needs <= {SATURATED * 100:g})")


def claim4b(rows, epoch0):
    candidates = [r for r in mlp_baseline(rows, loss="cross_entropy")
                  if r.get("activation") in ("relu", "sin")]

    def both(members):
        return all(_two_sigmas([r for r in members if r["activation"] == activation])
                   for activation in ("relu", "sin"))

    found = []
    for group in like_groups(candidates, ("activation", SIGMA), both):
        kept, diverged = split_diverged(group.members)
        relu = [r for r in kept if r["activation"] == "relu"]
        sin = [r for r in kept if r["activation"] == "sin"]
        common = sorted(set(sigmas(relu)) & set(sigmas(sin)))
        if len(common) < 2:
            found.append(inconclusive(group.scope, [
                f"ReLU and sin share {len(common)} trained σ: the drops need two or more; run "
                f"both at the same σ"]))
            continue
        relu = [r for r in relu if r[SIGMA] in common]
        sin = [r for r in sin if r[SIGMA] in common]
        problems = sigma_range(relu + sin, diverged)
        problems += untrained(trials_by_sigma(relu, "ReLU ") + trials_by_sigma(sin, "sin "))
        (_, relu_drop), (_, sin_drop) = _drop(relu), _drop(sin)
        found.append(judge(group.scope, problems, relu_drop < sin_drop, with_evidence(
            f"best-test drop from {sigma_text(common[0])} to {sigma_text(common[-1])}: ReLU "
            f"{relu_drop * 100:.1f} points, sin {sin_drop * 100:.1f} points", diverged)))
    return found or not_testable("needs ReLU and sin MLP trials with cross-entropy (temperature "
                                 "1, true labels) at two or more σ each, otherwise identical"
                                 + apart(candidates, ("activation", SIGMA)))


def claim4c(rows, epoch0):
    found = []
    for loss in ("hinge", "squared"):
        candidates = mlp_baseline(rows, activation="relu", loss=loss)
        found += [replace(finding, scope=f"{finding.scope} · loss={loss}")
                  for finding in sigma_sweeps(candidates, _claim4c, "")
                  if finding.verdict != NOT_TESTABLE]
    candidates = [r for r in mlp_baseline(rows, activation="relu")
                  if r.get("loss") in ("hinge", "squared")]
    return found or not_testable("needs ReLU MLP trials with hinge or squared loss (temperature "
                                 "1, true labels) at two or more σ"
                                 + apart(candidates, (SIGMA, "loss")))


def _claim4c(members):
    best, drop = _drop(members)
    return [], drop >= MIN_DROP, (f"best test: {series(best, pct)}; drop {drop * 100:.1f} points "
                                  f"(needs >= {MIN_DROP * 100:g})")


# --- claims 5 and 6: at initialization -----------------------------------------------------------

def claim5(rows, epoch0):
    if epoch0 is None:
        return not_testable("needs the metric history (epoch 0)")
    candidates = mlp_baseline(rows, activation="relu", loss="cross_entropy")
    found = []
    for group in like_groups(candidates, (SIGMA,), _two_sigmas):
        # At init nothing has diverged yet: every trial counts.
        initial = at_init(group.members, epoch0)
        rep = by_sigma(initial, contract.ALIGN_REP)
        logits = by_sigma(initial, contract.ALIGN_GRAD_LOGITS)
        problems = sigma_range(group.members)
        if len(rep) < 2 or len(logits) < 2:
            problems.append("align/rep and align/grad_logits not logged at epoch 0 at two or "
                            "more σ")
            found.append(inconclusive(group.scope, problems))
            continue
        rep_range = max(s.mean for _, s in rep) - min(s.mean for _, s in rep)
        ok = (rep_range <= SAME_ALIGNMENT and logits[0][1].mean >= LOGIT_ALIGNMENT_TINY
              and logits[-1][1].mean <= LOGIT_ALIGNMENT_SATURATED)
        found.append(judge(group.scope, problems, ok, (
            f"at epoch 0: {contract.ALIGN_REP} {series(rep, num)} (range {rep_range:.3f}, needs "
            f"<= {SAME_ALIGNMENT}); {contract.ALIGN_GRAD_LOGITS} {series(logits, num)} (needs >= "
            f"{LOGIT_ALIGNMENT_TINY} at the smallest σ, <= {LOGIT_ALIGNMENT_SATURATED} at the "
            f"largest)")))
    return found or not_testable("needs ReLU + cross-entropy MLP trials (temperature 1, true "
                                 "labels) at two or more σ" + apart(candidates, (SIGMA,)))


def claim6(rows, epoch0):
    if epoch0 is None:
        return not_testable("needs the metric history (epoch 0)")
    sin = mlp_baseline(rows, activation="sin")
    found = []
    def has_large(members):
        return any(r[SIGMA] >= UNCORRELATED_FROM_SIGMA for r in members)

    for group in like_groups([r for r in sin if r["dataset"] in IMAGE_32X32X3], (SIGMA,),
                             has_large):
        large = [r for r in group.members if r[SIGMA] >= UNCORRELATED_FROM_SIGMA]
        rep = by_sigma(at_init(group.members, epoch0), contract.ALIGN_REP)
        checked = [(s, summary) for s, summary in rep if s >= UNCORRELATED_FROM_SIGMA]
        evidence = (f"{contract.ALIGN_REP} at epoch 0: {series(rep, num)} (needs |value| <= "
                    f"{UNCORRELATED} for σ >= {UNCORRELATED_FROM_SIGMA:g})")
        problems = [] if len(checked) == len(sigmas(large)) else [
            f"{contract.ALIGN_REP} not logged at epoch 0 at every σ >= {UNCORRELATED_FROM_SIGMA:g}"]
        ok = all(abs(summary.mean) <= UNCORRELATED for _, summary in checked)
        found.append(judge(group.scope, problems, ok, evidence))
    if found:
        return found
    others = sorted({r["dataset"] for r in sin} - set(IMAGE_32X32X3))
    reason = (f"needs sin MLP trials on 32x32x3 images ({', '.join(IMAGE_32X32X3)}) at σ >= "
              f"{UNCORRELATED_FROM_SIGMA:g}, with alignment at epoch 0")
    if others:
        reason += f"; {', '.join(others)} images are not 32x32x3 (the claim's ||x|| ≈ 55)"
    return not_testable(reason)
