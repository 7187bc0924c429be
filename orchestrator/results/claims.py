"""The paper's claims (../shared/paper/NOTES.md, "Claims to reproduce"), checked on a sweep's
own numbers: each claim the sweep's trials can test gets PASS or FAIL with the numbers it
rests on; the others say why they are not testable here.

Input: the results tables of ``orchestrator.results.tables`` (``trials``; ``history`` for the claims
about initialization, epoch 0). Only finished and diverged trials count; seeds (and data
seeds) are replicates: a claim compares their means, and shows mean ± sample std (n).

The claims are qualitative; these are the thresholds that turn them into checks:

- "generalizes" / "well above chance": best test accuracy >= chance + ``WELL_ABOVE_CHANCE``;
- "at chance": final test accuracy <= chance + max(``CHANCE_MARGIN``, 3 standard errors of
  an accuracy at chance on the trial's test set); the final, not the best, accuracy, since
  the best of many evaluations at chance sits above chance by the noise;
- "train accuracy stays at 100%": final train accuracy >= ``MEMORIZED``;
- "falls" / "drops": the mean at the largest sigma is below the one at the smallest sigma
  (accuracy by at least ``MIN_DROP``), and for alignment Spearman's rho(sigma, value) over
  the trials <= -``MIN_RHO``;
- "correlates": Spearman's rho >= ``MIN_RHO``.

Claims 1, 2, 4, 5 and 6 are about the 2-layer MLP at temperature 1 on true labels: other
trials do not enter them. Claim 3 pools every trial, as the paper's Fig. 1b pools datasets
and sigmas. Within those, trials that differ in other varying keys (dataset, loss, lr, ...)
are checked group by group (``grouping.panel_keys``), one row per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa

from orchestrator.results import grouping, tables
from orchestrator.results.grouping import (Summary, alignment_correlation, by_sigma, chance,
                                           condition_groups, finite, group_rows, spearman,
                                           summarize)
from workers import contract
from workers.contract import STATUS_DIVERGED
from workers.datasets import FACTS

PASS, FAIL, NOT_TESTABLE = "PASS", "FAIL", "not testable here"

WELL_ABOVE_CHANCE = 0.10   # accuracy, absolute
CHANCE_MARGIN = 0.03       # accuracy, absolute: the least margin of "at chance"
CHANCE_STANDARD_ERRORS = 3.0
MEMORIZED = 0.99           # train accuracy
MIN_DROP = 0.02            # accuracy, absolute
SATURATED = 0.03           # accuracy change between the two largest sigmas
MIN_RHO = 0.5              # |Spearman's rho|
SAME_ALIGNMENT = 0.02      # spread of an alignment that "is the same for every sigma"
LOGIT_ALIGNMENT_TINY = 0.9        # align/grad_logits at init "about 1" at tiny scale
LOGIT_ALIGNMENT_SATURATED = 0.75  # ... and "toward 0.5-0.6" at large scale: at most this
UNCORRELATED = 0.05        # |align/rep| at init of "nearly uncorrelated" features
UNCORRELATED_FROM_SIGMA = 0.1
LARGE_SIGMA = 1.0          # claim 8: "large sigma"
PAPER_LR = 0.01

# Claim 6's numbers (||x|| about 55) hold for 32x32x3 images: d = 3072.
IMAGE_32X32X3 = tuple(name for name, facts in FACTS.items() if facts.image_shape == (32, 32, 3))

STATEMENTS = {
    "1": "sin: small sigma generalizes; at large sigma train accuracy stays 100% and test "
         "accuracy falls to chance",
    "2": "sin: gradient and representation alignment fall as sigma grows",
    "3": "best test accuracy correlates with gradient alignment across datasets and sigmas",
    "4a": "ReLU + cross-entropy: test accuracy drops as sigma grows, then saturates, well "
          "above chance",
    "4b": "ReLU + cross-entropy: the drop is milder than for sin",
    "4c": "ReLU + hinge / squared loss: test accuracy drops as sigma grows",
    "5": "ReLU + cross-entropy at init: representation alignment is the same for every sigma; "
         "logit-gradient alignment falls from about 1 toward 0.5-0.6",
    "6": "sin: for sigma >= 0.1 the features of two images are nearly uncorrelated at init "
         "(32x32x3 images, ||x|| about 55)",
    "7a": "ConvNet: higher test accuracy and representation alignment than the MLP at "
          "identical hyperparameters (true labels)",
    "7b": "shuffled labels: test accuracy at chance and lower representation alignment",
    "8": "ReLU + squared loss at large sigma can blow up at lr 0.01: the trial is recorded as "
         "diverged",
}


@dataclass(frozen=True)
class ClaimCheck:
    """One row of the claims table."""

    claim: str
    """The claim's number in NOTES.md, with a letter for its parts (4a, 4b, ...)."""
    statement: str
    scope: str
    """The trials it was checked on (``dataset=cifar10 · loss=hinge``); empty if none."""
    evidence: str
    """The numbers the verdict rests on, or why the claim is not testable here."""
    verdict: str
    """PASS, FAIL or "not testable here"."""


