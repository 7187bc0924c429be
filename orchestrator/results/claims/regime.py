"""What the claim checks share: like-with-like groups, the regime checks that turn a verdict
into "inconclusive", the chance bound, and how numbers are written.

The rules these implement are written in ``rules.py``; the thresholds are read from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from orchestrator.results import grouping, tables
from orchestrator.results.claims.rules import (CHANCE_MARGIN, CHANCE_STANDARD_ERRORS, FAIL,
                                               INCONCLUSIVE, LARGE_SCALE, MEMORIZED,
                                               NOT_TESTABLE, PAPER_SIGMAS, PASS, SMALL_SCALE)
from orchestrator.results.grouping import SIGMA, Summary, chance, group_rows, summarize
from orchestrator.text import format_value
from workers import contract
from workers.config import NON_RESULT_KEYS
from workers.contract import STATUS_DIVERGED
from workers.datasets import FACTS

Row = Mapping[str, Any]
# Keys that say where or how a trial ran, never what it computed: not part of a setup.
IGNORED_KEYS = (*NON_RESULT_KEYS, "device")
# Where a dataset's images come from goes with the dataset: claim 3 varies both together.
DATASET_KEYS = ("dataset", "data_file")


@dataclass(frozen=True)
class Finding:
    """One row's outcome: its verdict, the numbers it rests on, and (inconclusive, not
    testable) what is missing and what to change."""

    scope: str
    verdict: str
    evidence: str = ""
    missing: str = ""


@dataclass(frozen=True)
class Group:
    """Trials equal in every result key but the ones a claim varies and the replicate keys."""

    scope: str
    """What tells this group from the claim's other groups (``dataset=cifar10 · loss=hinge``)."""
    members: list[Row]


# --- verdicts ---------------------------------------------------------------------------------

def decided(scope: str, ok: bool, evidence: str) -> Finding:
    return Finding(scope, PASS if ok else FAIL, evidence)


def inconclusive(scope: str, problems: Sequence[str], evidence: str = "") -> Finding:
    return Finding(scope, INCONCLUSIVE, evidence, "; ".join(problems))


def not_testable(reason: str) -> list[Finding]:
    return [Finding("", NOT_TESTABLE, "", reason)]


def judge(scope: str, problems: Sequence[str], ok: bool, evidence: str) -> Finding:
    """PASS / FAIL on ``ok`` when the regime holds (no ``problems``), else inconclusive."""
    return inconclusive(scope, problems, evidence) if problems else decided(scope, ok, evidence)


# --- like with like -----------------------------------------------------------------------------

def setup_keys(varied: Sequence[str]) -> list[str]:
    """The trial keys that must be equal among compared trials when ``varied`` may differ."""
    free = {*varied, *grouping.REPLICATE_KEYS, *IGNORED_KEYS}
    if "dataset" in varied:
        free.update(DATASET_KEYS)
    return [key for key in grouping.CONFIG_KEYS if key not in free]


def like_groups(rows: Sequence[Row], varied: Sequence[str],
                qualifies: Callable[[list[Row]], bool] = lambda members: True) -> list[Group]:
    """``rows`` grouped so that trials in a group differ only in ``varied`` and the replicate
    keys, keeping the groups that ``qualifies`` (hold what the claim compares); each labelled
    with the dataset and the keys that tell the kept groups apart."""
    keys = setup_keys(varied)
    kept = [(values, members) for values, members in group_rows(rows, keys).items()
            if qualifies(members)]
    shown = [key for key in grouping.varying_keys([r for _, members in kept for r in members])
             if key in keys]
    if "dataset" not in shown and "dataset" in keys:
        shown = ["dataset"] + shown
    groups = []
    for values, members in kept:
        label = grouping.group_label(shown, [values[keys.index(k)] for k in shown])
        if "dataset" not in keys:    # the datasets a group pools (claim 3), in front
            datasets = ", ".join(dict.fromkeys(r["dataset"] for r in members))
            label = f"dataset={datasets}" + ("" if label == "all trials" else f" · {label}")
        groups.append(Group(label, members))
    return groups


