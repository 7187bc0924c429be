"""Grouping a sweep into packs (``orchestrator.packing``), the spec's ``packing`` key, pack
sizing, and what the dry run shows. Fast and offline: no ray, mlflow or torch.

No GPU runs here: the free-memory figures given to ``decide_size`` stand in for what
``nvidia-smi`` on a worker would say (a stand-in named as such, for hardware we lack).
"""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from conftest import assert_user_error
from orchestrator.cli import main
from orchestrator.expand import expand_trials
from orchestrator.packing import (MAX_AUTO_SIZE, Packing, decide_size, group_into_packs)
from orchestrator.spec import load_spec
from workers.config import TrialConfig
from workers.errors import ConfigError
from workers.footprint import member_bytes, members_that_fit, shared_bytes

GIB = 2**30


def _spec(tmp_path, body: str):
    path = tmp_path / "spec.yaml"
    path.write_text("name: packs\n" + textwrap.dedent(body))
    return path


def _trials(tmp_path, body: str):
    return expand_trials(load_spec(_spec(tmp_path, body)))


GRID = """
defaults: {dataset: cifar10, epochs: 5}
grid:
  hidden: [64, 128]
  sigma: [0.01, 0.1, 1.0]
  seed: [0, 1]
"""


def test_packs_hold_only_trials_that_may_train_together(tmp_path):
    trials = _trials(tmp_path, GRID)
    packs = group_into_packs(trials, cap=4)
    # 6 trials per hidden size, cap 4: two packs of 3 each (even sizes, not 4 + 2)
    assert [len(p.members) for p in packs] == [3, 3, 3, 3]
    for pack in packs:
        assert len({t.config.hidden for t in pack.members}) == 1
    assert sorted(t.trial_id for p in packs for t in p.members) == sorted(t.trial_id for t in trials)
    assert len({p.pack_id for p in packs}) == 4
    # spec order is kept inside and across packs
    order = [t.trial_id for p in packs for t in p.members]
    assert order == [t.trial_id for t in trials]


def test_cap_one_is_every_trial_alone_with_its_own_id(tmp_path):
    trials = _trials(tmp_path, GRID)
    packs = group_into_packs(trials, cap=1)
    assert [p.pack_id for p in packs] == [t.trial_id for t in trials]
    assert [p.name for p in packs] == [t.name for t in trials]


def test_resumed_trials_pack_only_with_trials_at_the_same_epoch(tmp_path):
    trials = _trials(tmp_path, GRID)[:6]   # hidden 64: all compatible
    epochs = {trials[0].trial_id: 3, trials[1].trial_id: 3, trials[2].trial_id: 4}
    packs = group_into_packs(trials, cap=8, start_epochs=epochs)
    groups = sorted(sorted(t.trial_id for t in p.members) for p in packs)
    assert groups == sorted([sorted([trials[0].trial_id, trials[1].trial_id]),
                             [trials[2].trial_id],
                             sorted(t.trial_id for t in trials[3:])])


def test_a_pack_name_says_how_many_trials_it_holds(tmp_path):
    pack = group_into_packs(_trials(tmp_path, GRID), cap=3)[0]
    assert pack.name == pack.members[0].name + "+2"
    assert pack.pack_id.startswith("p") and len(pack.pack_id) == 10


def test_auto_is_one_per_pack_on_cpus(tmp_path):
    trials = _trials(tmp_path, GRID)
    sizing = decide_size(Packing(), trials, gpu_per_pack=0, cluster_gpus=0, free_gpu_bytes=None)
    assert sizing.cap == 1 and "CPU" in sizing.reason
    assert decide_size(Packing(5), trials, gpu_per_pack=0, cluster_gpus=0,
                       free_gpu_bytes=None).cap == 5


