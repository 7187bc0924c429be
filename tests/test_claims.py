"""The claims checks on hand-made results tables: fast, no servers. Each claim passes on
numbers that show it, fails on numbers that contradict it, is inconclusive when its trials
are not in the claim's regime (under-trained, too few, sigma range not covered), and is "not
testable here" when the sweep lacks the trials. Trials are compared like with like."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest

from orchestrator.results import claims, grouping
from orchestrator.results.claims import (FAIL, INCONCLUSIVE, NOT_TESTABLE, PASS, check_claims,
                                         regime, rules)
from orchestrator.results.grouping import summarize
from workers import contract

_ids = itertools.count()


def _trial(**values) -> dict:
    """A finished trial's row of the trials table; the sin MLP at temperature 1 by default."""
    row = {"status": "finished", "trial_id": f"t{next(_ids)}", "dataset": "cifar10",
           "model": "mlp", "activation": "sin", "loss": "cross_entropy", "temperature": 1.0,
           "shuffle_labels": False, "sigma": 0.01, "seed": 0, "lr": 0.01, "test_size": 1000,
           "hidden": 1024, "epochs": 100, "batch_size": 256}
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
    assert list(found) == list(claims.RULES)    # every claim, in order
    for check in checks:   # an undecided row says what is missing; a decided one its numbers
        assert bool(check.missing) == (check.verdict in (INCONCLUSIVE, NOT_TESTABLE)), check
        assert check.verdict in claims.VERDICTS
    return found


def _only(found: dict[str, list], claim: str):
    assert len(found[claim]) == 1, found[claim]
    return found[claim][0]


def _scopes(found: dict[str, list], claim: str) -> dict[str, str]:
    return {c.scope: c.verdict for c in found[claim]}


# --- claims 1-3: sin -------------------------------------------------------------------------

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
        assert "history" in _only(found, claim).missing


def test_claim1_fails_when_large_sigma_still_generalizes():
    still_generalizing = [dict(r, **{contract.TEST_ACC: 0.30}) if r["sigma"] == 10.0 else r
                          for r in MEMORIZING_SIN]
    assert _only(_verdicts(still_generalizing), "1").verdict == FAIL


def test_an_under_trained_sweep_is_inconclusive_and_says_to_train_longer():
    # sigma 10 at 70% train accuracy after 100 epochs: not the claim's regime, not a FAIL.
    not_memorizing = [dict(r, **{contract.TRAIN_ACC: 0.7}) if r["sigma"] == 10.0 else r
                      for r in MEMORIZING_SIN]
    found = _verdicts(not_memorizing)
    for claim in ("1", "2", "3"):
        check = _only(found, claim)
        assert check.verdict == INCONCLUSIVE, claim
        assert check.missing == ("σ=10 train accuracy 70.0% < 99% after 100 epochs: train "
                                 "longer, e.g. epochs: 300"), claim
        assert check.evidence      # the numbers so far are still shown


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
    assert "two or more σ" in _only(found, "1").missing


def test_failed_trials_and_other_temperatures_do_not_count():
    trials = [MEMORIZING_SIN[0], _sin(10.0, train=1.0, best=0.1, final=0.1, grad=0, rep=0,
                                      status="failed"),
              _sin(10.0, train=1.0, best=0.1, final=0.1, grad=0, rep=0, temperature=1000.0)]
    assert _only(_verdicts(trials), "1").verdict == NOT_TESTABLE


def test_claim2_fails_when_alignment_does_not_fall():
    rising = [dict(r, **{contract.ALIGN_REP: r["sigma"] / 10}) for r in MEMORIZING_SIN]
    two = _only(_verdicts(rising), "2")
    assert two.verdict == FAIL and "align/rep" in two.evidence


def test_claim2_passes_on_a_fall_to_a_noisy_floor_and_fails_on_a_fall_within_noise():
    # claims-cpu.yaml's sin trials (one seed): align/rep falls, then sits at a floor where the
    # order of sigma 0.1, 1, 10 is noise.
    floor = {0.001: (0.032, 0.245), 0.1: (0.001, 0.088), 1.0: (0.0, 0.087), 10.0: (0.0, 0.090)}
    trials = [_sin(s, train=1.0, best=0.33 if s < 0.1 else 0.108, final=0.30 if s < 0.1 else 0.1,
                   grad=g, rep=r) for s, (g, r) in floor.items()]
    two = _only(_verdicts(trials), "2")
    assert two.verdict == PASS and "largest rise 0.003" in two.evidence
    within_noise = [dict(t, **{contract.ALIGN_GRAD: 0.01 if t["sigma"] < 0.1 else 0.0})
                    for t in trials]
    two = _only(_verdicts(within_noise), "2")
    assert two.verdict == FAIL and "align/grad: σ=0.001 0.010" in two.evidence
    assert "falls by 0.010, needs >= 0.02" in two.evidence


