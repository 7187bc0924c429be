"""Groupings of a sweep's trials table that both the claims and the figures use.

Which config keys vary, the panels (trials differing only in sigma and seed), seed means,
and pairs of conditions at otherwise equal config: computed here once.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from orchestrator.expand import value_key
from orchestrator.expand import varying_keys as _varying
from orchestrator.results.tables import (EPOCHS_DONE, IN_SPEC, NAME, STALE_METRICS, STATUS,
                                         step_column)
from orchestrator.text import format_value
from workers.config import TrialConfig
from workers import contract
from workers.contract import RESULT_STATUSES
from workers.datasets import FACTS

CONFIG_KEYS = TrialConfig.keys()
# Keys whose values are repetitions of one experiment: aggregated, never plotted apart.
REPLICATE_KEYS = ("seed", "data_seed")
SIGMA = "sigma"


@dataclass(frozen=True)
class Summary:
    """A metric over the replicates (seeds) of one configuration."""

    mean: float
    spread: float
    """Sample standard deviation over the replicates; 0 for a single one."""
    n: int

    def text(self, percent: bool = False) -> str:
        """``0.943 ± 0.012 (n=2)``, or ``94.3% ± 1.2 (n=2)`` with ``percent``."""
        if percent:
            core = f"{self.mean:.1%}"
            return core + (f" ± {self.spread * 100:.1f} (n={self.n})" if self.n > 1 else "")
        return f"{self.mean:.3f}" + (f" ± {self.spread:.3f} (n={self.n})" if self.n > 1 else "")


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Mean and spread of the finite values; None when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return Summary(statistics.fmean(finite), spread, len(finite))


def result_rows(trials: pa.Table) -> list[dict[str, Any]]:
    """The trials whose numbers are results (finished or diverged), as dicts; never a run of
    a stale trial id (``in_spec`` false: a table read with ``include_stale``)."""
    return [row for row in trials.to_pylist()
            if row[STATUS] in RESULT_STATUSES and row.get(IN_SPEC) is not False]


# --- finals: values at the trial's last epoch --------------------------------------------------

FINALS_RULE = "finals are values at the trial's last epoch"


def stale(row: Mapping[str, Any]) -> list[str]:
    """The metrics of ``row`` whose value is from before the trial's last epoch
    (``tables.STALE_METRICS``)."""
    return list(row.get(STALE_METRICS) or [])


def finals(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with every stale metric (``stale``) set to None: what the claims and figures
    read, so that a value from an earlier epoch never stands in for a final one."""
    return [{**row, **{metric: None for metric in stale(row)}} for row in rows]


