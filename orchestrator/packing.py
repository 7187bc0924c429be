"""Grouping a sweep's trials into packs: trials trained together as one batched computation
in one Tune trial (``workers.pack``).

Trials may share a pack when their configs agree on every key except sigma, seed, lr,
momentum and temperature (``workers.config.pack_key``), and, when they resume, resume from
the same epoch (a pack trains its members in lockstep). The spec's ``packing`` section says
how big packs may get::

    packing: {max_size: auto}   # default: sized by the GPU's free memory; 1 on a CPU
    packing: {max_size: 8}      # at most 8 trials per pack; 1 = every trial alone

``auto`` on a GPU takes the most members that fit in the free memory of one GPU (times the
pack's GPU share), at most ``MAX_AUTO_SIZE``, and never so few packs that GPUs sit idle: a
sweep of 40 trials on 4 GPUs runs as 4 packs of 10, not 2 of 20. On a CPU ``auto`` is 1:
packing there measured no faster (``benchmarks/README.md``): a CPU's matrix products are
already large enough to fill its cores.

Torch-free: the dry run shows the packs without loading torch or ray.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from orchestrator.expand import TrialPoint
from orchestrator.text import describe
from workers.config import pack_key
from workers.footprint import member_bytes, members_that_fit, shared_bytes

AUTO = "auto"
PACKING_DOCS = {
    "max_size": "Most trials trained together as one batched computation in one Ray trial: "
                "auto (sized by the GPU's free memory; 1 on a CPU) or an integer >= 1 "
                "(1 = every trial alone).",
}
PACKING_KEYS = tuple(PACKING_DOCS)
# Beyond about 20 members the paper's MLP already keeps an H200 at ~87% of its fp32 peak;
# bigger packs only make a crash cost more.
MAX_AUTO_SIZE = 32
# Assumed when no worker can say how much memory its GPU has free (no nvidia-smi).
ASSUMED_GPU_BYTES = 16 * 2**30


@dataclass(frozen=True)
class Packing:
    """The spec's ``packing`` section."""

    max_size: int | None = None
    """None: auto."""

    def describe(self) -> str:
        return AUTO if self.max_size is None else str(self.max_size)


def check_packing(value: Any, problems: list[str]) -> Packing | None:
    """The ``packing`` section parsed, or None (with its problems added) when it is wrong."""
    if value is None:
        return Packing()
    if not isinstance(value, dict):
        problems.append(f"packing: must be a mapping like {{max_size: auto}} or {{max_size: 8}}, "
                        f"got {describe(value)}")
        return None
    found = [f"packing.{key}: unknown key; valid keys: {', '.join(PACKING_KEYS)}"
             for key in value if key not in PACKING_KEYS]
    size = value.get("max_size", AUTO)
    if size != AUTO and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        found.append(f"packing.max_size: must be auto or an integer >= 1, got {describe(size)}")
    problems += found
    if found:
        return None
    return Packing(None if size == AUTO else size)


@dataclass(frozen=True)
class PackPlan:
    """One pack: the trials one Tune trial trains together."""

    members: tuple[TrialPoint, ...]

    @property
    def pack_id(self) -> str:
        """A trial's own id for a pack of one (its folders keep their names), else a digest
        of the members' ids."""
        if len(self.members) == 1:
            return self.members[0].trial_id
        joined = ",".join(t.trial_id for t in self.members)
        return "p" + hashlib.sha1(joined.encode()).hexdigest()[:9]

    @property
    def name(self) -> str:
        first = self.members[0].name
        return first if len(self.members) == 1 else f"{first}+{len(self.members) - 1}"


@dataclass(frozen=True)
class PackSizing:
    """How big packs may be in this sweep, and why (said on the console)."""

    cap: int
    reason: str


def decide_size(packing: Packing, trials: Sequence[TrialPoint], *, gpu_per_pack: float,
                cluster_gpus: float, free_gpu_bytes: float | None) -> PackSizing:
    """The largest pack size for this sweep (see the module doc)."""
    if packing.max_size is not None:
        return PackSizing(packing.max_size, f"packing.max_size {packing.max_size}")
    if gpu_per_pack <= 0 or not trials:
        return PackSizing(1, "packing auto on CPUs: one trial per pack")
    assumed = free_gpu_bytes is None
    device_bytes = (ASSUMED_GPU_BYTES if assumed else free_gpu_bytes) * min(1.0, gpu_per_pack)
    fits = min(members_that_fit(t.config, device_bytes) for t in trials)
    slots = max(1, math.floor(cluster_gpus / gpu_per_pack)) if cluster_gpus > 0 else 1
    spread = math.ceil(len(trials) / slots)
    cap = max(1, min(fits, MAX_AUTO_SIZE, spread))
    memory = (f"{ASSUMED_GPU_BYTES / 2**30:.0f} GiB assumed (no nvidia-smi on the workers)" if assumed
              else f"{free_gpu_bytes / 2**30:.1f} GiB free per GPU")
    return PackSizing(cap, f"packing auto: up to {cap} per pack ({memory}; {fits} fit, "
                           f"{slots} pack(s) at once, at most {MAX_AUTO_SIZE})")


def group_into_packs(trials: Sequence[TrialPoint], cap: int,
                     start_epochs: Mapping[str, int] | None = None) -> list[PackPlan]:
    """Trials that may share a pack, in spec order, split into packs of at most ``cap``.

    A group of n compatible trials becomes ceil(n / cap) packs of even sizes (10 trials with
    cap 8: 5 + 5, not 8 + 2). ``start_epochs``: trial id -> the epoch it resumes from
    (missing: 0).
    """
    start_epochs = start_epochs or {}
    position = {trial.trial_id: i for i, trial in enumerate(trials)}
    groups: dict[tuple, list[TrialPoint]] = {}
    for trial in trials:
        key = (pack_key(trial.config), start_epochs.get(trial.trial_id, 0))
        groups.setdefault(key, []).append(trial)
    packs = []
    for members in groups.values():
        count = math.ceil(len(members) / max(1, cap))
        size, extra = divmod(len(members), count)
        start = 0
        for i in range(count):
            end = start + size + (1 if i < extra else 0)
            packs.append(PackPlan(tuple(members[start:end])))
            start = end
    return sorted(packs, key=lambda p: position[p.members[0].trial_id])


def footprint_line(trials: Sequence[TrialPoint]) -> str:
    """What the dry run says about memory for ``auto`` on a GPU."""
    largest = max(trials, key=lambda t: member_bytes(t.config))
    return (f"each trial needs about {member_bytes(largest.config) / 2**20:,.0f} MiB on the GPU, "
            f"plus {shared_bytes(largest.config) / 2**20:,.0f} MiB per pack for the data")