def test_claims_1_and_2_are_checked_per_dataset_and_claim3_pools_datasets_like_fig_1b():
    svhn = [dict(r, trial_id=f"svhn-{r['trial_id']}", dataset="svhn") for r in MEMORIZING_SIN]
    svhn = [dict(r, **{contract.TEST_ACC: 0.5}) if r["sigma"] == 10.0 else r for r in svhn]
    found = _verdicts(MEMORIZING_SIN + svhn)
    assert _scopes(found, "1") == {"dataset=cifar10": PASS, "dataset=svhn": FAIL}
    three = _only(found, "3")
    assert three.scope == "dataset=cifar10, svhn" and "n = 10" in three.evidence
    assert "cifar10: ρ" in three.evidence and "svhn: ρ" in three.evidence


def test_claim3_fails_on_an_anticorrelation():
    inverted = [dict(r, **{contract.ALIGN_GRAD: 1 - r[contract.ALIGN_GRAD]}) for r in MEMORIZING_SIN]
    assert _only(_verdicts(inverted), "3").verdict == FAIL


def _stale_alignment(row: dict, value: float, epoch: int = 4, last: int = 100) -> dict:
    """``row`` as a hinge-like trial whose align/grad became undefined (no longer logged)
    after ``epoch``: its table value is from that epoch, flagged in stale_metrics."""
    return dict(row, **{contract.ALIGN_GRAD: value, "align/grad@epoch": epoch,
                        "epochs_done": last, "stale_metrics": [contract.ALIGN_GRAD]})


def test_claim3_leaves_out_alignments_from_before_the_last_epoch_and_says_so():
    # Two more sigma-10 trials whose align/grad is from epoch 4 (high, as early in training):
    # read as finals they would turn the correlation around.
    early = [_stale_alignment(_sin(10.0, seed, train=1.0, best=0.11, final=0.10, grad=0.0,
                                   rep=0.01, name=f"early{seed}"), value)
             for seed, value in ((2, 0.9), (3, 0.95))]
    trials = early + MEMORIZING_SIN     # first: the table takes its columns from the first row
    three = _only(_verdicts(trials), "3")
    assert three.verdict == PASS and "n = 5" in three.evidence
    assert ("(left out of align/grad: 2 trial(s) without a value at their last epoch: "
            "early2 (align/grad: epoch 4 of 100)") in three.evidence
    assert claims.finals_note(pa.Table.from_pylist(trials)).startswith(
        "finals are values at the trial's last epoch; 2 trial(s) without one were left out: "
        "early2 (align/grad: epoch 4 of 100), early3")
    assert "Final values are values at the trial's last epoch" in claims.LIKE_WITH_LIKE


def test_claims_never_pool_runs_of_stale_trial_ids():
    # Runs of an earlier version of the spec (trial ids no longer in it), read with
    # --include-stale: anti-correlated, they would fail claim 3 if pooled.
    current = [dict(r, in_spec=True) for r in MEMORIZING_SIN]
    stale = [dict(_sin(sigma, 5, train=1.0, best=0.5 - sigma / 30, final=0.1, grad=sigma / 10,
                       rep=0.01), in_spec=False) for sigma in (0.01, 1.0, 10.0)]
    three = _only(_verdicts(current + stale), "3")
    assert three.verdict == PASS and "n = 5" in three.evidence
    assert len(grouping.result_rows(pa.Table.from_pylist(current + stale))) == 5