def without_final(rows: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """The rows whose ``metric`` was logged, but not at the trial's last epoch."""
    return [row for row in rows if metric in stale(row)]


def stale_text(row: Mapping[str, Any], metric: str) -> str:
    """``hinge-sigma1 (align/grad: epoch 4 of 20)``."""
    return (f"{row.get(NAME) or row.get('trial_id')} ({metric}: epoch "
            f"{format_value(row.get(step_column(metric)))} of "
            f"{format_value(row.get(EPOCHS_DONE))})")


def finals_note(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """The rule, and what it left out of ``rows`` (of ``metrics``; every metric by default):
    ``finals are values at the trial's last epoch; 1 trial(s) without one were left out:
    hinge-sigma1 (align/grad: epoch 4 of 20)``."""
    left = [(row, metric) for row in rows for metric in stale(row)
            if metrics is None or metric in metrics]
    trials = {id(row) for row, _ in left}
    if not left:
        return f"{FINALS_RULE}; every trial has them"
    shown = ", ".join(stale_text(row, metric) for row, metric in left[:5])
    return (f"{FINALS_RULE}; {len(trials)} trial(s) without one were left out: {shown}"
            + (" ..." if len(left) > 5 else ""))


def varying_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config keys taking more than one value across ``rows``, in TrialConfig order."""
    return _varying(rows, CONFIG_KEYS)


def sigma_linked_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Varying keys (besides sigma and the replicate keys) whose value sigma determines, as
    linked grid keys make them (``"sigma,temperature"``): they label sigma's values, they
    do not split the sweep into panels."""
    if len({row.get(SIGMA) for row in rows}) < 2:
        return []
    linked = []
    for key in varying_keys(rows):
        if key == SIGMA or key in REPLICATE_KEYS:
            continue
        seen: dict[Any, Any] = {}
        if all(seen.setdefault(row.get(SIGMA), value_key(row.get(key))) == value_key(row.get(key))
               for row in rows):
            linked.append(key)
    return linked


def panel_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The varying keys that split a sweep into groups of trials differing only in sigma
    (and seed): dataset, activation, loss, model, ..."""
    skip = {SIGMA, *REPLICATE_KEYS, *sigma_linked_keys(rows)}
    return [key for key in varying_keys(rows) if key not in skip]


def group_rows(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
               ) -> dict[tuple, list[Mapping[str, Any]]]:
    """``rows`` by their values of ``keys``, groups in order of first appearance."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(key) for key in keys), []).append(row)
    return groups


def group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``dataset=cifar10 · activation=sin``; ``all trials`` for no keys."""
    return " · ".join(f"{k}={format_value(v)}" for k, v in zip(keys, values)) or "all trials"


def by_sigma(rows: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[float, Summary]]:
    """(sigma, the metric's Summary over the replicates at that sigma), sigma ascending;
    trials with sigma null (glorot init) and sigmas without a value are left out."""
    found = []
    for (sigma,), members in group_rows([r for r in rows if r.get(SIGMA) is not None],
                                        [SIGMA]).items():
        summary = summarize(row.get(metric) for row in members)
        if summary is not None:
            found.append((sigma, summary))
    return sorted(found, key=lambda item: item[0])


def condition_groups(rows: Sequence[Mapping[str, Any]], condition_keys: Sequence[str]
                     ) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """``rows`` grouped by every config key except ``condition_keys`` and the replicate keys:
    groups of trials identical but for the conditions compared (model, labels, ...). Each
    group comes with its label (the dataset, and the other keys that tell groups apart).
    """
    keys = [k for k in CONFIG_KEYS if k not in condition_keys and k not in REPLICATE_KEYS]
    shown = [k for k in varying_keys(rows) if k in keys]
    shown = shown if "dataset" in shown else ["dataset"] + shown
    return [(group_label(shown, [values[keys.index(k)] for k in shown]), members)
            for values, members in group_rows(rows, keys).items()]


def chance(dataset: str) -> float:
    """The accuracy of guessing: 1 / the number of classes."""
    return 1.0 / FACTS[dataset].num_classes


def spearman(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """(Spearman's rho, two-sided p) over the pairs where both are finite; None when fewer
    than 3 pairs remain or either side is constant (rho undefined)."""
    pairs = [(x, y) for x, y in zip(xs, ys) if finite(x) and finite(y)]
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return None
    from scipy.stats import spearmanr

    result = spearmanr([x for x, _ in pairs], [y for _, y in pairs])
    return float(result.statistic), float(result.pvalue)


def alignment_correlation(rows: Sequence[Mapping[str, Any]]
                          ) -> tuple[tuple[float, float, int] | None,
                                     dict[str, tuple[float, float, int] | None]]:
    """Spearman's rho of best test accuracy against final gradient alignment: over all
    ``rows`` and per dataset, each (rho, p, number of trials) or None where undefined.
    Claim 3 and figure 4 both use it."""
    def rho(members: Sequence[Mapping[str, Any]]) -> tuple[float, float, int] | None:
        usable = [r for r in members if finite(r.get(contract.ALIGN_GRAD))
                  and finite(r.get(contract.TEST_BEST_ACC))]
        found = spearman([r[contract.ALIGN_GRAD] for r in usable],
                         [r[contract.TEST_BEST_ACC] for r in usable])
        return None if found is None else (found[0], found[1], len(usable))

    per_dataset = {dataset: rho(members)
                   for (dataset,), members in group_rows(rows, ["dataset"]).items()}
    return rho(rows), per_dataset


def finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (not None, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
