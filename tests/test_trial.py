"""The trial loop: memorization contrast, determinism, save/restore, divergence, metrics."""

from __future__ import annotations

import io
import json

import pytest
import torch

from workers import contract
from workers.config import TrialConfig
from workers.trial import DIVERGED, FINISHED, Trial, is_align_epoch, is_eval_epoch

SMALL = {"dataset": "digits", "hidden": 128, "probe_per_class": 10, "batch_size": 64,
         "train_size": 300, "test_size": 200}


def _config(tmp_path, **values) -> TrialConfig:
    return TrialConfig.from_mapping({**SMALL, "data_dir": str(tmp_path / "data"), **values})


def _records(trial: Trial) -> list[dict]:
    return [record.flat() for record in trial.run()]


def test_sin_memorizes_at_large_sigma_and_generalizes_at_small_sigma(tmp_path):
    """The paper's claim 1 on digits (bigger width and small batches so 40 epochs suffice)."""
    common = {"hidden": 512, "batch_size": 16, "epochs": 40, "eval_every": 40, "align_every": 40,
              "train_size": None, "test_size": None}
    large = Trial(_config(tmp_path, sigma=10.0, **common))
    small = Trial(_config(tmp_path, sigma=0.01, **common))
    last_large, last_small = _records(large)[-1], _records(small)[-1]
    assert last_large[contract.TRAIN_ACC] > 0.95
    assert last_large[contract.TEST_ACC] < 0.2          # chance is 0.1
    assert last_small[contract.TEST_ACC] > 0.85
    assert last_small[contract.ALIGN_GRAD] > last_large[contract.ALIGN_GRAD] + 0.1   # claim 2
    assert last_small[contract.ALIGN_REP] > last_large[contract.ALIGN_REP] + 0.1


def test_records_carry_the_metric_contract_on_the_schedule(tmp_path):
    config = _config(tmp_path, epochs=7, eval_every=2, align_every=3, sigma=1.0)
    records = _records(Trial(config))
    assert [r[contract.EPOCH] for r in records] == [0, 2, 4, 6, 7]
    aligned = [r[contract.EPOCH] for r in records if contract.ALIGN_GRAD in r]
    assert aligned == [0, 4, 6, 7]   # first evaluated epoch at/after 3 and 6, plus first and last
    expected = set(contract.EVAL_METRICS) | set(contract.DYN_METRICS) | {
        contract.ALIGN_REP, contract.ALIGN_REP_TEST, contract.ALIGN_GRAD_LOGITS, contract.ALIGN_GRAD,
        "align/grad_hidden", "align/grad_top"}
    assert set(records[0]) - {contract.EPOCH} == expected
    best = 0.0
    for r in records:
        best = max(best, r[contract.TEST_ACC])
        assert r[contract.TEST_BEST_ACC] == best
    assert records[0][contract.DYN_WEIGHT_CHANGE_HIDDEN] == 0.0
    assert records[-1][contract.DYN_WEIGHT_CHANGE_HIDDEN] > 0.0


def test_schedule_functions():
    config = TrialConfig(epochs=25, eval_every=5, align_every=10)
    assert [e for e in range(26) if is_eval_epoch(e, config)] == [0, 5, 10, 15, 20, 25]
    assert [e for e in range(26) if is_align_epoch(e, config)] == [0, 10, 20, 25]


def test_same_config_and_seed_give_bit_identical_metrics(tmp_path):
    config = _config(tmp_path, epochs=3, sigma=1.0)
    first, second = _records(Trial(config)), _records(Trial(config))
    assert json.dumps(first) == json.dumps(second)
    other_seed = _records(Trial(config.replace(seed=1)))
    assert other_seed[-1][contract.TRAIN_LOSS] != first[-1][contract.TRAIN_LOSS]


@pytest.mark.parametrize("model_keys", [{"sigma": 1.0, "momentum": 0.9}])
def test_restored_trial_continues_exactly_like_an_uninterrupted_one(tmp_path, model_keys):
    config = _config(tmp_path, epochs=6, eval_every=1, align_every=2, **model_keys)
    uninterrupted = _records(Trial(config))

    interrupted = Trial(config)
    before = []
    for record in interrupted.run():
        before.append(record.flat())
        if record.epoch == 3:
            break
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)

    restored = Trial(config)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    after = _records(restored)
    assert restored.status == FINISHED
    assert json.dumps(before + after) == json.dumps(uninterrupted)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    from workers.errors import XmemError

    state = Trial(_config(tmp_path, epochs=1, sigma=1.0)).state_dict()
    with pytest.raises(XmemError, match="sigma"):
        Trial(_config(tmp_path, epochs=1, sigma=2.0)).load_state_dict(state)


def test_divergence_is_a_result_not_a_crash(tmp_path):
    """Squared loss with a huge step blows up (the paper's claim 8): status diverged, earlier records kept."""
    config = _config(tmp_path, activation="relu", loss="squared", sigma=10.0, lr=10.0, epochs=20)
    trial = Trial(config)
    records = _records(trial)
    assert trial.status == DIVERGED
    assert records and records[0][contract.EPOCH] == 0
    assert trial.epoch < 20
    for record in records:
        assert all(value == value for value in record.values())  # no NaN was reported


def test_best_test_accuracy_keeps_the_maximum_of_a_falling_accuracy(tmp_path, monkeypatch):
    """The test accuracy is scripted to rise, then fall (a stand-in for a trial that peaks
    early): best must hold the peak, not follow the last value."""
    scripted = iter([0.5, 0.7, 0.6, 0.4])
    measure = Trial._loss_and_accuracy

    def scripted_test_accuracy(self, x, y):
        loss, accuracy = measure(self, x, y)
        return (loss, next(scripted)) if x is self.data.x_test else (loss, accuracy)

    monkeypatch.setattr(Trial, "_loss_and_accuracy", scripted_test_accuracy)
    records = _records(Trial(_config(tmp_path, epochs=3, sigma=1.0)))
    assert [r[contract.TEST_ACC] for r in records] == [0.5, 0.7, 0.6, 0.4]
    assert [r[contract.TEST_BEST_ACC] for r in records] == [0.5, 0.7, 0.7, 0.7]


def test_hidden_layer_dynamics_match_a_hand_computation(tmp_path):
    """dyn/grad_norm_ratio_hidden = ||dL/dW1|| / ||W1|| with L the mean loss over the training
    probe, and dyn/weight_change_hidden = ||W1 - W1(0)|| / ||W1(0)||, recomputed here from the
    trained model and a fresh trial's initial weights."""
    config = _config(tmp_path, epochs=2, sigma=0.5)
    initial = Trial(config).model.hidden.weight.detach().clone()
    trial = Trial(config)
    last = _records(trial)[-1]
    weight = trial.model.hidden.weight
    probe = trial.data.probe_train
    loss = torch.nn.functional.cross_entropy(trial.model(trial.data.x_train[probe]),
                                             trial.data.y_train[probe])
    (grad,) = torch.autograd.grad(loss, [weight])
    assert last[contract.DYN_GRAD_NORM_RATIO_HIDDEN] == pytest.approx(
        float(grad.norm() / weight.detach().norm()), rel=1e-5)
    assert last[contract.DYN_WEIGHT_CHANGE_HIDDEN] == pytest.approx(
        float((weight.detach() - initial).norm() / initial.norm()), rel=1e-5)
    assert last[contract.DYN_WEIGHT_CHANGE_HIDDEN] > 0