def test_claim3_with_too_few_trials_for_a_rank_correlation_is_inconclusive():
    # The issue's sin trials: one seed at three sigmas. rho over 3 points cannot be significant.
    trials = [_sin(0.001, train=1.0, best=0.357, final=0.35, grad=0.055, rep=0.2),
              _sin(0.1, train=1.0, best=0.096, final=0.09, grad=0.000, rep=0.01),
              _sin(10.0, train=1.0, best=0.111, final=0.10, grad=-0.0001, rep=0.0)]
    three = _only(_verdicts(trials), "3")
    assert three.verdict == INCONCLUSIVE
    assert "3 trial(s) with align/grad and best test < 4" in three.missing
    fourth = _sin(1.0, train=1.0, best=0.095, final=0.09, grad=-0.0002, rep=0.0)
    assert _only(_verdicts(trials + [fourth]), "3").verdict == PASS     # rho = +0.8, n = 4


def test_claim3_compares_like_with_like_one_row_per_setup():
    # Two hidden widths: the wide one correlates, the narrow one anti-correlates. Pooled, the
    # two would blur into one number; each gets its own row and verdict.
    narrow = [dict(r, trial_id=f"n{i}", hidden=256,
                   **{contract.ALIGN_GRAD: 1 - r[contract.ALIGN_GRAD]})
              for i, r in enumerate(MEMORIZING_SIN)]
    found = _verdicts(MEMORIZING_SIN + narrow)
    assert _scopes(found, "3") == {"dataset=cifar10 · hidden=1024": PASS,
                                   "dataset=cifar10 · hidden=256": FAIL}
    assert all("n = 5" in c.evidence for c in found["3"])


def test_the_sigma_range_must_span_both_ends_of_the_claims():
    # sigma 0.1-10 on CIFAR: sigma*||x|| >= 5.5 everywhere, all in the memorizing regime.
    no_small = [_sin(s, train=1.0, best=0.12, final=0.10, grad=0.01 / s, rep=0.01 / s)
                for s in (0.1, 1.0, 10.0)]
    one = _only(_verdicts(no_small), "1")
    assert one.verdict == INCONCLUSIVE
    assert "smallest σ 0.1 has σ·||x|| = 5.5 > 1" in one.missing and "σ: 0.01" in one.missing
    # sigma 0.001-0.01 on CIFAR: all generalizing.
    no_large = [_sin(s, train=1.0, best=0.4, final=0.38, grad=s, rep=s) for s in (0.001, 0.01)]
    one = _only(_verdicts(no_large), "1")
    assert one.verdict == INCONCLUSIVE and "largest σ 0.01" in one.missing
    assert "σ: 0.1" in one.missing
    # On 8x8 digits (||x|| = 8) sigma 1 is the memorizing end, sigma 0.1 is not.
    digits = [dict(r, dataset="digits", test_size=599) for r in MEMORIZING_SIN]
    assert _only(_verdicts(digits), "1").verdict == PASS
    digits_small = [dict(r, sigma=r["sigma"] / 100) for r in digits]
    one = _only(_verdicts(digits_small), "1")
    assert one.verdict == INCONCLUSIVE and "σ: 1" in one.missing


# --- claim 4: ReLU ---------------------------------------------------------------------------

def _relu(loss: str, sigma: float, best: float, train: float = 1.0, **extra) -> dict:
    return _trial(activation="relu", loss=loss, sigma=sigma, **{
        contract.TRAIN_ACC: train, contract.TEST_BEST_ACC: best, contract.TEST_ACC: best - 0.01,
        contract.ALIGN_GRAD: best / 2, contract.ALIGN_REP: 0.3}, **extra)


RELU_CE = [_relu("cross_entropy", s, b) for s, b in ((0.01, 0.50), (1.0, 0.42), (10.0, 0.41))]


def test_relu_claims_4a_4b_4c_pass():
    hinge = [_relu("hinge", s, b) for s, b in ((0.01, 0.48), (10.0, 0.40))]
    found = _verdicts(RELU_CE + hinge + MEMORIZING_SIN)
    assert _scopes(found, "4a") == {"dataset=cifar10": PASS}
    assert "saturation: 1.0 points" in _only(found, "4a").evidence
    four_b = _only(found, "4b")     # ReLU drops 9 points, sin 28.5
    assert four_b.verdict == PASS and "ReLU 9.0 points, sin 28.5 points" in four_b.evidence
    assert _scopes(found, "4c") == {"dataset=cifar10 · loss=hinge": PASS}