def check_claims(trials: pa.Table, history: pa.Table | None = None) -> list[ClaimCheck]:
    """Every claim, in NOTES.md order: one row per group of trials it was checked on, or one
    "not testable here" row saying what the sweep lacks."""
    rows = grouping.result_rows(trials)
    epoch0 = _epoch0(history, {row[tables.TRIAL_ID] for row in rows})
    checks: list[ClaimCheck] = []
    for claim, check in (("1", _claim1), ("2", _claim2), ("3", _claim3), ("4a", _claim4a),
                         ("4b", _claim4b), ("4c", _claim4c), ("5", _claim5), ("6", _claim6),
                         ("7a", _claim7a), ("7b", _claim7b), ("8", _claim8)):
        found = check(rows, epoch0)
        checks += [ClaimCheck(claim, STATEMENTS[claim], scope, evidence, verdict)
                   for scope, evidence, verdict in found]
    return checks


def claims_table(checks: Sequence[ClaimCheck]) -> pa.Table:
    """The checks as a table (claim, statement, scope, evidence, verdict: strings)."""
    names = ("claim", "statement", "scope", "evidence", "verdict")
    return pa.table({name: pa.array([getattr(c, name) for c in checks], pa.string())
                     for name in names})


# --- shared definitions ---------------------------------------------------------------------

def at_chance_bound(row: Mapping[str, Any]) -> float:
    """The highest final test accuracy that still counts as chance for ``row``'s test set."""
    p = chance(row["dataset"])
    n = row.get("test_size") or FACTS[row["dataset"]].test_size
    return p + max(CHANCE_MARGIN, CHANCE_STANDARD_ERRORS * math.sqrt(p * (1 - p) / n))


def baseline_rows(rows: Sequence[Mapping[str, Any]], **where: Any) -> list[Mapping[str, Any]]:
    """The MLP at temperature 1 on true labels (what claims 1-6 are about), with sigma set,
    and matching ``where``."""
    return [r for r in rows if r.get("model") == "mlp" and r.get("temperature") == 1.0
            and r.get("shuffle_labels") is False and r.get(grouping.SIGMA) is not None
            and all(r.get(k) == v for k, v in where.items())]


def sigma_groups(rows: Sequence[Mapping[str, Any]]
                 ) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """``rows`` split by the keys besides sigma and seed that vary among them; each group
    labelled with its dataset and those keys."""
    keys = grouping.panel_keys(rows)
    if "dataset" not in keys:
        keys = ["dataset"] + keys
    return [(grouping.group_label(keys, values), members)
            for values, members in group_rows(rows, keys).items()]


def _epoch0(history: pa.Table | None, trial_ids: set[str]) -> dict[str, dict[str, Any]] | None:
    """trial_id -> its history row at epoch 0, or None when no history was read."""
    if history is None:
        return None
    return {row[tables.TRIAL_ID]: row for row in history.to_pylist()
            if row[contract.EPOCH] == 0 and row[tables.TRIAL_ID] in trial_ids}


