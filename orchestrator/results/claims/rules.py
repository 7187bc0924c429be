"""How each of the paper's claims is checked: verdicts, thresholds and rules, written once.

``VERDICTS`` says what each verdict means, ``LIKE_WITH_LIKE`` which trials a claim compares,
and ``RULES``, for every claim, what the paper says and where, the trials compared, the
regime the claim is about and the rule that gives PASS, with the thresholds below filled in.
``xmem report`` renders all three as "How the claims are checked" in ``report.html`` and
shows each row's rule in its tooltip and footnote; the checks (``sweeps``, ``conditions``)
read their thresholds from the constants here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, INCONCLUSIVE, NOT_TESTABLE = "PASS", "FAIL", "inconclusive", "not testable here"

VERDICTS = {
    PASS: "the compared trials are in the claim's regime and their numbers show the claim",
    FAIL: "the compared trials are in the claim's regime and their numbers contradict it",
    INCONCLUSIVE: "the sweep has the trials the claim needs, but they are not in its regime "
                  "(not trained to memorization, too few trials for a rank correlation, the "
                  "claim's sigma range not covered, a metric not logged); the row says what is "
                  "missing and what to change",
    NOT_TESTABLE: "the sweep lacks the trials the claim needs",
}

LIKE_WITH_LIKE = (
    "A claim compares only trials that differ in what the claim varies: sigma (and the dataset "
    "for claim 3), the model for 7a, the labels for 7b. Every other trial key that can change a "
    "result is equal within a compared group: model, activation, loss, temperature, hidden, lr, "
    "momentum, batch size, epochs, subset sizes, label condition, evaluation and probe settings. "
    "Seeds (seed, data_seed) are replicates: the rules compare their means, and the rows show "
    "mean ± sample standard deviation (n). Each group is a row with its own numbers; numbers are "
    "pooled across groups only where the paper pooled (claim 3 pools datasets, as its Fig. 1b "
    "does). Only finished and diverged trials count; a diverged trial's last numbers are not a "
    "trained network's, so it counts only at init (claims 5, 6) and in claim 8: the other claims "
    "leave it out and say so. Final values are values at the trial's last epoch (its last "
    "evaluated epoch; a diverged trial's last before the blow-up): a metric last logged at an "
    "earlier epoch (an alignment that became undefined) counts as missing, and the row says "
    "which trials that left out. Runs of trial ids no longer in the sweep's spec (its defaults "
    "or grid changed) never count.")

# --- thresholds (accuracies are fractions: 0.10 = 10 points) ---------------------------------
MEMORIZED = 0.99           # final train accuracy of a network "trained to memorization"
WELL_ABOVE_CHANCE = 0.10   # "generalizes" / "well above chance": best test >= chance + this
CHANCE_MARGIN = 0.03       # "at chance": final test <= chance + max(this, 3 standard errors)
CHANCE_STANDARD_ERRORS = 3.0
MIN_DROP = 0.02            # "drops": best test at the smallest sigma minus at the largest
SATURATED = 0.03           # "saturates": |change| of best test between the two largest sigmas
MIN_RHO = 0.5              # "correlates": Spearman's rho at least this
# The fewest trials whose perfect rank order is significant (one-sided p = 1/n! < 0.05).
MIN_RANK_TRIALS = 4
# Alignments closer than this are "the same" (claim 5); a smaller rise is noise, as along the
# floor that alignment reaches at large sigma (claim 2).
SAME_ALIGNMENT = 0.02
LOGIT_ALIGNMENT_TINY = 0.9        # align/grad_logits at init "about 1" at the smallest sigma
LOGIT_ALIGNMENT_SATURATED = 0.75  # ... and "toward 0.5-0.6" at the largest: at most this
UNCORRELATED = 0.05        # |align/rep| at init of "nearly uncorrelated" features
UNCORRELATED_FROM_SIGMA = 0.1
# The sigma range of the claims about a sigma sweep, as the pre-activation scale sigma*||x||:
# the standard deviation of a first-layer pre-activation at init, with ||x|| = sqrt(d) for a
# per-image standardized image of d values (55 for 32x32x3, 8 for 8x8 digits). The paper's
# grid (sigma 0.001-10 on CIFAR) spans both ends: sigma*||x|| <= SMALL_SCALE is its
# generalizing end (CIFAR: sigma <= 0.018), >= LARGE_SCALE its memorizing (sin) / saturated
# (ReLU: logits of the same order) end (CIFAR: sigma >= 0.09).
SMALL_SCALE = 1.0
LARGE_SCALE = 5.0
BLOW_UP_SCALE = 50.0       # claim 8's "large sigma": logits of order 55 sigma (CIFAR: sigma >= 0.9)
PAPER_SIGMAS = (0.001, 0.01, 0.1, 1.0, 10.0)
PAPER_LR = 0.01


@dataclass(frozen=True)
class ClaimRule:
    """How one claim is checked."""

    claim: str
    """Its number, with a letter for its parts (4a, 4b, ...)."""
    statement: str
    """What the paper says, in short."""
    source: str
    """Where the paper says it (section, figure)."""
    compares: str
    """Which trials the check compares, and what may differ among them."""
    regime: str
    """What the compared trials must satisfy; otherwise the verdict is inconclusive."""
    passes: str
    """The rule that gives PASS; FAIL otherwise."""

    def text(self) -> str:
        """The whole rule in one paragraph (the report's tooltip)."""
        return (f"Claim {self.claim} ({self.source}). Compares: {self.compares}. Regime, else "
                f"inconclusive: {self.regime}. PASS when {self.passes}; FAIL otherwise.")


_TRAINED = (f"every compared condition trained to memorization (mean final train accuracy "
            f">= {MEMORIZED:.0%})")
_RANGE = (f"σ·||x|| <= {SMALL_SCALE:g} at the smallest σ and >= {LARGE_SCALE:g} at the largest "
          f"(||x|| = √d for an image of d values: on 32x32x3 images σ <= 0.018 and σ >= 0.09)")
_SIN_MLP = "the sin MLP at temperature 1 on true labels"
_RELU_MLP = "the ReLU MLP at temperature 1 on true labels"
_SIGMA_GROUPS = "groups differing only in σ (seeds: replicates); diverged trials left out"
_AT_CHANCE = (f"final test <= chance + max({CHANCE_MARGIN * 100:g} points, "
              f"{CHANCE_STANDARD_ERRORS:g} standard errors of chance accuracy on the test set)")

RULES: dict[str, ClaimRule] = {rule.claim: rule for rule in (
    ClaimRule(
        "1", "sin: small sigma generalizes; at large sigma train accuracy stays 100% and test "
             "accuracy falls to chance", "Sec. 3, Fig. 1a",
        f"{_SIN_MLP}, {_SIGMA_GROUPS}", f"{_RANGE}; {_TRAINED}",
        f"best test at the smallest σ >= chance + {WELL_ABOVE_CHANCE * 100:g} points and, at the "
        f"largest σ, {_AT_CHANCE}"),
    ClaimRule(
        "2", "sin: gradient and representation alignment fall as sigma grows", "Sec. 3",
        f"{_SIN_MLP}, {_SIGMA_GROUPS}",
        f"{_RANGE}; {_TRAINED}; align/grad and align/rep logged at two or more σ",
        f"for both align/grad and align/rep (final values, seed means by σ): the value at the "
        f"largest σ is at least {SAME_ALIGNMENT:g} below the one at the smallest, and it never "
        f"rises by more than {SAME_ALIGNMENT:g} from one σ to the next (a flat floor at large σ "
        f"is noise, a rise is not)"),
    ClaimRule(
        "3", "best test accuracy correlates with gradient alignment across datasets and sigmas",
        "Sec. 3, Fig. 1b",
        f"{_SIN_MLP}, groups differing only in σ and dataset (seeds: replicates); datasets "
        f"pooled within a group, as in Fig. 1b",
        f"{_RANGE}; {_TRAINED}; at least {MIN_RANK_TRIALS} trials with align/grad and best test "
        f"(the fewest whose rank order can be significant)",
        f"Spearman's ρ(final align/grad, best test) over the group's trials >= {MIN_RHO:g}"),
    ClaimRule(
        "4a", "ReLU + cross-entropy: test accuracy drops as sigma grows, then saturates, well "
              "above chance", "Sec. 4",
        f"{_RELU_MLP} with cross-entropy, {_SIGMA_GROUPS}",
        f"{_RANGE}; {_TRAINED}; for the saturation, three or more σ, the two largest with σ·||x|| "
        f">= {LARGE_SCALE:g}",
        f"best test drops by >= {MIN_DROP * 100:g} points from the smallest to the largest σ, "
        f"changes by <= {SATURATED * 100:g} points between the two largest σ, and stays >= "
        f"chance + {WELL_ABOVE_CHANCE * 100:g} points at the largest σ"),
    ClaimRule(
        "4b", "ReLU + cross-entropy: the drop is milder than for sin", "Sec. 4",
        "the ReLU and the sin MLP with cross-entropy at temperature 1 on true labels, groups "
        "differing only in activation and σ (seeds: replicates), over the σ both have",
        f"{_RANGE} (the common σ); {_TRAINED}",
        "the ReLU drop of best test accuracy (smallest to largest common σ) is smaller than "
        "the sin drop"),
    ClaimRule(
        "4c", "ReLU + hinge / squared loss: test accuracy drops as sigma grows", "Sec. 4",
        f"{_RELU_MLP} with hinge or squared loss, {_SIGMA_GROUPS}", f"{_RANGE}; {_TRAINED}",
        f"best test drops by >= {MIN_DROP * 100:g} points from the smallest to the largest σ"),
    ClaimRule(
        "5", "ReLU + cross-entropy at init: representation alignment is the same for every "
             "sigma; logit-gradient alignment falls from about 1 toward 0.5-0.6", "Sec. 4",
        f"{_RELU_MLP} with cross-entropy, groups differing only in σ (seeds: replicates), at "
        f"epoch 0 (no training needed)",
        f"{_RANGE}; align/rep and align/grad_logits logged at epoch 0",
        f"the seed means of align/rep span <= {SAME_ALIGNMENT:g}, and align/grad_logits is >= "
        f"{LOGIT_ALIGNMENT_TINY:g} at the smallest σ and <= {LOGIT_ALIGNMENT_SATURATED:g} at "
        f"the largest"),
    ClaimRule(
        "6", "sin: for sigma >= 0.1 the features of two images are nearly uncorrelated at init "
             "(32x32x3 images, ||x|| about 55)", "Sec. 3",
        f"{_SIN_MLP} on 32x32x3 images (CIFAR, SVHN), groups differing only in σ (seeds: "
        f"replicates), at epoch 0 (no training needed)",
        f"σ >= {UNCORRELATED_FROM_SIGMA:g} present; align/rep logged at epoch 0",
        f"|align/rep| at epoch 0 <= {UNCORRELATED:g} at every σ >= {UNCORRELATED_FROM_SIGMA:g}"),
    ClaimRule(
        "7a", "ConvNet: higher test accuracy and representation alignment than the MLP at "
              "identical hyperparameters (true labels)", "Sec. 5, Fig. 1c",
        "MLP and ConvNet trials on true labels, groups differing only in the model (seeds: "
        "replicates)", f"{_TRAINED}; align/rep logged",
        "the ConvNet's best test accuracy and final align/rep are both above the MLP's"),
    ClaimRule(
        "7b", "shuffled labels: test accuracy at chance and lower representation alignment",
        "Sec. 5",
        "trials on true and on shuffled labels, groups differing only in the labels (seeds: "
        "replicates)", f"{_TRAINED}; align/rep logged",
        f"with shuffled labels {_AT_CHANCE}, and final align/rep is below the true labels'"),
    ClaimRule(
        "8", "ReLU + squared loss at large sigma can blow up at lr 0.01: the trial is recorded "
             "as diverged", "Sec. 4 (the squared-loss runs)",
        f"ReLU trials with squared loss at lr {PAPER_LR:g} and σ·||x|| >= {BLOW_UP_SCALE:g} "
        f"(on 32x32x3 images σ >= 0.9), groups differing only in σ (seeds: replicates)",
        "none besides the trials it selects: a blow-up shows in the first steps",
        "at least one of the group's trials diverged (a non-finite loss or weight)"),
)}

STATEMENTS = {claim: rule.statement for claim, rule in RULES.items()}