def test_claim4a_fails_without_a_drop_or_at_chance():
    no_drop = [_relu("cross_entropy", s, 0.5) for s in (0.01, 1.0, 10.0)]
    assert _only(_verdicts(no_drop), "4a").verdict == FAIL
    to_chance = [_relu("cross_entropy", s, b) for s, b in ((0.01, 0.5), (1.0, 0.13), (10.0, 0.12))]
    assert _only(_verdicts(to_chance), "4a").verdict == FAIL        # not "well above chance"
    assert _only(_verdicts(to_chance), "4b").verdict == NOT_TESTABLE  # no sin to compare


def test_claim4a_fails_when_accuracy_still_drops_between_the_two_largest_sigmas():
    not_saturated = [_relu("cross_entropy", s, b) for s, b in ((0.01, 0.55), (1.0, 0.48), (10.0, 0.40))]
    four = _only(_verdicts(not_saturated), "4a")
    assert four.verdict == FAIL and "saturation: 8.0 points" in four.evidence


def test_claim4a_saturation_needs_two_sigmas_at_the_large_end():
    two = [_relu("cross_entropy", s, b) for s, b in ((0.01, 0.5), (10.0, 0.41))]
    four = _only(_verdicts(two), "4a")
    assert four.verdict == INCONCLUSIVE and "saturation needs three or more σ" in four.missing


def test_claim4a_under_trained_relu_is_inconclusive():
    slow = [dict(r, **{contract.TRAIN_ACC: 0.8}) if r["sigma"] == 10.0 else r for r in RELU_CE]
    four = _only(_verdicts(slow), "4a")
    assert four.verdict == INCONCLUSIVE and "σ=10 train accuracy 80.0% < 99%" in four.missing


def test_claim4b_fails_when_relu_drops_more_than_sin():
    steep_relu = [_relu("cross_entropy", s, b) for s, b in ((0.01, 0.70), (1.0, 0.15), (10.0, 0.12))]
    four_b = _only(_verdicts(steep_relu + MEMORIZING_SIN), "4b")
    assert four_b.verdict == FAIL and "ReLU 58.0 points, sin 28.5 points" in four_b.evidence


def test_claim4c_fails_without_a_drop_and_leaves_diverged_trials_out():
    flat_hinge = [_relu("hinge", s, 0.45) for s in (0.01, 10.0)]
    assert _only(_verdicts(flat_hinge), "4c").verdict == FAIL
    # Squared loss: sigma 1 and 10 diverge at lr 0.01; the drop is measured on 0.001 and 0.1.
    squared = [_relu("squared", 0.001, 0.35), _relu("squared", 0.1, 0.19),
               _relu("squared", 1.0, 0.12, train=0.12, status="diverged"),
               _relu("squared", 10.0, 0.12, train=0.12, status="diverged")]
    four_c = _only(_verdicts(squared), "4c")
    assert four_c.verdict == PASS and four_c.scope == "dataset=cifar10 · loss=squared"
    assert "left out: 2 diverged trial(s) at σ=1, σ=10" in four_c.evidence
    # Without sigma 0.1 nothing at the large end trained: inconclusive, saying why.
    four_c = _only(_verdicts([t for t in squared if t["sigma"] != 0.1]), "4c")
    assert four_c.verdict == INCONCLUSIVE
    assert "σ=1, σ=10 diverged at lr 0.01" in four_c.missing


# --- claims 5 and 6: at init -----------------------------------------------------------------

def _init_history(trials: list[dict], logits: tuple[float, ...], rep: float = 0.31) -> list[dict]:
    rows = []
    for trial, value in zip(trials, logits):
        rows.append({"trial_id": trial["trial_id"], "epoch": 0, contract.ALIGN_REP: rep,
                     contract.ALIGN_GRAD_LOGITS: value})
        rows.append({"trial_id": trial["trial_id"], "epoch": 5, contract.ALIGN_REP: 0.9,
                     contract.ALIGN_GRAD_LOGITS: 0.1})
    return rows


def test_claim5_reads_alignment_at_epoch_0():
    relu_ce = [_relu("cross_entropy", s, 0.5 - s / 100) for s in (0.001, 1.0, 10.0)]
    five = _only(_verdicts(relu_ce, _init_history(relu_ce, (0.99, 0.7, 0.55))), "5")
    assert five.verdict == PASS and "σ=0.001 0.990" in five.evidence
    assert _only(_verdicts(relu_ce, _init_history(relu_ce, (0.99, 0.7, 0.95))), "5").verdict == FAIL
    # At init no training is needed: under-trained trials still decide claim 5.
    slow = [dict(t, **{contract.TRAIN_ACC: 0.3}) for t in relu_ce]
    assert _only(_verdicts(slow, _init_history(slow, (0.99, 0.7, 0.55))), "5").verdict == PASS