def apart(rows: Sequence[Row], varied: Sequence[str]) -> str:
    """Why trials of ``rows`` were not compared: ``"; trials differing also in epochs, hidden
    are not compared"``, or "" when they differ in nothing else."""
    keys = setup_keys(varied)
    other = [key for key in grouping.varying_keys(rows) if key in keys]
    return f"; trials differing also in {', '.join(other)} are not compared" if other else ""


def split_diverged(members: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """(trials that trained to their end, diverged trials): a diverged trial's last numbers
    are not a trained network's; claim 8 is about them."""
    kept = [r for r in members if r[tables.STATUS] != STATUS_DIVERGED]
    return kept, [r for r in members if r[tables.STATUS] == STATUS_DIVERGED]


def sigmas(rows: Sequence[Row]) -> list[float]:
    return sorted({r[SIGMA] for r in rows if r.get(SIGMA) is not None})


# --- the regimes ---------------------------------------------------------------------------------

def input_norm(dataset: str) -> float:
    """||x|| of a per-image standardized image of ``dataset``: sqrt(H * W * C)."""
    return math.sqrt(math.prod(FACTS[dataset].image_shape))


def scale(row: Row) -> float:
    """The pre-activation scale sigma * ||x|| of ``row`` (a trial with sigma set)."""
    return row[SIGMA] * input_norm(row["dataset"])


def sigma_range(rows: Sequence[Row], lost: Sequence[Row] = ()) -> list[str]:
    """Problems when the sigmas of ``rows`` miss either end of the claims' range (``rules``:
    SMALL_SCALE, LARGE_SCALE); ``lost``: diverged trials, named when they are why."""
    problems = []
    if not rows:
        return problems
    norm = max(input_norm(r["dataset"]) for r in rows)
    smallest, largest = min(rows, key=scale), max(rows, key=scale)
    if scale(smallest) > SMALL_SCALE:
        bound = SMALL_SCALE / norm
        problems.append(f"smallest σ {smallest[SIGMA]:g} has σ·||x|| = {scale(smallest):.2g} > "
                        f"{SMALL_SCALE:g} (||x|| = {norm:.0f} here): add σ <= {bound:.2g}, e.g. "
                        f"σ: {_grid_below(bound)}")
    if scale(largest) < LARGE_SCALE:
        bound = LARGE_SCALE / min(input_norm(r["dataset"]) for r in rows)
        text = (f"largest σ {largest[SIGMA]:g} has σ·||x|| = {scale(largest):.2g} < "
                f"{LARGE_SCALE:g}: add σ >= {bound:.2g}, e.g. σ: {_grid_above(bound)}")
        beyond = sorted({r[SIGMA] for r in lost if r[SIGMA] > largest[SIGMA]})
        if beyond:
            text += (f" ({', '.join(sigma_text(s) for s in beyond)} diverged at lr "
                     f"{format_value(lost[0].get('lr'))}: claim 8; a smaller lr for the whole "
                     f"group may train them)")
        problems.append(text)
    return problems


def _grid_below(bound: float) -> str:
    return f"{max((s for s in PAPER_SIGMAS if s <= bound), default=bound):g}"


def _grid_above(bound: float) -> str:
    return f"{min((s for s in PAPER_SIGMAS if s >= bound), default=bound):g}"


def untrained(conditions: Sequence[tuple[str, Sequence[Row]]]) -> list[str]:
    """Problems for each (name, trials) whose mean final train accuracy is below MEMORIZED:
    ``ConvNet train accuracy 44.8% < 99% after 20 epochs: train longer, e.g. epochs: 200``."""
    problems = []
    for name, members in conditions:
        train = summarize(r.get(contract.TRAIN_ACC) for r in members)
        if train is None:
            problems.append(f"{name}: {contract.TRAIN_ACC} not logged")
        elif train.mean < MEMORIZED:
            epochs = members[0].get("epochs") or members[0].get(tables.EPOCHS_DONE)
            text = f"{name} train accuracy {train.mean:.1%} < {MEMORIZED:.0%}"
            if epochs:
                guess = suggest_epochs(int(epochs), train.mean, chance(members[0]["dataset"]))
                text += f" after {epochs} epochs: train longer, e.g. epochs: {guess}"
            else:
                text += ": train longer"
            problems.append(text)
    return problems


def suggest_epochs(epochs: int, train_acc: float, chance_level: float) -> int:
    """A rough number of epochs to reach MEMORIZED: train accuracy extrapolated linearly from
    chance (epoch 0) through ``train_acc`` at ``epochs``, doubled since it rises ever slower
    near the end; at least twice ``epochs``; rounded up to 1, 2, 3 or 5 times a power of ten."""
    gained = max(train_acc - chance_level, 0.01)
    guess = max(2 * epochs, 2 * epochs * (MEMORIZED - chance_level) / gained)
    power = 10 ** math.floor(math.log10(guess))
    return int(next(step * power for step in (1, 2, 3, 5, 10) if step * power >= guess))


def trials_by_sigma(members: Sequence[Row], prefix: str = "") -> list[tuple[str, list[Row]]]:
    """(``σ=0.01``, its trials) for each sigma, ascending, the dataset named too when there are
    several (``svhn σ=10``): the conditions of a sigma sweep, for ``untrained``."""
    several = len({r["dataset"] for r in members}) > 1
    found = []
    for (dataset, sigma), at in sorted(group_rows(members, ["dataset", SIGMA]).items(),
                                       key=lambda item: (item[0][1], item[0][0])):
        found.append((prefix + (f"{dataset} " if several else "") + sigma_text(sigma), at))
    return found


# --- shared definitions --------------------------------------------------------------------------

def at_chance_bound(row: Row) -> float:
    """The highest final test accuracy that still counts as chance for ``row``'s test set."""
    p = chance(row["dataset"])
    n = row.get("test_size") or FACTS[row["dataset"]].test_size
    return p + max(CHANCE_MARGIN, CHANCE_STANDARD_ERRORS * math.sqrt(p * (1 - p) / n))


def mlp_baseline(rows: Sequence[Row], **where: Any) -> list[Row]:
    """The 2-layer MLP at temperature 1 on true labels with sigma set (what claims 1-6 are
    about), matching ``where``."""
    return [r for r in rows if r.get("model") == "mlp" and r.get("temperature") == 1.0
            and r.get("shuffle_labels") is False and r.get(SIGMA) is not None
            and all(r.get(k) == v for k, v in where.items())]


def mean_of(members: Sequence[Row], metric: str) -> Summary | None:
    return summarize(r.get(metric) for r in members)


# --- how numbers are written ------------------------------------------------------------------

def sigma_text(value: float) -> str:
    return f"σ={value:g}"


def pct(summary: Summary | None) -> str:
    """An accuracy's seed mean ± std (n) as percent; ``-`` when missing."""
    return "-" if summary is None else summary.text(percent=True)


def num(summary: Summary | None) -> str:
    """Any other metric's seed mean ± std (n); ``-`` when missing."""
    return "-" if summary is None else summary.text()


def series(points: Sequence[tuple[float, Summary]], text: Callable[[Summary], str]) -> str:
    """``σ=0.01 41.0% ± 1.4 (n=2), σ=10 12.5%``."""
    return ", ".join(f"{sigma_text(s)} {text(summary)}" for s, summary in points)


def with_finals(evidence: str, members: Sequence[Row], metrics: Sequence[str]) -> str:
    """``evidence``, and how many of ``members`` had no final value of ``metrics`` (a value
    only from before the trial's last epoch): ``(left out of align/grad: 1 trial(s) without a
    value at their last epoch: hinge-sigma1 (align/grad: epoch 4 of 20))``."""
    parts = []
    for metric in metrics:
        lost = grouping.without_final(members, metric)
        if lost:
            shown = ", ".join(grouping.stale_text(r, metric) for r in lost[:3])
            parts.append(f"left out of {metric}: {len(lost)} trial(s) without a value at their "
                         f"last epoch: {shown}" + (" ..." if len(lost) > 3 else ""))
    return " ".join([evidence, *(f"({part})" for part in parts)]).strip()


def with_evidence(evidence: str, diverged: Sequence[Row]) -> str:
    """``evidence``, and how many diverged trials were left out of it."""
    if not diverged:
        return evidence
    at = ", ".join(sigma_text(s) for s in sigmas(diverged)) or "glorot init"
    return f"{evidence} (left out: {len(diverged)} diverged trial(s) at {at})".lstrip()
