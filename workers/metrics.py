"""Metric names: the contract between the engine, the MLflow logs, reports and exports.

Every name is defined once here and imported wherever it is used.
"""

from __future__ import annotations

EPOCH = "epoch"

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
TEST_BEST_ACC = "test/best_acc"

ALIGN_REP = "align/rep"            # hidden representation (post-activation), train probe
ALIGN_REP_TEST = "align/rep_test"  # the same on the test probe
ALIGN_GRAD_LOGITS = "align/grad_logits"
ALIGN_GRAD = "align/grad"          # all parameters together
ALIGN_GRAD_PREFIX = "align/grad_"  # + module name of a weight-bearing layer

DYN_GRAD_NORM_RATIO_HIDDEN = "dyn/grad_norm_ratio_hidden"  # ||grad W1|| / ||W1||
DYN_WEIGHT_CHANGE_HIDDEN = "dyn/weight_change_hidden"      # ||W1 - W1(0)|| / ||W1(0)||

EVAL_METRICS = (TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, TEST_BEST_ACC)
DYN_METRICS = (DYN_GRAD_NORM_RATIO_HIDDEN, DYN_WEIGHT_CHANGE_HIDDEN)


def align_grad_layer(layer_name: str) -> str:
    """Metric name of the gradient alignment of one layer, e.g. ``align/grad_hidden``."""
    return ALIGN_GRAD_PREFIX + layer_name