def test_claim5_without_the_tiny_scale_is_inconclusive():
    relu_ce = [_relu("cross_entropy", s, 0.5 - s / 100) for s in (0.1, 1.0, 10.0)]
    five = _only(_verdicts(relu_ce, _init_history(relu_ce, (0.8, 0.7, 0.55))), "5")
    assert five.verdict == INCONCLUSIVE and "smallest σ 0.1" in five.missing


def test_claim6_needs_32x32x3_images_and_reads_epoch_0():
    sin = MEMORIZING_SIN
    history = [{"trial_id": t["trial_id"], "epoch": 0,
                contract.ALIGN_REP: 0.07 if t["sigma"] < 0.1 else 0.004} for t in sin]
    assert _only(_verdicts(sin, history), "6").verdict == PASS
    correlated = [dict(h, **{contract.ALIGN_REP: 0.2}) for h in history]
    assert _only(_verdicts(sin, correlated), "6").verdict == FAIL
    digits = [dict(t, dataset="digits") for t in sin]
    six = _only(_verdicts(digits, history), "6")
    assert six.verdict == NOT_TESTABLE and "digits" in six.missing


def test_claim6_fails_on_a_strong_negative_alignment_at_init():
    history = [{"trial_id": t["trial_id"], "epoch": 0,
                contract.ALIGN_REP: 0.07 if t["sigma"] < 0.1 else -0.2} for t in MEMORIZING_SIN]
    six = _only(_verdicts(MEMORIZING_SIN, history), "6")
    assert six.verdict == FAIL and "-0.200" in six.evidence


# --- claim 7: architectures and labels ---------------------------------------------------------

def _condition(model: str, shuffled: bool, seed: int, best: float, final: float, rep: float,
               train: float = 1.0, **extra) -> dict:
    return _trial(model=model, shuffle_labels=shuffled, seed=seed, sigma=None, activation="relu",
                  **{contract.TRAIN_ACC: train, contract.TEST_BEST_ACC: best,
                     contract.TEST_ACC: final, contract.ALIGN_GRAD: rep / 2,
                     contract.ALIGN_REP: rep}, **extra)


CONDITIONS = ([_condition("mlp", False, s, 0.50, 0.48, 0.20) for s in (0, 1)]
              + [_condition("convnet", False, s, 0.70, 0.69, 0.35) for s in (0, 1)]
              + [_condition("mlp", True, s, 0.12, 0.10, 0.05) for s in (0, 1)]
              + [_condition("convnet", True, s, 0.12, 0.11, 0.08) for s in (0, 1)])


def test_claim7_architectures_and_shuffled_labels_pass():
    found = _verdicts(CONDITIONS)
    assert [c.verdict for c in found["7a"]] == [PASS]   # true labels only
    assert _scopes(found, "7b") == {"dataset=cifar10 · model=mlp": PASS,
                                    "dataset=cifar10 · model=convnet": PASS}
    assert "ConvNet 70.0% ± 0.0 (n=2)" in found["7a"][0].evidence


def test_claim7_fails_on_contrary_numbers():
    worse_convnet = [dict(t, **{contract.TEST_BEST_ACC: 0.3}) if t["model"] == "convnet" else t
                     for t in CONDITIONS]
    assert [c.verdict for c in _verdicts(worse_convnet)["7a"]] == [FAIL]
    learning_shuffled = [dict(t, **{contract.TEST_ACC: 0.3}) if t["shuffle_labels"] else t
                         for t in CONDITIONS]
    assert [c.verdict for c in _verdicts(learning_shuffled)["7b"]] == [FAIL, FAIL]


def test_claim7b_fails_when_shuffled_labels_do_not_lower_alignment():
    trials = [_condition("mlp", False, s, 0.50, 0.48, 0.20) for s in (0, 1)] + \
             [_condition("mlp", True, s, 0.12, 0.10, 0.30) for s in (0, 1)]   # at chance, aligned
    seven = _only(_verdicts(trials), "7b")
    assert seven.verdict == FAIL and "shuffled 0.300" in seven.evidence


