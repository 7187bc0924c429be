"""Engine speed: the paper's MLP on CIFAR-10-sized data, three ways, in one run.

  (a) a typical PyTorch loop: nn.Module + torch.optim.SGD + DataLoader(TensorDataset over CPU
      tensors, shuffle=True, batch 256), each batch moved to the device;
  (b) xmem's engine: ``workers.trial.Trial`` on a device-resident ``DeviceDataset`` (on-device
      shuffling, index-sliced batches), with its evaluation and alignment schedule;
  (c) alignment on the training probe (100 per class): ``gradient_alignment`` (Gram matrices)
      against ``per_example_alignment`` (the per-example autograd loop), values compared;
  (d) packed: ``workers.pack.PackedTrials`` training M trials (different sigmas and seeds) as one
      batched computation, for each M of ``--pack-sizes`` (default 1, 5, 20), timed per
      *model-epoch* (a pack epoch / M), against the same M trials alone and against (a), (b).

Model and optimizer are the paper's: x (3072) -> W1 (1024, no bias) -> sin -> W2 (10, no bias),
W1 ~ Normal(0, sigma^2), softmax cross-entropy, plain SGD lr 0.01, batch 256. TF32 is off.

What (b) counts, with the engine's own schedule (``is_eval_epoch`` / ``is_align_epoch`` over a
trial of ``--trial-epochs``, epoch 0 included):
  train        ``Trial.train_epoch()``: on-device shuffle, SGD steps, end-of-epoch divergence check.
  align share  the alignment an alignment epoch's evaluate() adds (gradient alignment on the
               training probe, representation alignment on the test probe) x alignment epochs
               per training epoch (about 1/align_every). Probe-sized: never extrapolated.
  eval share   evaluate() on a plain epoch (loss and accuracy on every train and test example,
               hidden-layer dynamics on the probe) x evaluations per training epoch (1/eval_every).
The issue's target is on "train + align share"; "train + eval share + align share" is what a
trial with the given eval_every really costs per epoch. (a) counts training only; its epochs
alternate with (b)'s (and each pack's) so that a busy machine slows all alike. Figures are medians.

(d) counts the same shares for a pack: ``PackedTrials.train_epoch()``; ``evaluate()`` on a plain
epoch (every member's loss, accuracy and dynamics); the alignment an alignment epoch adds (the
pack's per-member alignment call for each member); all divided by M. Members get the paper's
sigmas (0.001 ... 10, cycled) and seeds 0 ... M-1. Its reference, "alone", is the same M members
as M separate ``Trial``s, one after another: one epoch of each, timed as one block that
alternates with the pack's epoch (so both span about as long a stretch of a busy machine's load;
comparing a 10 s pack epoch with the median of 0.2 s single-trial epochs would not be fair on a
shared CPU). "alone/pack" > 1 answers yes to: is one pack of M faster than M trials?

(c) times both on the same model; the loop may run on fewer examples (``--loop-examples``) and is
then scaled linearly to the probe. "Identical" is checked in float64 (model and probe cast), where
both compute the same numbers up to rounding (~1e-15); in float32 their forward passes round
differently (a batch vs one example at a time), which moves Omega by up to ~1e-5 at sigma=10:
that float32 difference is printed too.

Runs from the repository root without installing xmem (``python benchmarks/engine_speed.py``);
imports only ``workers`` (never ``orchestrator``, ray or mlflow), so it runs on a GPU machine
that has torch alone. Data: the CIFAR-10 Parquet
table when present (``--data-file``, default ../shared/data/cifar10-jpeg.parquet), else random
standardized images of the same size, said so in the output. Exit status: 0, or 1 when TF32 is
on or the alignment values differ, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from workers.alignment import gradient_alignment  # noqa: E402
from workers.alignment_reference import per_example_alignment  # noqa: E402
from workers.config import TrialConfig  # noqa: E402
from workers.data import DeviceDataset, load_dataset, per_image_standardize, probe_indices  # noqa: E402
from workers.errors import XmemError  # noqa: E402
from workers.pack import PackedTrials  # noqa: E402
from workers.trial import (Trial, is_align_epoch, is_eval_epoch, keep_float32_exact,  # noqa: E402
                           resolve_device)

DEFAULT_DATA_FILE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.parquet"
FULL_TRAIN, FULL_TEST = 50_000, 10_000  # CIFAR-10 split sizes (examples)
IMAGE_SHAPE = (32, 32, 3)               # (H, W, C): 3072 inputs once flattened
NUM_CLASSES = 10
BATCH_SIZE, LR = 256, 0.01
# per_example_alignment keeps, per example, W1's gradient and the whole parameter vector's
# (2 x 3.1M float32 = 25 MB at hidden 1024): 1000 examples need 25 GB, more than a 24 GiB CPU
# machine has, and its float64 check twice that.
CPU_LOOP_EXAMPLES = 100
CHECK_EXAMPLES = 100  # examples of the float64 identity check (10 per class)
PACK_SIGMAS = (0.001, 0.01, 0.1, 1.0, 10.0)  # the paper's grid; member i gets PACK_SIGMAS[i % 5]
DEFAULT_PACK_SIZES = (1, 5, 20)
# Defaults of options left unset; --epochs and --loop-examples also depend on the device.
FULL = {"train_size": FULL_TRAIN, "test_size": FULL_TEST, "probe_per_class": 100, "reps": 3,
        "hidden": 1024}
QUICK = {"train_size": 512, "test_size": 256, "probe_per_class": 10, "reps": 1, "hidden": 128,
         "epochs": 1, "loop_examples": 20}


# --- environment ------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]  # --clock cpu: CPU seconds of this process (all its threads)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``fn()``, with the device synchronized before both clock reads."""
    synchronize(device)
    start = clock()
    result = fn()
    synchronize(device)
    return clock() - start, result


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda), {os.cpu_count()} CPU cores"
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} (cpu), {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def tf32_state() -> dict[str, Any]:
    return {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def tf32_is_off(state: dict[str, Any]) -> bool:
    return (not state["cuda.matmul.allow_tf32"] and not state["cudnn.allow_tf32"]
            and state["float32_matmul_precision"] == "highest")


# --- data -------------------------------------------------------------------------------
def random_dataset(train_size: int, test_size: int, probe_per_class: int,
                   device: torch.device) -> DeviceDataset:
    """Random uint8 images, per-image standardized like real ones; balanced random labels."""
    generator = torch.Generator().manual_seed(0)

    def split(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (size, *IMAGE_SHAPE), dtype=torch.uint8, generator=generator)
        x = per_image_standardize(images.to(device)).reshape(size, -1)  # (N, 3072)
        labels = (torch.arange(size) % NUM_CLASSES)[torch.randperm(size, generator=generator)]
        probes = torch.from_numpy(probe_indices(labels.numpy(), probe_per_class, 0))
        return x, labels.to(device), probes.to(device)

    x_train, y_train, probe_train = split(train_size)
    x_test, y_test, probe_test = split(test_size)
    h, w, c = IMAGE_SHAPE
    return DeviceDataset(x_train, y_train, x_test, y_test, NUM_CLASSES, (c, h, w),
                         probe_train, probe_test)


def benchmark_data(args: argparse.Namespace, device: torch.device) -> tuple[DeviceDataset, str]:
    """The data every method trains on, on ``device``, and a sentence saying where it came from."""
    sizes = f"{args.train_size:,} train x 3072, {args.test_size:,} test"
    explicit = args.data_file is not None
    table = Path(args.data_file).expanduser().resolve() if explicit else DEFAULT_DATA_FILE
    if args.random_data or (args.quick and not explicit):
        why = "--random-data" if args.random_data else "--quick"
        return (random_dataset(args.train_size, args.test_size, args.probe_per_class, device),
                f"RANDOM standardized images ({why}): {sizes}")
    if not table.is_file():
        if explicit:
            raise XmemError(f"--data-file {table}: no such file")
        return (random_dataset(args.train_size, args.test_size, args.probe_per_class, device),
                f"RANDOM standardized images (no table at {table}): {sizes}")
    config = TrialConfig.from_mapping({
        "dataset": "cifar10", "data_file": str(table), "data_dir": args.data_dir,
        "train_size": None if args.train_size == FULL_TRAIN else args.train_size,
        "test_size": None if args.test_size == FULL_TEST else args.test_size,
        "probe_per_class": args.probe_per_class, "model": "mlp"}, source="benchmark data")
    subset = "" if (args.train_size, args.test_size) == (FULL_TRAIN, FULL_TEST) else " (stratified subset)"
    return load_dataset(config, device), f"CIFAR-10 from {table}{subset}: {sizes}"


# --- (a) and (b): training epochs, interleaved --------------------------------------------
class TypicalMLP(nn.Module):
    def __init__(self, hidden: int, sigma: float):
        super().__init__()
        self.hidden = nn.Linear(3072, hidden, bias=False)
        self.top = nn.Linear(hidden, NUM_CLASSES, bias=False)
        nn.init.normal_(self.hidden.weight, 0.0, sigma)
        nn.init.xavier_uniform_(self.top.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(torch.sin(self.hidden(x)))  # (B, 10)


def typical_epoch(data: DeviceDataset, hidden: int, sigma: float,
                  device: torch.device) -> Callable[[], None]:
    """One epoch of (a), as a function: the usual DataLoader loop over CPU tensors."""
    torch.manual_seed(0)
    model = TypicalMLP(hidden, sigma).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(data.x_train.cpu(), data.y_train.cpu()),
                        batch_size=BATCH_SIZE, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    def epoch() -> None:
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return epoch


def pack_members(config: TrialConfig, size: int) -> list[tuple[str, TrialConfig]]:
    """``size`` members of one pack: the benchmark trial with the paper's sigmas (cycled) and
    seeds 0 ... size-1."""
    return [(f"m{i}", config.replace(sigma=PACK_SIGMAS[i % len(PACK_SIGMAS)], seed=i))
            for i in range(size)]


def time_training(config: TrialConfig, data: DeviceDataset, args: argparse.Namespace,
                  device: torch.device) -> tuple[Trial, dict[str, list[float]],
                                                 dict[int, PackedTrials], dict[int, list[Trial]],
                                                 dict[int, dict[str, list[float]]]]:
    """The engine's trained trial, seconds of each timed epoch of (a) and of (b), the trained
    packs (M -> pack), the same members trained alone (M -> trials), and seconds of each timed
    epoch of each pack and of its members alone, one after another (M -> seconds).

    Epochs alternate (a), (b), pack M1 and its members alone (in turn first), pack M2 ...,
    (a), ... so that a busy machine slows all alike.
    """
    epoch_a = typical_epoch(data, args.hidden, args.sigma, device)
    trial = Trial(config, data)
    packs = {m: PackedTrials(pack_members(config, m), data) for m in args.pack_sizes}
    alone = {m: [Trial(c, data) for _, c in pack_members(config, m)] for m in args.pack_sizes}
    seconds_a, seconds_b = [], []
    seconds_pack: dict[int, dict[str, list[float]]] = {
        m: {"train_epoch_s": [], "alone_train_epochs_s": []} for m in args.pack_sizes}
    for index in range(args.warmup + args.epochs):
        a, _ = timed(device, epoch_a)
        b, healthy = timed(device, trial.train_epoch)
        if not healthy:
            raise XmemError("the engine's trial diverged during the benchmark; use a smaller --sigma")
        packed = {}
        for m, pack in packs.items():
            def one_by_one() -> bool:
                return all([t.train_epoch() for t in alone[m]])
            pack_first = index % 2 == 0
            for which in ("pack", "alone") if pack_first else ("alone", "pack"):
                if which == "pack":
                    packed[m, which], diverged = timed(device, pack.train_epoch)
                else:
                    packed[m, which], healthy = timed(device, one_by_one)
                    diverged = [] if healthy else ["(alone)"]
                if diverged:
                    raise XmemError(f"members {', '.join(diverged)} of the pack of {m} diverged "
                                    "during the benchmark")
        if index >= args.warmup:
            seconds_a.append(a)
            seconds_b.append(b)
            for m in packs:
                seconds_pack[m]["train_epoch_s"].append(packed[m, "pack"])
                seconds_pack[m]["alone_train_epochs_s"].append(packed[m, "alone"])
    return (trial, {"a_epoch_s": seconds_a, "train_epoch_s": seconds_b}, packs, alone,
            seconds_pack)


# --- (b): evaluation and alignment -----------------------------------------------------
def schedule_rates(config: TrialConfig) -> tuple[float, float]:
    """(evaluations, alignment evaluations) per training epoch over a trial of config.epochs,
    counted with the engine's own schedule functions (epoch 0 included)."""
    epochs = range(config.epochs + 1)
    evals = sum(is_eval_epoch(e, config) for e in epochs)
    aligns = sum(is_align_epoch(e, config) for e in epochs)
    return evals / config.epochs, aligns / config.epochs


def time_evaluation(trial: Trial, reps: int) -> dict[str, list[float]]:
    """Seconds of evaluate() on a plain epoch, of the alignment it adds on an alignment epoch,
    and, as a check of that split, of evaluate() on an alignment epoch.

    The alignment is timed on its own (``Trial._alignment``, the one call evaluate() adds on an
    alignment epoch): a difference of two evaluate() timings would drown in a busy CPU's noise.
    evaluate() on an alignment epoch is that of a fresh trial on the same data (epoch 0 always
    aligns).
    """
    config, device = trial.config, trial.device
    while is_align_epoch(trial.epoch, config):
        trial.train_epoch()
    fresh = Trial(config, trial.data)
    assert is_align_epoch(fresh.epoch, config) and not is_align_epoch(trial.epoch, config)
    plain, alignment, aligned = [], [], []
    for rep in range(1 + reps):  # the first round warms up
        times = (timed(device, trial.evaluate)[0],
                 timed(device, trial._alignment)[0],  # private on purpose: exactly the engine's call
                 timed(device, fresh.evaluate)[0])
        if rep:
            for values, seconds in zip((plain, alignment, aligned), times):
                values.append(seconds)
    return {"evaluate_plain_s": plain, "alignment_s": alignment, "evaluate_align_epoch_s": aligned}


def time_pack_evaluation(pack: PackedTrials, alone: list[Trial], reps: int) -> dict[str, list[float]]:
    """Seconds of a pack's evaluate() on a plain epoch and of the alignment an alignment epoch
    adds (the pack's per-member alignment call, once for every member), as for (b); and of
    the same for its members alone (each Trial's evaluate(), one after another)."""
    while is_align_epoch(pack.epoch, pack.config):
        if pack.train_epoch() or not all([t.train_epoch() for t in alone]):
            raise XmemError("a pack member diverged during the benchmark")
    members = range(pack.size)
    found: dict[str, list[float]] = {"evaluate_plain_s": [], "alignment_all_members_s": [],
                                     "alone_evaluate_plain_s": []}
    for rep in range(1 + reps):  # the first round warms up
        times = {"evaluate_plain_s": timed(pack.device, pack.evaluate)[0],
                 # private on purpose: exactly the calls evaluate() adds on an alignment epoch
                 "alignment_all_members_s": timed(pack.device,
                                                  lambda: [pack._alignment(i) for i in members])[0],
                 "alone_evaluate_plain_s": timed(pack.device, lambda: [t.evaluate() for t in alone])[0]}
        if rep:
            for key, seconds in times.items():
                found[key].append(seconds)
    if pack.size != len(members):
        raise XmemError("a pack member diverged during the benchmark")
    return found


# --- (c) alignment ----------------------------------------------------------------------
def first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` examples of every class."""
    return torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(NUM_CLASSES)])


def max_abs_difference(fast: dict[str, torch.Tensor], slow: dict[str, list[float]]) -> float:
    """Largest |fast - slow| over every metric and class. NaN (undefined) equals NaN; NaN
    against a number, or different metric names, is an infinite difference."""
    if set(fast) != set(slow):
        return math.inf
    worst = 0.0
    for name, values in fast.items():
        for f, s in zip(values.tolist(), slow[name]):
            if math.isnan(f) and math.isnan(s):
                continue
            diff = abs(f - s)
            worst = math.inf if math.isnan(diff) else max(worst, diff)
    return worst


def time_alignment(trial: Trial, loop_examples: int, reps: int) -> dict[str, Any]:
    """Seconds of gradient_alignment on the probe, of per_example_alignment on (part of) it,
    and the largest differences of their values in float32 and in float64."""
    data, config, device = trial.data, trial.config, trial.device
    x, y = data.x_train[data.probe_train], data.y_train[data.probe_train]  # (P, 3072), (P,)

    def fast(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        return gradient_alignment(model, xs, ys, data.num_classes, config.loss, config.temperature)

    def loop(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, list[float]]:
        return per_example_alignment(model, xs, ys, data.num_classes, config.loss, config.temperature)

    model = trial.model
    fast_probe = [timed(device, lambda: fast(model, x, y))[0] for _ in range(1 + reps)][1:]
    rows = first_per_class(y, max(2, loop_examples // NUM_CLASSES))
    x_loop, y_loop = x[rows], y[rows]
    fast_loop_set = [timed(device, lambda: fast(model, x_loop, y_loop)) for _ in range(1 + reps)][1:]
    loop(model, x_loop[:2], y_loop[:2])  # warm-up
    loop_seconds, slow = timed(device, lambda: loop(model, x_loop, y_loop))
    diff_float32 = max_abs_difference(fast_loop_set[-1][1], slow)
    del slow

    check = first_per_class(y, max(2, min(CHECK_EXAMPLES, loop_examples) // NUM_CLASSES))
    model64 = copy.deepcopy(model).double()
    x64, y_check = x[check].double(), y[check]
    diff_float64 = max_abs_difference(fast(model64, x64, y_check), loop(model64, x64, y_check))
    return {"probe_examples": len(y), "loop_examples": len(rows), "check_examples": len(check),
            "fast_probe_s": fast_probe, "fast_loop_set_s": [s for s, _ in fast_loop_set],
            "loop_s": loop_seconds, "max_abs_diff_float32": diff_float32,
            "max_abs_diff_float64": diff_float64,
            "values_compared": len(fast_loop_set[-1][1]) * NUM_CLASSES}


# --- report -----------------------------------------------------------------------------
def summarize(args: argparse.Namespace, data_source: str, device: torch.device, config: TrialConfig,
              training: dict[str, list[float]], evaluation: dict[str, list[float]],
              alignment: dict[str, Any], pack_seconds: dict[int, dict[str, list[float]]]
              ) -> dict[str, Any]:
    """Every number of the run (medians of the timed repetitions), per-epoch figures, targets."""
    median = statistics.median
    scale_train = FULL_TRAIN / args.train_size  # per-50k-epoch extrapolation, linear in examples
    scale_eval = (FULL_TRAIN + FULL_TEST) / (args.train_size + args.test_size)
    evals_per_epoch, aligns_per_epoch = schedule_rates(config)
    a = median(training["a_epoch_s"])
    train = median(training["train_epoch_s"])
    eval_plain = median(evaluation["evaluate_plain_s"])
    align = median(evaluation["alignment_s"])
    align_share = aligns_per_epoch * align  # probe-sized: does not grow with the data
    per_epoch = {  # name -> (as measured, per 50k-example epoch)
        "a_typical_loop": (a, a * scale_train),
        "b_train_epoch": (train, train * scale_train),
        "b_train_plus_align_share": (train + align_share, train * scale_train + align_share),
        "b_train_plus_eval_and_align_share": (
            train + evals_per_epoch * eval_plain + align_share,
            train * scale_train + evals_per_epoch * eval_plain * scale_eval + align_share),
    }
    fast = median(alignment["fast_probe_s"])
    loop_per_probe = alignment["loop_s"] * alignment["probe_examples"] / alignment["loop_examples"]
    b_target = per_epoch["b_train_plus_align_share"][1]
    speedup_b = per_epoch["a_typical_loop"][1] / b_target
    speedup_align = loop_per_probe / fast
    identical = alignment["max_abs_diff_float64"] <= args.identical_tol
    packed = {}
    for m, seconds in pack_seconds.items():
        p_train = median(seconds["train_epoch_s"]) / m
        p_eval = median(seconds["evaluate_plain_s"]) / m
        p_align = aligns_per_epoch * median(seconds["alignment_all_members_s"]) / m
        alone_train = median(seconds["alone_train_epochs_s"]) / m
        alone_eval = median(seconds["alone_evaluate_plain_s"]) / m
        figures = {  # per model-epoch: (as measured, per 50k-example epoch)
            "train": (p_train, p_train * scale_train),
            "train_plus_align_share": (p_train + p_align, p_train * scale_train + p_align),
            "train_plus_eval_and_align_share": (
                p_train + evals_per_epoch * p_eval + p_align,
                p_train * scale_train + evals_per_epoch * p_eval * scale_eval + p_align),
        }
        # The members alone: the same alignment (it is per member in a pack too).
        alone_all = alone_train + evals_per_epoch * alone_eval + p_align
        packed[str(m)] = {
            "members": m,
            "sigmas": [PACK_SIGMAS[i % len(PACK_SIGMAS)] for i in range(m)],
            "seconds": {k: list(v) for k, v in seconds.items()},
            "per_pack_epoch_s": {"train": median(seconds["train_epoch_s"]),
                                 "alone_train_m_epochs": median(seconds["alone_train_epochs_s"]),
                                 "evaluate_plain": median(seconds["evaluate_plain_s"]),
                                 "alone_evaluate_plain_m": median(seconds["alone_evaluate_plain_s"]),
                                 "alignment_all_members": median(seconds["alignment_all_members_s"])},
            "per_model_epoch_s": {k: {"measured": a_, "per_50k_epoch": e}
                                  for k, (a_, e) in figures.items()},
            "alone_per_model_epoch_s": {"train": alone_train, "evaluate_plain": alone_eval,
                                        "train_plus_eval_and_align_share": alone_all},
            "alone_over_pack_train": alone_train / p_train,
            "alone_over_pack_train_plus_eval_and_align": (
                alone_all / figures["train_plus_eval_and_align_share"][0]),
            # (a)/this on the target figure (train + alignment share, per 50k example epoch);
            # (b)/this like for like: is a pack of M faster than M trials one after another?
            "a_over_this": per_epoch["a_typical_loop"][1] / figures["train_plus_align_share"][1],
            "b_over_this_train": train / p_train,
            "b_over_this_train_plus_eval_and_align": (
                per_epoch["b_train_plus_eval_and_align_share"][0]
                / figures["train_plus_eval_and_align_share"][0]),
        }
    tf32 = tf32_state()
    return {
        "environment": {"device": device_description(device), "torch": torch.__version__,
                        "python": platform.python_version(), "tf32": tf32,
                        "tf32_off": tf32_is_off(tf32)},
        "data": data_source,
        "settings": {"train_size": args.train_size, "test_size": args.test_size,
                     "timed_epochs": args.epochs, "warmup_epochs": args.warmup, "reps": args.reps,
                     "sigma": args.sigma, "hidden": args.hidden, "batch_size": BATCH_SIZE,
                     "lr": LR, "eval_every": config.eval_every, "align_every": config.align_every,
                     "trial_epochs": config.epochs, "evals_per_epoch": evals_per_epoch,
                     "aligns_per_epoch": aligns_per_epoch, "probe_per_class": args.probe_per_class,
                     "pack_sizes": list(args.pack_sizes), "clock": args.clock,
                     "quick": args.quick},
        "seconds": {**training, **evaluation, **alignment},
        "per_epoch_s": {k: {"measured": m, "per_50k_epoch": e} for k, (m, e) in per_epoch.items()},
        "evaluate_plain_s": eval_plain,
        "alignment_s": align,
        "evaluate_align_epoch_s": median(evaluation["evaluate_align_epoch_s"]),
        "packed": packed,
        "alignment": {"fast_probe_s": fast, "loop_probe_s": loop_per_probe,
                      "loop_scaled": alignment["loop_examples"] != alignment["probe_examples"],
                      "speedup": speedup_align, "identical": identical},
        "targets": {
            "b_speedup_vs_a": speedup_b,
            "b_at_most_0.1_s_per_50k_epoch_incl_align_share": b_target <= 0.1,
            "b_at_least_5x_faster_than_a": speedup_b >= 5.0,
            "alignment_at_least_50x_faster_and_identical": speedup_align >= 50.0 and identical,
        },
    }


def print_report(r: dict[str, Any]) -> None:
    s, env, p, sec, al, t = (r["settings"], r["environment"], r["per_epoch_s"], r["seconds"],
                             r["alignment"], r["targets"])
    extrapolated = s["train_size"] != FULL_TRAIN
    a50 = p["a_typical_loop"]["per_50k_epoch"]
    print(f"\nxmem engine speed: MLP 3072 -> {s['hidden']} -> 10, sin, sigma={s['sigma']:g}, "
          f"cross-entropy, SGD lr {s['lr']:g}, batch {s['batch_size']}")
    print(f"device : {env['device']}")
    print(f"torch  : {env['torch']} (python {env['python']}); TF32 "
          f"{'off' if env['tf32_off'] else 'ON (results invalid)'}: "
          + ", ".join(f"{k}={v}" for k, v in env["tf32"].items()))
    print(f"data   : {r['data']}")
    clock_note = ("CPU seconds of the process (--clock cpu), " if s["clock"] == "cpu" else "")
    print(f"timing : {clock_note}medians; {s['timed_epochs']} timed epoch(s) per method after {s['warmup_epochs']} "
          f"warm-up; evaluate() and gradient_alignment {s['reps']} rep(s) after 1 warm-up")
    print(f"(b)    : eval_every={s['eval_every']}, align_every={s['align_every']} over a "
          f"{s['trial_epochs']}-epoch trial = {s['evals_per_epoch']:.4f} evaluations and "
          f"{s['aligns_per_epoch']:.4f} alignments per training epoch")

    col = "s per 50k epoch" + (" (extrapolated)" if extrapolated else "")
    print(f"\n{'seconds per epoch':<58}{'measured':>9}  {col:>30}  {'(a)/this':>8}")
    for label, key in [
            ("(a) typical loop: DataLoader, .to(device) per batch", "a_typical_loop"),
            ("(b) engine: train_epoch", "b_train_epoch"),
            ("(b) engine: train_epoch + alignment share  [target]", "b_train_plus_align_share"),
            ("(b) engine: train_epoch + eval + alignment shares", "b_train_plus_eval_and_align_share")]:
        measured, full = p[key]["measured"], p[key]["per_50k_epoch"]
        print(f"{label:<58}{measured:>9.4f}  {full:>30.4f}  {a50 / full:>7.2f}x")
    print(f"    evaluate(): {r['evaluate_plain_s']:.4f} s on a plain epoch; alignment adds "
          f"{r['alignment_s']:.4f} s (probe-sized, not extrapolated); check: evaluate() on an "
          f"alignment epoch {r['evaluate_align_epoch_s']:.4f} s")

    if r["packed"]:
        print_packed(r, extrapolated)

    loop_note = (f"   (measured {sec['loop_s']:.3f} s on {sec['loop_examples']} examples, scaled)"
                 if al["loop_scaled"] else "")
    print(f"\n{'(c) alignment, training probe of ' + str(sec['probe_examples']) + ' examples':<58}"
          f"{'seconds':>9}  {'loop/this':>9}")
    print(f"{'    gradient_alignment (Gram matrices)':<58}{al['fast_probe_s']:>9.4f}  {al['speedup']:>8.1f}x")
    print(f"{'    per_example_alignment (autograd loop)':<58}{al['loop_probe_s']:>9.4f}{loop_note}")
    fast_loop_set = statistics.median(sec["fast_loop_set_s"])
    print(f"    on the loop's {sec['loop_examples']} examples: Gram {fast_loop_set:.4f} s, "
          f"loop {sec['loop_s']:.4f} s; {sec['values_compared']} values")
    print(f"    max |Gram - loop|: float64 {sec['max_abs_diff_float64']:.1e} on {sec['check_examples']} "
          f"examples -> {'identical' if al['identical'] else 'DIFFERENT'}; float32 "
          f"{sec['max_abs_diff_float32']:.1e} (forward-pass rounding, batch vs single example)")

    verdict = {True: "yes", False: "NO"}
    where = "; from extrapolated figures" if extrapolated else ""
    print(f"\ntargets (set for one H100/H200 on full 50k epochs{where}):")
    print(f"    (b) <= 0.1 s per epoch incl. alignment share : "
          f"{verdict[t['b_at_most_0.1_s_per_50k_epoch_incl_align_share']]}")
    print(f"    (b) >= 5x faster than (a)                    : "
          f"{verdict[t['b_at_least_5x_faster_than_a']]} ({t['b_speedup_vs_a']:.2f}x)")
    print(f"    alignment >= 50x faster, identical values    : "
          f"{verdict[t['alignment_at_least_50x_faster_and_identical']]} ({al['speedup']:.1f}x)")


def print_packed(r: dict[str, Any], extrapolated: bool) -> None:
    """The (d) table: seconds per model-epoch of each pack and of its members alone; ratios."""
    p = r["per_epoch_s"]
    col = "per 50k" + (" (extr.)" if extrapolated else "")
    print(f"\n(d) packed: PackedTrials of M members (sigmas {', '.join(f'{s:g}' for s in PACK_SIGMAS)}"
          f" cycled, seeds 0..M-1) vs the same M members alone (M Trials, one after another);")
    print("    seconds per model-epoch (= per pack epoch / M)")
    widths = (10, 9, 9, 11, 3, 9, 9, 11, 3, 16, 10, 10)
    def row(*cells: str) -> None:
        print("".join(f"{c:<{w}}" if k == 0 else f"{c:>{w}}" for k, (c, w) in enumerate(zip(cells, widths))))
    print(f"{'':<10}{'train only':^29}{'':<3}{'train + eval + align shares':^29}{'':<3}{col:>16}")
    row("", "pack", "alone", "alone/pack", "", "pack", "alone", "alone/pack", "",
        "pack + align", "(a)/pack", "(b)/pack")
    b = p["b_train_plus_eval_and_align_share"]["measured"]
    row("    (b)", f"{p['b_train_epoch']['measured']:.4f}", "", "", "", "", f"{b:.4f}", "", "", "", "", "")
    for m, pk in r["packed"].items():
        f, al = pk["per_model_epoch_s"], pk["alone_per_model_epoch_s"]
        row(f"    M={m}", f"{f['train']['measured']:.4f}", f"{al['train']:.4f}",
            f"{pk['alone_over_pack_train']:.2f}x", "",
            f"{f['train_plus_eval_and_align_share']['measured']:.4f}",
            f"{al['train_plus_eval_and_align_share']:.4f}",
            f"{pk['alone_over_pack_train_plus_eval_and_align']:.2f}x", "",
            f"{f['train_plus_align_share']['per_50k_epoch']:.4f}", f"{pk['a_over_this']:.2f}x",
            f"{pk['b_over_this_train']:.2f}x")
    for m, pk in r["packed"].items():
        e = pk["per_pack_epoch_s"]
        print(f"    M={m}: pack epoch {e['train']:.4f} s vs {m} trial epochs {e['alone_train_m_epochs']:.4f} s; "
              f"evaluate() {e['evaluate_plain']:.4f} s vs {e['alone_evaluate_plain_m']:.4f} s; "
              f"alignment of all members {e['alignment_all_members']:.4f} s")
    print("    alone/pack > 1: one pack of M is faster than its M members as separate trials;"
          " (a)/pack on the target figure, (b)/pack on train")


# --- entry point ------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--epochs", type=int, help="timed epochs per method (default 5 on cuda, 2 on cpu; --quick 1)")
    add("--warmup", type=int, default=1, help="untimed warm-up epochs per method (default 1)")
    add("--reps", type=int, help="timed repetitions of evaluate() and gradient_alignment (default 3)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add("--train-size", type=int, help="training examples (default 50000); with fewer, per-50k "
        "figures are extrapolated linearly and labeled so")
    add("--test-size", type=int, help="test examples evaluated (default 10000)")
    add("--data-file", help=f"CIFAR-10 Parquet table (default {DEFAULT_DATA_FILE}, when present)")
    add("--data-dir", default="~/.cache/xmem/data", help="where decoded images are cached")
    add("--random-data", action="store_true", help="random images even when the table exists")
    add("--sigma", type=float, default=1.0, help="std of W1's initial weights (default 1)")
    add("--hidden", type=int, help="hidden width (default 1024, the paper's; --quick 128)")
    add("--eval-every", type=int, default=1, help="the trial's eval_every (default 1, as the engine)")
    add("--align-every", type=int, default=10, help="the trial's align_every (default 10)")
    add("--trial-epochs", type=int, default=2000,
        help="trial length over which evaluation and alignment are amortized (default 2000)")
    add("--probe-per-class", type=int, help="alignment probe examples per class (default 100)")
    add("--loop-examples", type=int, help="examples the per-example loop runs on (default: the "
        f"whole probe on cuda, {CPU_LOOP_EXAMPLES} on cpu for memory); its time is scaled to the probe")
    add("--identical-tol", type=float, default=1e-9,
        help="largest float64 |difference| counted as identical (default 1e-9)")
    add("--quick", action="store_true", help="smoke test in seconds: tiny sizes, hidden 128, "
        "1 epoch, random data unless --data-file")
    add("--threads", type=int, help="torch CPU threads (default: torch's own; a Ray trial "
        "with cpu: 1 gets 1)")
    add("--clock", choices=tuple(CLOCKS), default="wall", help="wall (default), or cpu: CPU "
        "seconds of this process, steadier than wall time on a shared CPU with --threads 1 "
        "(cpu only)")
    add("--pack-sizes", default=",".join(map(str, DEFAULT_PACK_SIZES)),
        help="members of each pack timed in (d), comma-separated (default 1,5,20; '' skips (d))")
    add("--json", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.pack_sizes = sorted({int(m) for m in args.pack_sizes.split(",") if m.strip()})
    except ValueError:
        parser.error(f"--pack-sizes: comma-separated integers, got {args.pack_sizes!r}")
    if any(m < 1 for m in args.pack_sizes):
        parser.error("--pack-sizes: every size must be >= 1")
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:  # an explicit option wins over --quick
            setattr(args, key, value)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise XmemError("--device cuda: torch sees no CUDA GPU here; use --device auto or cpu")
    device = resolve_device(args.device)
    global clock
    if args.clock == "cpu" and device.type != "cpu":
        raise XmemError("--clock cpu: only on a CPU device (a GPU runs asynchronously)")
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs is None:
        args.epochs = 5 if device.type == "cuda" else 2
    if args.loop_examples is None:
        args.loop_examples = (args.probe_per_class * NUM_CLASSES if device.type == "cuda"
                              else CPU_LOOP_EXAMPLES)
    keep_float32_exact()  # for (a) too; Trial() sets it again
    config = TrialConfig.from_mapping({
        "dataset": "cifar10", "model": "mlp", "hidden": args.hidden, "activation": "sin",
        "sigma": args.sigma, "loss": "cross_entropy", "lr": LR, "batch_size": BATCH_SIZE,
        "epochs": args.trial_epochs, "device": device.type, "eval_every": args.eval_every,
        "align_every": args.align_every, "probe_per_class": args.probe_per_class},
        source="benchmark trial")
    print(f"loading data on {device} ...", flush=True)
    data, source = benchmark_data(args, device)
    packs_note = f", packs of {', '.join(map(str, args.pack_sizes))}" if args.pack_sizes else ""
    print(f"(a), (b){packs_note} training: {args.warmup} + {args.epochs} epochs each, alternating ...",
          flush=True)
    trial, training, packs, alone, pack_training = time_training(config, data, args, device)
    print(f"(b) evaluate() and alignment: 1 + {args.reps} rounds ...", flush=True)
    evaluation = time_evaluation(trial, args.reps)
    pack_seconds = {}
    for m, pack in packs.items():
        print(f"(d) pack of {m}: evaluate() and alignment: 1 + {args.reps} rounds ...", flush=True)
        pack_seconds[m] = {**pack_training[m], **time_pack_evaluation(pack, alone[m], args.reps)}
    del packs, alone
    print(f"(c) alignment: Gram on {len(data.probe_train)} examples, loop on up to "
          f"{args.loop_examples}, float64 check ...", flush=True)
    alignment = time_alignment(trial, args.loop_examples, args.reps)
    return summarize(args, source, device, config, training, evaluation, alignment, pack_seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except XmemError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if results["environment"]["tf32_off"] and results["alignment"]["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
