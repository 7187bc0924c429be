"""The claims checks on hand-made results tables: fast, no servers. Each claim passes on
numbers that show it, fails on numbers that contradict it, and is "not testable here" when
the sweep lacks the variation it needs."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest

from orchestrator.results import claims, grouping
from orchestrator.results.claims import FAIL, NOT_TESTABLE, PASS, check_claims
from orchestrator.results.grouping import summarize
from workers import contract

_ids = itertools.count()


def _trial(**values) -> dict:
    """A finished trial's row of the trials table; the MLP at temperature 1 by default."""
    row = {"status": "finished", "trial_id": f"t{next(_ids)}", "dataset": "cifar10",
           "model": "mlp", "activation": "sin", "loss": "cross_entropy", "temperature": 1.0,
           "shuffle_labels": False, "sigma": 0.01, "seed": 0, "lr": 0.01, "test_size": 1000}
    row.update(values)
    return row


def _sin(sigma: float, seed: int = 0, *, train: float, best: float, final: float,
         grad: float, rep: float, **extra) -> dict:
    return _trial(sigma=sigma, seed=seed, **{
        contract.TRAIN_ACC: train, contract.TEST_BEST_ACC: best, contract.TEST_ACC: final,
        contract.ALIGN_GRAD: grad, contract.ALIGN_REP: rep}, **extra)


MEMORIZING_SIN = [
    _sin(0.01, 0, train=1.0, best=0.40, final=0.36, grad=0.05, rep=0.12),
    _sin(0.01, 1, train=1.0, best=0.42, final=0.37, grad=0.06, rep=0.13),
    _sin(1.0, 0, train=1.0, best=0.14, final=0.11, grad=0.01, rep=0.03),
    _sin(10.0, 0, train=1.0, best=0.12, final=0.10, grad=0.00, rep=0.01),
    _sin(10.0, 1, train=1.0, best=0.13, final=0.11, grad=0.00, rep=0.02),
]


def _verdicts(trials: list[dict], history: list[dict] | None = None) -> dict[str, list]:
    table = pa.Table.from_pylist(trials)
    checks = check_claims(table, None if history is None else pa.Table.from_pylist(history))
    found: dict[str, list] = {}
    for check in checks:
        found.setdefault(check.claim, []).append(check)
    assert list(found) == list(claims.STATEMENTS)    # every claim, in NOTES.md order
    return found


def _only(found: dict[str, list], claim: str):
    assert len(found[claim]) == 1, found[claim]
    return found[claim][0]


def test_sin_memorization_passes_claims_1_to_3_with_seed_means():
    found = _verdicts(MEMORIZING_SIN)
    one = _only(found, "1")
    assert one.verdict == PASS and one.scope == "dataset=cifar10"
    assert "σ=0.01 41.0% ± 1.4 (n=2)" in one.evidence          # mean ± std over seeds
    assert "σ=1 14.0%" in one.evidence and "σ=10 12.5% ± 0.7 (n=2)" in one.evidence
    assert _only(found, "2").verdict == PASS
    three = _only(found, "3")
    assert three.verdict == PASS and "n = 5" in three.evidence
    for claim in ("4a", "4b", "4c", "7a", "7b", "8"):
        assert _only(found, claim).verdict == NOT_TESTABLE, claim
    for claim in ("5", "6"):   # no history given
        assert "history" in _only(found, claim).evidence


def test_claim1_fails_when_large_sigma_still_generalizes_or_does_not_memorize():
    still_generalizing = [dict(r, **{contract.TEST_ACC: 0.30}) if r["sigma"] == 10.0 else r
                          for r in MEMORIZING_SIN]
    assert _only(_verdicts(still_generalizing), "1").verdict == FAIL
    not_memorizing = [dict(r, **{contract.TRAIN_ACC: 0.7}) if r["sigma"] == 10.0 else r
                      for r in MEMORIZING_SIN]
    assert _only(_verdicts(not_memorizing), "1").verdict == FAIL