def test_claim7_on_under_trained_networks_is_inconclusive():
    # The issue's ConvNet: 44.8% train accuracy after 20 epochs, best test a hair under the MLP.
    trials = [_condition("mlp", False, 0, 0.371, 0.36, 0.20, epochs=20),
              _condition("convnet", False, 0, 0.367, 0.36, 0.35, train=0.448, epochs=20),
              _condition("mlp", True, 0, 0.11, 0.10, 0.05, train=0.6, epochs=20)]
    found = _verdicts(trials)
    seven_a = _only(found, "7a")
    assert seven_a.verdict == INCONCLUSIVE
    assert seven_a.missing == ("ConvNet train accuracy 44.8% < 99% after 20 epochs: train "
                               "longer, e.g. epochs: 200")
    assert "ConvNet 36.7%" in seven_a.evidence        # the numbers so far, for information
    seven_b = _only(found, "7b")
    assert seven_b.verdict == INCONCLUSIVE and seven_b.missing.startswith(
        "shuffled labels train accuracy 60.0% < 99% after 20 epochs")


def test_claim7_compares_only_identical_setups():
    # The MLP trained 20 epochs, the ConvNet 300: they differ in more than the model.
    trials = [_condition("mlp", False, 0, 0.37, 0.36, 0.20, epochs=20),
              _condition("convnet", False, 0, 0.60, 0.59, 0.35, epochs=300)]
    seven_a = _only(_verdicts(trials), "7a")
    assert seven_a.verdict == NOT_TESTABLE
    assert "trials differing also in epochs are not compared" in seven_a.missing


def test_claim7_with_every_convnet_diverged_is_inconclusive():
    trials = [_condition("mlp", False, 0, 0.5, 0.48, 0.2),
              _condition("convnet", False, 0, 0.1, 0.1, 0.0, train=0.1, status="diverged")]
    seven_a = _only(_verdicts(trials), "7a")
    assert seven_a.verdict == INCONCLUSIVE and "ConvNet: every trial diverged" in seven_a.missing


# --- claim 8 ---------------------------------------------------------------------------------

def test_claim8_counts_diverged_relu_squared_trials():
    diverging = [_relu("squared", 0.01, 0.4), _relu("squared", 10.0, 0.1, status="diverged")]
    eight = _only(_verdicts(diverging), "8")
    assert eight.verdict == PASS and "σ=10: 1/1 diverged" in eight.evidence
    assert _only(_verdicts([_relu("squared", 10.0, 0.3)]), "8").verdict == FAIL
    assert _only(_verdicts([_relu("squared", 0.1, 0.3)]), "8").verdict == NOT_TESTABLE
    # 8x8 digits at sigma 1: logits of order 8, not the claim's 55 sigma.
    digits = [_relu("squared", 1.0, 0.3, dataset="digits", test_size=599)]
    assert _only(_verdicts(digits), "8").verdict == NOT_TESTABLE


# --- the issue's sweep: everything mixed -------------------------------------------------------

def test_the_issues_mixed_sweep_compares_like_with_like():
    """16 trials: ReLU with three losses and sin with cross-entropy at sigma 0.001/0.1/10 for
    60 epochs; MLP and ConvNet with glorot init on true and shuffled labels for 20 epochs.
    Pooled, claim 3 read rho = +0.01 and claim 7a FAIL. Neither verdict is supported."""
    sweep = []
    for activation, loss, bests, aligns in (
            ("relu", "cross_entropy", (0.40, 0.33, 0.32), (0.10, 0.05, 0.04)),
            ("relu", "hinge", (0.39, 0.36, 0.35), (0.12, 0.06, 0.05)),
            ("relu", "squared", (0.37, 0.20, 0.12), (0.09, 0.03, 0.01)),
            ("sin", "cross_entropy", (0.357, 0.096, 0.111), (0.055, 0.0, -0.0001))):
        for sigma, best, align in zip((0.001, 0.1, 10.0), bests, aligns):
            status = "diverged" if loss == "squared" and sigma == 10.0 else "finished"
            sweep.append(_trial(activation=activation, loss=loss, sigma=sigma, epochs=60,
                                status=status, hidden=256, **{
                                    contract.TRAIN_ACC: 1.0 if status == "finished" else 0.1,
                                    contract.TEST_BEST_ACC: best, contract.TEST_ACC: best - 0.01,
                                    contract.ALIGN_GRAD: align,
                                    contract.ALIGN_REP: 0.2 - sigma / 100}))
    for model, train, best, align in (("mlp", 0.95, 0.371, 0.12), ("convnet", 0.448, 0.367, 0.56)):
        for shuffled in (False, True):
            sweep.append(_condition(model, shuffled, 0, 0.1 if shuffled else best, 0.1,
                                    align / 2 if shuffled else align, train=train, epochs=20,
                                    hidden=256))
    found = _verdicts(sweep)
    # Claim 3: only the sin trials, one group, and three of them are too few.
    three = _only(found, "3")
    assert three.verdict == INCONCLUSIVE and "all trials" not in three.evidence
    assert "3 trial(s)" in three.missing
    # Claim 7a: two unfinished trainings compared are not evidence against the paper.
    seven_a = _only(found, "7a")
    assert seven_a.verdict == INCONCLUSIVE
    assert "ConvNet train accuracy 44.8% < 99% after 20 epochs: train longer" in seven_a.missing
    assert "MLP train accuracy 95.0%" in seven_a.missing
    # Every sigma claim gets its own group: one row per loss, never ReLU and sin together.
    assert _scopes(found, "4c") == {"dataset=cifar10 · loss=hinge": PASS,
                                    "dataset=cifar10 · loss=squared": PASS}
    assert _only(found, "4b").verdict == PASS and "ReLU 8.0 points" in _only(found, "4b").evidence
    assert _only(found, "8").verdict == PASS
    assert FAIL not in {c.verdict for checks in found.values() for c in checks}


