"""Packed trials (``workers.pack``) against the same trials run alone (``workers.trial``).

``Trial`` is the reference: a pack member must produce, to float tolerance, the records,
statuses and state of the trial it would be alone. Data is a small synthetic
``DeviceDataset`` (16x16 images so that the ConvNet fits), shared by packs and lone trials.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from workers import contract
from workers.config import ACTIVATIONS, LOSSES, TrialConfig
from workers.data import DeviceDataset
from workers.errors import XmemError
from workers.pack import PackedTrials, pack_key
from workers.trial import DIVERGED, FINISHED, Trial

CLASSES, SHAPE = 3, (2, 16, 16)
COMMON = {"hidden": 16, "batch_size": 8, "epochs": 3, "eval_every": 1, "align_every": 2,
          "probe_per_class": 4, "device": "cpu", "dataset": "cifar10"}
# The members differ in every key a pack lets them differ in. Learning rates stay tame: at an
# effective lr of 0.5 a sin ConvNet is chaotic enough to grow a 1e-7 rounding difference
# (bmm vs mm) to 1e-3 in three epochs.
MEMBERS = ({"sigma": 0.2, "seed": 1},
           {"sigma": 0.05, "seed": 2, "lr": 0.02, "momentum": 0.5},
           {"sigma": None, "seed": 3, "temperature": 2.0, "lr": 0.02})


def synthetic_data(model: str, n_train: int = 40, n_test: int = 24) -> DeviceDataset:
    """Random standardized images with labels 0..K-1 in turn; probes grouped by class."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int):
        x = torch.randn(n, *SHAPE, generator=generator)
        if model == "mlp":
            x = x.reshape(n, -1)
        y = torch.arange(n) % CLASSES
        probe = torch.cat([torch.nonzero(y == c).flatten()[:4] for c in range(CLASSES)])
        return x, y, probe

    x_train, y_train, probe_train = split(n_train)
    x_test, y_test, probe_test = split(n_test)
    return DeviceDataset(x_train, y_train, x_test, y_test, CLASSES, SHAPE, probe_train, probe_test)


def configs(model: str, activation: str = "relu", loss: str = "cross_entropy",
            members=MEMBERS, **extra) -> list[tuple[str, TrialConfig]]:
    return [(f"m{i}", TrialConfig.from_mapping({**COMMON, "model": model, "activation": activation,
                                                 "loss": loss, **extra, **member}))
            for i, member in enumerate(members)]


def run_pack(pack: PackedTrials, weights: dict | None = None) -> tuple[dict[str, list], dict[str, str]]:
    """member -> its records, member -> how it ended (and its final weights into ``weights``)."""
    records: dict[str, list] = {key: [] for key in pack.keys}
    ended: dict[str, str] = {}
    for step in pack.run():
        for key, record in step.records.items():
            records[key].append(record)
        assert not set(step.ended) & set(ended), "a member ended twice"
        assert set(step.weights) == set(step.ended)
        ended.update(step.ended)
        if weights is not None:
            weights.update(step.weights)
    return records, ended


def assert_same_records(alone, packed, *, rel=1e-4, abs_=1e-5) -> None:
    assert [r.epoch for r in packed] == [r.epoch for r in alone]
    for a, p in zip(alone, packed):
        assert set(p.metrics) == set(a.metrics), f"epoch {a.epoch}"
        for name, value in a.metrics.items():
            assert p.metrics[name] == pytest.approx(value, rel=rel, abs=abs_), f"{name} at epoch {a.epoch}"
        assert set(p.per_class) == set(a.per_class)
        for name, values in a.per_class.items():
            for v, w in zip(values, p.per_class[name]):
                assert (v is None) == (w is None), name
                if v is not None:
                    assert w == pytest.approx(v, rel=1e-3, abs=1e-4), f"{name} at epoch {a.epoch}"


@pytest.mark.parametrize("model", ["mlp", "convnet"])
@pytest.mark.parametrize("activation,loss", list(itertools.product(ACTIVATIONS, LOSSES)))
def test_each_member_equals_its_trial_alone(model, activation, loss):
    data = synthetic_data(model)
    members = configs(model, activation, loss)
    weights: dict = {}
    records, ended = run_pack(PackedTrials(members, data=data), weights)
    finished = 0
    for key, config in members:
        trial = Trial(config, data=data)
        alone = list(trial.run())
        # An unbounded activation with the squared loss blows some members up, alone as packed.
        assert ended[key] == trial.status
        assert_same_records(alone, records[key])
        if trial.status == FINISHED:
            for name, value in trial.model.state_dict().items():
                torch.testing.assert_close(weights[key][name], value, rtol=1e-3, atol=1e-5)
            finished += 1
            assert len(alone) == COMMON["epochs"] + 1
            assert contract.ALIGN_GRAD in alone[-1].per_class  # alignment compared, not skipped
    assert finished >= 1