def _at_init(members, epoch0: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials of ``members`` with their metrics at epoch 0 instead of their last ones."""
    return [{**r, **epoch0[r[tables.TRIAL_ID]]} for r in members if r[tables.TRIAL_ID] in epoch0]


def _sigma(value: float) -> str:
    return f"σ={value:g}"


def _pct(summary: Summary | None) -> str:
    return "-" if summary is None else summary.text(percent=True)


def _num(summary: Summary | None) -> str:
    return "-" if summary is None else summary.text()


def _at(points: list[tuple[float, Summary]], sigma: float) -> Summary | None:
    return dict(points).get(sigma)


def _series(points: list[tuple[float, Summary]], text: Callable[[Summary], str]) -> str:
    return ", ".join(f"{_sigma(s)} {text(summary)}" for s, summary in points)


def _not_testable(reason: str) -> list[tuple[str, str, str]]:
    return [("", reason, NOT_TESTABLE)]


def _verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def _sigmas(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    return sorted({r[grouping.SIGMA] for r in rows if r.get(grouping.SIGMA) is not None})


# --- the claims -----------------------------------------------------------------------------
# Each takes the result rows and the epoch-0 history rows (trial_id -> row, None when no
# history was read) and returns [(scope, evidence, verdict)].

def _claim1(rows, epoch0):
    found = []
    for scope, members in sigma_groups(baseline_rows(rows, activation="sin")):
        sigmas = _sigmas(members)
        if len(sigmas) < 2:
            continue
        small, large = sigmas[0], sigmas[-1]
        best = by_sigma(members, contract.TEST_BEST_ACC)
        train = _at(by_sigma(members, contract.TRAIN_ACC), large)
        final = _at(by_sigma(members, contract.TEST_ACC), large)
        generalizing = _at(best, small)
        level = chance(members[0]["dataset"])
        bound = max(at_chance_bound(r) for r in members if r[grouping.SIGMA] == large)
        ok = (generalizing is not None and generalizing.mean >= level + WELL_ABOVE_CHANCE
              and train is not None and train.mean >= MEMORIZED
              and final is not None and final.mean <= bound)
        found.append((scope, f"best test: {_series(best, _pct)}; at {_sigma(large)}: train "
                      f"{_pct(train)}, final test {_pct(final)} (chance {level:.0%}, counts as "
                      f"chance up to {bound:.1%}; generalizing needs best test >= "
                      f"{level + WELL_ABOVE_CHANCE:.0%} at {_sigma(small)})", _verdict(ok)))
    return found or _not_testable("needs sin MLP trials (temperature 1, true labels) at two "
                                  "or more sigmas")


def _falls(members, metric: str) -> tuple[bool, str]:
    """Whether ``metric`` falls with sigma over ``members``, and the numbers."""
    points = by_sigma(members, metric)
    usable = [r for r in members if finite(r.get(metric))]
    rho = spearman([r[grouping.SIGMA] for r in usable], [r[metric] for r in usable])
    if len(points) < 2:
        return False, f"{metric}: not logged at two sigmas"
    ok = points[-1][1].mean < points[0][1].mean and (rho is None or rho[0] <= -MIN_RHO)
    rho_text = "ρ undefined" if rho is None else f"ρ(σ, value) = {rho[0]:+.2f}"
    return ok, f"{metric}: {_series(points, _num)} ({rho_text})"


def _claim2(rows, epoch0):
    found = []
    for scope, members in sigma_groups(baseline_rows(rows, activation="sin")):
        if len(_sigmas(members)) < 2:
            continue
        grad_ok, grad = _falls(members, contract.ALIGN_GRAD)
        rep_ok, rep = _falls(members, contract.ALIGN_REP)
        found.append((scope, f"{grad}; {rep}", _verdict(grad_ok and rep_ok)))
    return found or _not_testable("needs sin MLP trials (temperature 1, true labels) at two "
                                  "or more sigmas, with alignment logged")


def _claim3(rows, epoch0):
    overall, per_dataset = alignment_correlation(rows)
    if overall is None or len(_sigmas(rows)) < 2:
        return _not_testable("needs three or more trials with align/grad and best test "
                             "accuracy, at two or more sigmas, neither constant")
    rho, p, n = overall
    parts = [f"all trials: ρ = {rho:+.2f} (p = {p:.2g}, n = {n})"]
    for dataset, value in per_dataset.items():
        parts.append(f"{dataset}: " + ("ρ undefined" if value is None
                                       else f"ρ = {value[0]:+.2f} (n = {value[2]})"))
    scope = "datasets: " + ", ".join(per_dataset)
    return [(scope, "; ".join(parts) + f" (needs ρ >= {MIN_RHO})", _verdict(rho >= MIN_RHO))]


def _drop(members) -> tuple[list[tuple[float, Summary]], float | None]:
    """Best test accuracy by sigma, and its drop from the smallest to the largest sigma."""
    best = by_sigma(members, contract.TEST_BEST_ACC)
    if len(best) < 2:
        return best, None
    return best, best[0][1].mean - best[-1][1].mean


def _claim4a(rows, epoch0):
    found = []
    for scope, members in sigma_groups(baseline_rows(rows, activation="relu",
                                                     loss="cross_entropy")):
        best, drop = _drop(members)
        if drop is None:
            continue
        level = chance(members[0]["dataset"])
        above = best[-1][1].mean >= level + WELL_ABOVE_CHANCE
        ok = drop >= MIN_DROP and above
        text = (f"best test: {_series(best, _pct)}; drop {drop * 100:.1f} points (needs >= "
                f"{MIN_DROP * 100:g}); at {_sigma(best[-1][0])} {best[-1][1].mean:.1%} vs chance "
                f"{level:.0%} (needs >= {level + WELL_ABOVE_CHANCE:.0%})")
        if len(best) >= 3:
            change = abs(best[-1][1].mean - best[-2][1].mean)
            ok = ok and change <= SATURATED
            text += (f"; saturation: {change * 100:.1f} points between the two largest sigmas "
                     f"(needs <= {SATURATED * 100:g})")
        else:
            text += "; saturation not checked (needs three sigmas)"
        found.append((scope, text, _verdict(ok)))
    return found or _not_testable("needs ReLU + cross-entropy MLP trials (temperature 1, true "
                                  "labels) at two or more sigmas")


def _claim4b(rows, epoch0):
    found = []
    relu = baseline_rows(rows, activation="relu", loss="cross_entropy")
    sin = baseline_rows(rows, activation="sin", loss="cross_entropy")
    if not relu or not sin:
        return _not_testable("needs ReLU and sin MLP trials with cross-entropy (temperature 1, "
                             "true labels) at two or more sigmas")
    # Pair the groups that differ only in the activation.
    keys = [k for k in grouping.panel_keys(relu + sin) if k != "activation"]
    keys = keys if "dataset" in keys else ["dataset"] + keys
    sin_groups = group_rows(sin, keys)
    for values, members in group_rows(relu, keys).items():
        partner = sin_groups.get(values)
        if partner is None:
            continue
        common = sorted(set(_sigmas(members)) & set(_sigmas(partner)))
        if len(common) < 2:
            continue
        _, relu_drop = _drop([r for r in members if r[grouping.SIGMA] in common])
        _, sin_drop = _drop([r for r in partner if r[grouping.SIGMA] in common])
        found.append((grouping.group_label(keys, values),
                      f"best-test drop from {_sigma(common[0])} to {_sigma(common[-1])}: ReLU "
                      f"{relu_drop * 100:.1f} points, sin {sin_drop * 100:.1f} points",
                      _verdict(relu_drop < sin_drop)))
    return found or _not_testable("needs ReLU and sin MLP trials with cross-entropy at two or "
                                  "more common sigmas, otherwise identical")


def _claim4c(rows, epoch0):
    found = []
    for loss in ("hinge", "squared"):
        for scope, members in sigma_groups(baseline_rows(rows, activation="relu", loss=loss)):
            best, drop = _drop(members)
            if drop is None:
                continue
            scope = scope if "loss=" in scope else f"{scope} · loss={loss}"
            found.append((scope, f"best test: {_series(best, _pct)}; drop {drop * 100:.1f} "
                          f"points (needs >= {MIN_DROP * 100:g})", _verdict(drop >= MIN_DROP)))
    return found or _not_testable("needs ReLU MLP trials with hinge or squared loss "
                                  "(temperature 1, true labels) at two or more sigmas")


def _claim5(rows, epoch0):
    if epoch0 is None:
        return _not_testable("needs the metric history (epoch 0)")
    found = []
    for scope, members in sigma_groups(baseline_rows(rows, activation="relu",
                                                     loss="cross_entropy")):
        at_init = _at_init(members, epoch0)
        rep = by_sigma(at_init, contract.ALIGN_REP)
        logits = by_sigma(at_init, contract.ALIGN_GRAD_LOGITS)
        if len(rep) < 2 or len(logits) < 2:
            continue
        rep_range = max(s.mean for _, s in rep) - min(s.mean for _, s in rep)
        ok = (rep_range <= SAME_ALIGNMENT and logits[0][1].mean >= LOGIT_ALIGNMENT_TINY
              and logits[-1][1].mean <= LOGIT_ALIGNMENT_SATURATED)
        found.append((scope, f"at epoch 0: {contract.ALIGN_REP} {_series(rep, _num)} (range "
                      f"{rep_range:.3f}, needs <= {SAME_ALIGNMENT}); {contract.ALIGN_GRAD_LOGITS} "
                      f"{_series(logits, _num)} (needs >= {LOGIT_ALIGNMENT_TINY} at the smallest "
                      f"sigma, <= {LOGIT_ALIGNMENT_SATURATED} at the largest)", _verdict(ok)))
    return found or _not_testable("needs ReLU + cross-entropy MLP trials (temperature 1, true "
                                  "labels) at two or more sigmas, with alignment at epoch 0")


def _claim6(rows, epoch0):
    if epoch0 is None:
        return _not_testable("needs the metric history (epoch 0)")
    sin = baseline_rows(rows, activation="sin")
    others = sorted({r["dataset"] for r in sin} - set(IMAGE_32X32X3))
    found = []
    for scope, members in sigma_groups([r for r in sin if r["dataset"] in IMAGE_32X32X3]):
        at_init = _at_init(members, epoch0)
        rep = by_sigma(at_init, contract.ALIGN_REP)
        large = [(s, summary) for s, summary in rep if s >= UNCORRELATED_FROM_SIGMA]
        if not large:
            continue
        ok = all(abs(summary.mean) <= UNCORRELATED for _, summary in large)
        found.append((scope, f"{contract.ALIGN_REP} at epoch 0: {_series(rep, _num)} (needs "
                      f"|value| <= {UNCORRELATED} for σ >= {UNCORRELATED_FROM_SIGMA:g})",
                      _verdict(ok)))
    if found:
        return found
    reason = (f"needs sin MLP trials on 32x32x3 images ({', '.join(IMAGE_32X32X3)}) at σ >= "
              f"{UNCORRELATED_FROM_SIGMA:g}, with alignment at epoch 0")
    if others:
        reason += f"; {', '.join(others)} images are not 32x32x3 (the claim's ||x|| ≈ 55)"
    return _not_testable(reason)


def _pairs(rows, key: str, a: Any, b: Any):
    """Groups of trials identical but for ``key`` (a vs b) and the replicate keys:
    [(scope, trials with a, trials with b)]."""
    found = []
    for label, members in condition_groups(rows, [key]):
        with_a = [r for r in members if r.get(key) == a]
        with_b = [r for r in members if r.get(key) == b]
        if with_a and with_b:
            found.append((label, with_a, with_b))
    return found


def _claim7a(rows, epoch0):
    found = []
    true_labels = [r for r in rows if r.get("shuffle_labels") is False]
    for scope, mlp, convnet in _pairs(true_labels, "model", "mlp", "convnet"):
        accuracy = [summarize(r.get(contract.TEST_BEST_ACC) for r in g) for g in (mlp, convnet)]
        alignment = [summarize(r.get(contract.ALIGN_REP) for r in g) for g in (mlp, convnet)]
        ok = (None not in accuracy and None not in alignment
              and accuracy[1].mean > accuracy[0].mean and alignment[1].mean > alignment[0].mean)
        found.append((scope, f"best test: MLP {_pct(accuracy[0])}, ConvNet {_pct(accuracy[1])}; "
                      f"{contract.ALIGN_REP}: MLP {_num(alignment[0])}, ConvNet "
                      f"{_num(alignment[1])}", _verdict(ok)))
    return found or _not_testable("needs MLP and ConvNet trials on true labels with otherwise "
                                  "identical config")


def _claim7b(rows, epoch0):
    found = []
    for scope, true_labels, shuffled in _pairs(rows, "shuffle_labels", False, True):
        final = summarize(r.get(contract.TEST_ACC) for r in shuffled)
        alignment = [summarize(r.get(contract.ALIGN_REP) for r in g) for g in (true_labels, shuffled)]
        bound = max(at_chance_bound(r) for r in shuffled)
        ok = (final is not None and final.mean <= bound and None not in alignment
              and alignment[1].mean < alignment[0].mean)
        found.append((scope, f"shuffled labels: final test {_pct(final)} (chance "
                      f"{chance(shuffled[0]['dataset']):.0%}, counts as chance up to "
                      f"{bound:.1%}); {contract.ALIGN_REP}: true labels {_num(alignment[0])}, "
                      f"shuffled {_num(alignment[1])}", _verdict(ok)))
    return found or _not_testable("needs trials with true and shuffled labels, otherwise "
                                  "identical")


def _claim8(rows, epoch0):
    squared = [r for r in rows if r.get("activation") == "relu" and r.get("loss") == "squared"
               and r.get("lr") == PAPER_LR and (r.get(grouping.SIGMA) or 0) >= LARGE_SIGMA]
    if not squared:
        return _not_testable(f"needs ReLU + squared-loss trials at lr {PAPER_LR:g} with σ >= "
                             f"{LARGE_SIGMA:g}")
    found = []
    for scope, members in sigma_groups(squared):
        counts = []
        for (sigma,), at_sigma in sorted(group_rows(members, [grouping.SIGMA]).items()):
            diverged = sum(r[tables.STATUS] == STATUS_DIVERGED for r in at_sigma)
            counts.append(f"{_sigma(sigma)}: {diverged}/{len(at_sigma)} diverged")
        any_diverged = any(r[tables.STATUS] == STATUS_DIVERGED for r in members)
        found.append((scope, "; ".join(counts), _verdict(any_diverged)))
    return found