# --- the table and the rules -------------------------------------------------------------------

def test_claims_table_is_typed_strings_with_each_rows_rule():
    checks = check_claims(pa.Table.from_pylist(MEMORIZING_SIN))
    table = claims.claims_table(checks)
    assert table.column_names == ["claim", "statement", "scope", "evidence", "verdict",
                                  "missing", "source", "rule"]
    assert all(field.type == pa.string() for field in table.schema)
    first = table.to_pylist()[0]
    assert first["source"] == "Sec. 3, Fig. 1a" and first["rule"] == claims.RULES["1"].text()


def test_every_claim_has_a_rule_and_the_rules_carry_the_thresholds():
    text = " ".join(rule.text() for rule in claims.RULES.values())
    for value in (f"{rules.MEMORIZED:.0%}", f"{rules.WELL_ABOVE_CHANCE * 100:g} points",
                  f"{rules.MIN_DROP * 100:g} points", f"{rules.SATURATED * 100:g} points",
                  f">= {rules.MIN_RHO:g}", f"at least {rules.MIN_RANK_TRIALS} trials",
                  f"<= {rules.SAME_ALIGNMENT:g}", f">= {rules.LOGIT_ALIGNMENT_TINY:g}",
                  f"<= {rules.LOGIT_ALIGNMENT_SATURATED:g}", f"<= {rules.UNCORRELATED:g}",
                  f"σ·||x|| <= {rules.SMALL_SCALE:g}", f">= {rules.LARGE_SCALE:g}",
                  f">= {rules.BLOW_UP_SCALE:g}", f"{rules.CHANCE_STANDARD_ERRORS:g} standard errors"):
        assert value in text, value
    assert "NOTES" not in text
    assert set(claims.RULES) == set(claims.STATEMENTS)


@pytest.mark.parametrize("epochs, train, expected", [(20, 0.448, 200), (100, 0.7, 300),
                                                     (60, 0.98, 200), (10, 0.1, 2000)])
def test_suggested_epochs_extrapolate_doubled_and_round_up(epochs, train, expected):
    assert regime.suggest_epochs(epochs, train, 0.1) == expected


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
    assert regime.input_norm("cifar10") == pytest.approx(55.4, abs=0.05)


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


def test_claim2_needs_a_falling_trend_not_only_a_lower_end():
    # align/grad ends lower at the largest sigma than at the smallest, but rises in between:
    # Spearman's rho is positive, so "falls as sigma grows" does not hold.
    zigzag = {0.01: 0.05, 0.1: 0.2, 1.0: 0.3, 10.0: 0.04}
    trials = [_sin(s, train=1.0, best=0.4 if s < 0.1 else 0.11, final=0.36 if s < 0.1 else 0.10,
                   grad=g, rep=0.2 - s / 100) for s, g in zigzag.items()]
    two = _only(_verdicts(trials), "2")
    assert two.verdict == FAIL and "align/grad" in two.evidence