def test_auto_on_a_gpu_is_bounded_by_memory_by_idle_gpus_and_by_the_maximum(tmp_path):
    trials = _trials(tmp_path, GRID)   # 12 trials
    big = 80 * GIB                     # stand-in: a worker's nvidia-smi reading
    one_gpu = decide_size(Packing(), trials, gpu_per_pack=1, cluster_gpus=1, free_gpu_bytes=big)
    assert one_gpu.cap == 12           # everything fits; one GPU: one pack per group
    four_gpus = decide_size(Packing(), trials, gpu_per_pack=1, cluster_gpus=4, free_gpu_bytes=big)
    assert four_gpus.cap == 3          # 12 trials over 4 GPUs: no GPU idle
    config = max((t.config for t in trials), key=member_bytes)
    tight = shared_bytes(config) / 0.7 + 2.5 * member_bytes(config) / 0.7
    tight_gpu = decide_size(Packing(), trials, gpu_per_pack=1, cluster_gpus=1, free_gpu_bytes=tight)
    assert tight_gpu.cap == 2
    many = _trials(tmp_path, "defaults: {dataset: digits, hidden: 8}\ngrid:\n  seed: " +
                   str(list(range(100))) + "\n")
    assert decide_size(Packing(), many, gpu_per_pack=1, cluster_gpus=1,
                       free_gpu_bytes=big).cap == MAX_AUTO_SIZE
    half = decide_size(Packing(), trials, gpu_per_pack=0.5, cluster_gpus=1, free_gpu_bytes=tight)
    assert half.cap == 1               # half of a tight GPU holds one


def test_unknown_gpu_memory_assumes_a_small_gpu(tmp_path):
    trials = _trials(tmp_path, GRID)
    sizing = decide_size(Packing(), trials, gpu_per_pack=1, cluster_gpus=1, free_gpu_bytes=None)
    assert "assumed" in sizing.reason and sizing.cap >= 1


def test_footprint_grows_with_the_model_and_data():
    small = TrialConfig(dataset="cifar10", hidden=256)
    large = small.replace(hidden=1024)
    assert member_bytes(large) > 3 * member_bytes(small)
    assert shared_bytes(small.replace(train_size=1000)) < shared_bytes(small)
    # the paper's MLP on CIFAR-10: 3072 x 1024 + 1024 x 10 weights, 4 copies, fp32
    assert member_bytes(large) >= 4 * 4 * (3072 * 1024 + 1024 * 10)
    assert members_that_fit(large, 80 * GIB) > members_that_fit(large, 16 * GIB) > 1
    assert members_that_fit(large, 0) == 1


@pytest.mark.parametrize("body, expected", [
    ("packing: 4\n", "packing: must be a mapping"),
    ("packing: {max_size: 0}\n", "packing.max_size: must be auto or an integer >= 1, got"),
    ("packing: {max_size: big}\n", "packing.max_size"),
    ("packing: {max_sise: 4}\n", "packing.max_sise: unknown key"),
])
def test_bad_packing_is_a_clear_spec_error(tmp_path, body, expected):
    path = _spec(tmp_path, "grid: {sigma: [1.0]}\n" + body)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    assert expected in str(caught.value) and str(path) in str(caught.value)
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    assert_user_error(result, str(path), expected)


def test_packing_defaults_to_auto_and_reads_a_size(tmp_path):
    assert load_spec(_spec(tmp_path, "grid: {sigma: [1.0]}\n")).packing == Packing(None)
    assert load_spec(_spec(tmp_path, "grid: {sigma: [1.0]}\npacking: {max_size: 6}\n")).packing == Packing(6)
    assert load_spec(_spec(tmp_path, "grid: {sigma: [1.0]}\npacking: {max_size: auto}\n")).packing == Packing(None)


def test_dry_run_shows_the_packs(tmp_path):
    path = _spec(tmp_path, GRID + "packing: {max_size: 4}\n")
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("trial_id"))
    assert header.split()[-1] == "pack"
    assert "12 trials in 4 packs" in result.output
    rows = [line.split() for line in result.output.splitlines()
            if len(line.split()) == len(header.split()) and line != header]
    assert sorted({row[-1] for row in rows}) == ["1", "2", "3", "4"]
    assert "packing.max_size 4" in result.output


def test_dry_run_says_when_the_gpu_decides(tmp_path):
    path = _spec(tmp_path, GRID + "resources: {cpu: 1, gpu: 1}\n")
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "sized at launch from the free memory" in result.output
    assert "MiB on the GPU" in result.output