def test_members_train_differently_from_each_other():
    """Guards against a pack that trains one member's numbers M times (shared init, shuffle or lr)."""
    records, _ = run_pack(PackedTrials(configs("mlp"), data=synthetic_data("mlp")))
    finals = [records[k][-1].metrics[contract.TRAIN_LOSS] for k in ("m0", "m1", "m2")]
    assert len({round(v, 6) for v in finals}) == 3


def test_a_diverging_member_is_frozen_and_the_others_continue():
    members = configs("mlp", "relu", "squared", members=(
        {"sigma": 0.05, "seed": 1},
        {"sigma": 30.0, "seed": 2, "lr": 10.0},   # blows up in its first epoch
        {"sigma": 0.1, "seed": 3, "lr": 0.02}), epochs=4, eval_every=2)
    data = synthetic_data("mlp")
    pack = PackedTrials(members, data=data)
    records: dict[str, list] = {key: [] for key, _ in members}
    ended: dict[str, str] = {}
    for step in pack.run():
        for key, record in step.records.items():
            records[key].append(record)
        ended.update(step.ended)
        if step.epoch == 1:  # frozen: out of the stacks, no more compute or records
            assert ended == {"m1": DIVERGED} and pack.keys == ["m0", "m2"]
            assert pack.params["hidden.weight"].shape[0] == 2
    assert ended == {"m0": FINISHED, "m1": DIVERGED, "m2": FINISHED}
    for key, config in members:
        trial = Trial(config, data=data)
        alone = list(trial.run())
        assert trial.status == ended[key]
        assert_same_records(alone, records[key])
    assert len(records["m1"]) == 1  # epoch 0 only, as alone
    assert all(math.isfinite(v) for r in records["m0"] + records["m2"] for v in r.metrics.values())


def test_member_state_is_a_trial_state_both_ways():
    """A member's checkpoint resumes alone, and a lone trial's resumes in a (new) pack."""
    data = synthetic_data("mlp")
    members = configs("mlp", epochs=5)
    pack = PackedTrials(members, data=data)
    steps = pack.run()
    for step in steps:
        if step.epoch == 2:
            break
    states = {key: pack.member_state(key) for key, _ in members}
    rest_packed, _ = run_pack_from(steps, pack)

    for key, config in members:
        uninterrupted = list(Trial(config, data=data).run())
        # member state -> a lone trial
        alone = Trial(config, data=data)
        alone.load_state_dict(states[key])
        assert_same_records(uninterrupted[3:], list(alone.run()))
        assert_same_records(uninterrupted[3:], rest_packed[key])
    # lone trials' states -> a pack regrouped from two of them, in another order
    lone = {}
    for key, config in members:
        trial = Trial(config, data=data)
        for record in trial.run():
            if record.epoch == 2:
                break
        lone[key] = trial.state_dict()
    regrouped = PackedTrials([members[2], members[0]], data=data)
    for key in ("m2", "m0"):
        regrouped.load_member_state(key, lone[key])
    records, ended = run_pack(regrouped)
    assert ended == {"m2": FINISHED, "m0": FINISHED}
    for key, config in (members[2], members[0]):
        assert_same_records(list(Trial(config, data=data).run())[3:], records[key])


def run_pack_from(steps, pack):
    records: dict[str, list] = {key: [] for key in pack.keys}
    ended: dict[str, str] = {}
    for step in steps:
        for key, record in step.records.items():
            records[key].append(record)
        ended.update(step.ended)
    return records, ended


def test_members_of_one_pack_must_resume_from_one_epoch():
    data = synthetic_data("mlp")
    members = configs("mlp", epochs=5)
    states = {}
    for stop, (key, config) in zip((1, 2), members[:2]):
        trial = Trial(config, data=data)
        for record in trial.run():
            if record.epoch == stop:
                break
        states[key] = trial.state_dict()
    pack = PackedTrials(members[:2], data=data)
    pack.load_member_state("m0", states["m0"])
    with pytest.raises(XmemError, match="same epoch"):
        pack.load_member_state("m1", states["m1"])


def test_a_pack_refuses_members_that_differ_in_a_shared_key():
    members = configs("mlp")
    other = ("x", members[0][1].replace(hidden=32))
    with pytest.raises(ValueError, match="hidden"):
        PackedTrials([members[0], other], data=synthetic_data("mlp"))
    assert pack_key(members[0][1]) == pack_key(members[1][1])
    assert pack_key(members[0][1]) != pack_key(other[1])