def test_claim1_decides_on_the_seed_mean():
    # One seed of sigma 10 above the chance bound, the other well below: the mean decides.
    bound = claims.at_chance_bound({"dataset": "cifar10", "test_size": 1000})
    trials = [r for r in MEMORIZING_SIN if r["sigma"] != 10.0] + [
        _sin(10.0, 0, train=1.0, best=0.2, final=bound + 0.02, grad=0.0, rep=0.0),
        _sin(10.0, 1, train=1.0, best=0.1, final=0.10, grad=0.0, rep=0.0)]
    assert summarize([bound + 0.02, 0.10]).mean <= bound
    assert _only(_verdicts(trials), "1").verdict == PASS


def test_a_sweep_without_sigma_variation_tests_nothing_of_claims_1_to_3():
    found = _verdicts([_sin(10.0, seed, train=1.0, best=0.12, final=0.10, grad=0.0, rep=0.02)
                       for seed in (0, 1, 2)])
    for claim in ("1", "2", "3"):
        assert _only(found, claim).verdict == NOT_TESTABLE, claim
    assert "two or more sigmas" in _only(found, "1").evidence


def test_failed_trials_and_other_temperatures_do_not_count():
    trials = [MEMORIZING_SIN[0], _sin(10.0, train=1.0, best=0.1, final=0.1, grad=0, rep=0,
                                      status="failed"),
              _sin(10.0, train=1.0, best=0.1, final=0.1, grad=0, rep=0, temperature=1000.0)]
    assert _only(_verdicts(trials), "1").verdict == NOT_TESTABLE


def test_claim2_fails_when_alignment_does_not_fall():
    rising = [dict(r, **{contract.ALIGN_REP: r["sigma"] / 10}) for r in MEMORIZING_SIN]
    two = _only(_verdicts(rising), "2")
    assert two.verdict == FAIL and "align/rep" in two.evidence


def test_claims_are_checked_per_group_of_the_other_varying_keys():
    svhn = [dict(r, trial_id=f"svhn-{r['trial_id']}", dataset="svhn") for r in MEMORIZING_SIN]
    svhn = [dict(r, **{contract.TEST_ACC: 0.5}) if r["sigma"] == 10.0 else r for r in svhn]
    found = _verdicts(MEMORIZING_SIN + svhn)
    ones = {c.scope: c.verdict for c in found["1"]}
    assert ones == {"dataset=cifar10": PASS, "dataset=svhn": FAIL}
    three = _only(found, "3")
    assert "cifar10: ρ" in three.evidence and "svhn: ρ" in three.evidence


def test_claim3_fails_on_an_anticorrelation():
    inverted = [dict(r, **{contract.ALIGN_GRAD: 1 - r[contract.ALIGN_GRAD]}) for r in MEMORIZING_SIN]
    assert _only(_verdicts(inverted), "3").verdict == FAIL


def _relu(loss: str, sigma: float, best: float, **extra) -> dict:
    return _trial(activation="relu", loss=loss, sigma=sigma, **{
        contract.TRAIN_ACC: 1.0, contract.TEST_BEST_ACC: best, contract.TEST_ACC: best - 0.01,
        contract.ALIGN_GRAD: best / 2, contract.ALIGN_REP: 0.3}, **extra)


def test_relu_claims_4a_4b_4c():
    relu_ce = [_relu("cross_entropy", s, b) for s, b in ((0.01, 0.50), (1.0, 0.42), (10.0, 0.41))]
    hinge = [_relu("hinge", s, b) for s, b in ((0.01, 0.48), (10.0, 0.40))]
    found = _verdicts(relu_ce + hinge + MEMORIZING_SIN)
    assert {c.scope: c.verdict for c in found["4a"]} == {"dataset=cifar10": PASS}
    assert "saturation" in _only(found, "4a").evidence
    four_b = _only(found, "4b")     # ReLU drops 9 points, sin 28.5
    assert four_b.verdict == PASS and "ReLU 9.0 points, sin 28.5 points" in four_b.evidence
    assert {c.scope: c.verdict for c in found["4c"]} == {"dataset=cifar10 · loss=hinge": PASS}

    no_drop = [_relu("cross_entropy", s, 0.5) for s in (0.01, 10.0)]
    assert _only(_verdicts(no_drop), "4a").verdict == FAIL
    to_chance = [_relu("cross_entropy", 0.01, 0.5), _relu("cross_entropy", 10.0, 0.12)]
    assert _only(_verdicts(to_chance), "4a").verdict == FAIL        # not "well above chance"
    assert _only(_verdicts(to_chance), "4b").verdict == NOT_TESTABLE  # no sin to compare


def test_claim5_reads_alignment_at_epoch_0():
    relu_ce = [_relu("cross_entropy", s, 0.5 - s / 100) for s in (0.001, 1.0, 10.0)]

    def history(logits_at_10: float) -> list[dict]:
        rows = []
        for trial, logits in zip(relu_ce, (0.99, 0.7, logits_at_10)):
            rows.append({"trial_id": trial["trial_id"], "epoch": 0, contract.ALIGN_REP: 0.31,
                         contract.ALIGN_GRAD_LOGITS: logits})
            rows.append({"trial_id": trial["trial_id"], "epoch": 5, contract.ALIGN_REP: 0.9,
                         contract.ALIGN_GRAD_LOGITS: 0.1})
        return rows

    five = _only(_verdicts(relu_ce, history(0.55)), "5")
    assert five.verdict == PASS and "σ=0.001 0.990" in five.evidence
    assert _only(_verdicts(relu_ce, history(0.95)), "5").verdict == FAIL


def test_claim6_needs_32x32x3_images_and_reads_epoch_0():
    sin = MEMORIZING_SIN
    history = [{"trial_id": t["trial_id"], "epoch": 0,
                contract.ALIGN_REP: 0.07 if t["sigma"] < 0.1 else 0.004} for t in sin]
    assert _only(_verdicts(sin, history), "6").verdict == PASS
    correlated = [dict(h, **{contract.ALIGN_REP: 0.2}) for h in history]
    assert _only(_verdicts(sin, correlated), "6").verdict == FAIL
    digits = [dict(t, dataset="digits") for t in sin]
    six = _only(_verdicts(digits, history), "6")
    assert six.verdict == NOT_TESTABLE and "digits" in six.evidence


def _condition(model: str, shuffled: bool, seed: int, best: float, final: float, rep: float) -> dict:
    return _trial(model=model, shuffle_labels=shuffled, seed=seed, sigma=None, activation="relu",
                  **{contract.TRAIN_ACC: 1.0, contract.TEST_BEST_ACC: best, contract.TEST_ACC: final,
                     contract.ALIGN_GRAD: rep / 2, contract.ALIGN_REP: rep})


def test_claim7_architectures_and_shuffled_labels():
    trials = [_condition("mlp", False, s, 0.50, 0.48, 0.20) for s in (0, 1)] + \
             [_condition("convnet", False, s, 0.70, 0.69, 0.35) for s in (0, 1)] + \
             [_condition("mlp", True, s, 0.12, 0.10, 0.05) for s in (0, 1)] + \
             [_condition("convnet", True, s, 0.12, 0.11, 0.08) for s in (0, 1)]
    found = _verdicts(trials)
    assert [c.verdict for c in found["7a"]] == [PASS]   # true labels only
    assert [c.verdict for c in found["7b"]] == [PASS, PASS]   # mlp and convnet
    assert "ConvNet 70.0%" in found["7a"][0].evidence

    worse_convnet = [dict(t, **{contract.TEST_BEST_ACC: 0.3}) if t["model"] == "convnet" else t
                     for t in trials]
    assert FAIL in [c.verdict for c in _verdicts(worse_convnet)["7a"]]
    learning_shuffled = [dict(t, **{contract.TEST_ACC: 0.3}) if t["shuffle_labels"] else t
                         for t in trials]
    assert FAIL in [c.verdict for c in _verdicts(learning_shuffled)["7b"]]


def test_claim8_counts_diverged_relu_squared_trials():
    diverging = [_relu("squared", 0.01, 0.4), _relu("squared", 10.0, 0.1, status="diverged")]
    eight = _only(_verdicts(diverging), "8")
    assert eight.verdict == PASS and "σ=10: 1/1 diverged" in eight.evidence
    assert _only(_verdicts([_relu("squared", 10.0, 0.3)]), "8").verdict == FAIL
    assert _only(_verdicts([_relu("squared", 0.1, 0.3)]), "8").verdict == NOT_TESTABLE


def test_claims_table_is_typed_strings():
    table = claims.claims_table(check_claims(pa.Table.from_pylist(MEMORIZING_SIN)))
    assert table.column_names == ["claim", "statement", "scope", "evidence", "verdict"]
    assert all(field.type == pa.string() for field in table.schema)


def test_dataset_facts_agree_with_the_data_layer():
    """The claims' chance levels and test-set sizes come from workers.datasets: its facts
    must be what the loader produces (digits: the one dataset that ships offline)."""
    from workers.data.sources import digits_arrays
    from workers.datasets import FACTS

    digits = digits_arrays()
    assert digits.num_classes == FACTS["digits"].num_classes
    assert (len(digits.train_labels), len(digits.test_labels)) == (
        FACTS["digits"].train_size, FACTS["digits"].test_size)
    assert digits.test_images.shape[1:] == FACTS["digits"].image_shape
    assert grouping.chance("cifar100") == 1 / 100


# --- planted bugs that once survived: one condition varied at a time ------------------------

def test_claim1_fails_when_the_smallest_sigma_does_not_generalize():
    # Everything memorizes and nothing generalizes: the large-sigma half of claim 1 holds,
    # the small-sigma half ("small sigma generalizes") does not.
    nothing_learned = [dict(r, **{contract.TEST_BEST_ACC: 0.12}) if r["sigma"] == 0.01 else r
                       for r in MEMORIZING_SIN]
    one = _only(_verdicts(nothing_learned), "1")
    assert one.verdict == FAIL and "σ=0.01 12.0%" in one.evidence


def test_at_chance_bound_is_the_larger_of_the_margin_and_three_standard_errors():
    # 10 classes: p = 0.1. On 100 examples 3 standard errors (0.09) exceed the margin (0.03);
    # on 10,000 they (0.009) do not.
    assert claims.at_chance_bound({"dataset": "cifar10", "test_size": 100}) == \
        pytest.approx(0.1 + 3 * (0.1 * 0.9 / 100) ** 0.5)
    assert claims.at_chance_bound({"dataset": "cifar10", "test_size": 10_000}) == \
        pytest.approx(0.1 + claims.CHANCE_MARGIN)
    # A trial without test_size is measured on the dataset's full test split.
    assert claims.at_chance_bound({"dataset": "svhn", "test_size": None}) == \
        pytest.approx(0.1 + claims.CHANCE_MARGIN)
    assert claims.at_chance_bound({"dataset": "cifar100", "test_size": 20}) == \
        pytest.approx(0.01 + claims.CHANCE_STANDARD_ERRORS * (0.01 * 0.99 / 20) ** 0.5)


def test_claim6_fails_on_a_strong_negative_alignment_at_init():
    history = [{"trial_id": t["trial_id"], "epoch": 0,
                contract.ALIGN_REP: 0.07 if t["sigma"] < 0.1 else -0.2} for t in MEMORIZING_SIN]
    six = _only(_verdicts(MEMORIZING_SIN, history), "6")
    assert six.verdict == FAIL and "-0.200" in six.evidence


def test_claim7b_fails_when_shuffled_labels_do_not_lower_alignment():
    trials = [_condition("mlp", False, s, 0.50, 0.48, 0.20) for s in (0, 1)] + \
             [_condition("mlp", True, s, 0.12, 0.10, 0.30) for s in (0, 1)]   # at chance, aligned
    seven = _only(_verdicts(trials), "7b")
    assert seven.verdict == FAIL and "shuffled 0.300" in seven.evidence


def test_claim2_needs_a_falling_trend_not_only_a_lower_end():
    # align/grad ends lower at the largest sigma than at the smallest, but rises in between:
    # Spearman's rho is positive, so "falls as sigma grows" does not hold.
    zigzag = {0.01: 0.05, 0.1: 0.2, 1.0: 0.3, 10.0: 0.04}
    trials = [_sin(s, train=1.0, best=0.4 if s < 1 else 0.11, final=0.36 if s < 1 else 0.10,
                   grad=g, rep=0.2 - s / 100) for s, g in zigzag.items()]
    two = _only(_verdicts(trials), "2")
    assert two.verdict == FAIL and "align/grad" in two.evidence


def test_claim4a_fails_when_accuracy_still_drops_between_the_two_largest_sigmas():
    not_saturated = [_relu("cross_entropy", s, b) for s, b in ((0.01, 0.55), (1.0, 0.48), (10.0, 0.40))]
    four = _only(_verdicts(not_saturated), "4a")
    assert four.verdict == FAIL and "saturation: 8.0 points" in four.evidence
