"""Sweep speed: one 20-trial CIFAR-10 MLP sweep through the whole product, three ways.

  (1) unpacked, a whole device per trial: ``packing: {max_size: 1}``, ``resources: {gpu: 1}``
      (on a CPU machine: ``{cpu: 1}``, one trial per core);
  (2) unpacked, fractional resources: ``packing: {max_size: 1}``, ``resources: {gpu: 0.25}``
      (on a CPU machine: ``{cpu: 0.5}``, two trials per core, i.e. oversubscribed);
  (3) packed: ``packing: {max_size: auto}``, ``resources: {gpu: 1}`` (on a CPU machine, where
      auto means 1: ``max_size: 20``, i.e. every trial in one pack, holding every core).

Each way is a real ``xmem sweep`` (``orchestrator.run.run_sweep``) in its own Python process,
its own temporary ``--storage``, its own local Ray cluster (its own short temp dir under /tmp)
and its own embedded MLflow server (no tracking URI: the sweep starts one under the storage):
Tune, the workers' MLflow logging, checkpoints and the driver's progress all count. What is
timed is the sweep's own ``timings['trials_s']`` (from the launch of the trials until the last
one ends; Ray and MLflow start-up and the final summary excluded), divided by
trials x epochs: seconds per *model-epoch*. The process's wall time and the sweep's
``total_s``, ``ray_start_s`` and ``mlflow_start_s`` are printed too.

The grid: sigma in the paper's five values (0.001 ... 10) x ``--trials / 5`` seeds; sin MLP,
cross-entropy, SGD lr 0.01, batch 256, ``eval_every`` 1, ``align_every`` 10.

  GPU (default when torch sees one): all 50,000 / 10,000 CIFAR-10 images, hidden 1024,
      100 epochs, probe 100 per class. The issue's targets on an H100/H200: (3) at most
      0.015 s per model-epoch; (3) at least 5x faster than (2).
  CPU: a small configuration of a few minutes on 2 cores: 2,000 / 500 images, hidden 256,
      10 epochs, probe 20 per class.

Data: the CIFAR-10 Parquet table (``--data-file``, default ../shared/data/cifar10-jpeg.parquet)
when present, otherwise scikit-learn's offline ``digits`` (said so in the output). The table is
decoded into the cache once before the first sweep, so that no way pays for it.

Run from the repository root: ``python benchmarks/sweep_speed.py [--quick] [--json PATH]``
(needs xmem's dependencies: ray[tune], mlflow, torch). Exit status 0 when every trial of every
way finished, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_DATA_FILE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.parquet"
SIGMAS = (0.001, 0.01, 0.1, 1.0, 10.0)
WAYS = {
    1: "unpacked, one trial per device",
    2: "unpacked, fractional resources",
    3: "packed",
}
# Defaults per device (an explicit option wins).
GPU_DEFAULTS = {"train_size": None, "test_size": None, "hidden": 1024, "epochs": 100,
                "probe_per_class": 100}
CPU_DEFAULTS = {"train_size": 2000, "test_size": 500, "hidden": 256, "epochs": 10,
                "probe_per_class": 20}
QUICK = {"trials": 5, "train_size": 500, "test_size": 200, "hidden": 64, "epochs": 3,
         "probe_per_class": 5}
TARGET_PACKED_S = 0.015          # per model-epoch through the product, on an H100/H200
TARGET_PACKED_VS_FRACTIONAL = 5.0


# --- one sweep, in a child process -------------------------------------------------------
def child(spec_path: str, storage: str, out_path: str) -> int:
    """Run one sweep (``run_sweep``, embedded MLflow server under ``storage``) and write what
    it measured to ``out_path`` as JSON."""
    from orchestrator.run import run_sweep

    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    started = time.perf_counter()
    outcome = run_sweep(spec_path, storage=storage, echo=echo)
    statuses: dict[str, int] = {}
    for row in outcome.rows:
        statuses[str(row["status"])] = statuses.get(str(row["status"]), 0) + 1
    packs = next((m.groups() for m in map(re.compile(r"^(\d+) trials? in (\d+) packs? \((.*)\)$").match,
                                           lines) if m), None)
    result = {"timings": outcome.timings, "statuses": statuses, "trials": len(outcome.rows),
              "exit_code": outcome.exit_code, "in_process_s": time.perf_counter() - started,
              "packs": int(packs[1]) if packs else len(outcome.rows),
              "packing": packs[2] if packs else "one trial per pack",
              "best_test_acc": {row["name"]: row.get("test/best_acc") for row in outcome.rows},
              "errors": {row["name"]: row.get("error") for row in outcome.rows if row.get("error")}}
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


# --- the parent ---------------------------------------------------------------------------
def spec_text(name: str, args: argparse.Namespace, data: dict[str, Any], resources: dict[str, float],
              max_size: int | str) -> str:
    seeds = list(range(max(1, args.trials // len(SIGMAS))))
    sigmas = list(SIGMAS[:args.trials]) if args.trials < len(SIGMAS) else list(SIGMAS)
    defaults = {**data, "model": "mlp", "activation": "sin", "loss": "cross_entropy",
                "hidden": args.hidden, "lr": 0.01, "momentum": 0.0, "batch_size": 256,
                "epochs": args.epochs, "eval_every": 1, "align_every": 10,
                "probe_per_class": args.probe_per_class,
                "train_size": args.train_size, "test_size": args.test_size}
    spec = {"name": name, "description": f"benchmarks/sweep_speed.py: {name}",
            "defaults": defaults, "grid": {"sigma": sigmas, "seed": seeds},
            "resources": resources, "packing": {"max_size": max_size}, "max_failures": 0}
    return json.dumps(spec, indent=2) + "\n"  # JSON is YAML


def ways(args: argparse.Namespace, gpu: bool) -> dict[int, tuple[dict[str, float], int | str]]:
    """way -> (resources, packing.max_size)."""
    if gpu:
        return {1: ({"cpu": 1, "gpu": 1}, 1),
                2: ({"cpu": 1, "gpu": args.gpu_fraction}, 1),
                3: ({"cpu": 1, "gpu": 1}, args.pack_size)}
    return {1: ({"cpu": 1, "gpu": 0}, 1),
            2: ({"cpu": args.cpu_fraction, "gpu": 0}, 1),
            3: ({"cpu": args.pack_cpu, "gpu": 0}, args.pack_size)}


def data_settings(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    explicit = args.data_file is not None
    table = Path(args.data_file).expanduser().resolve() if explicit else DEFAULT_DATA_FILE
    if args.dataset == "digits":
        return {"dataset": "digits"}, "digits (scikit-learn's bundled 8x8 images, --dataset digits)"
    if table.is_file():
        return {"dataset": "cifar10", "data_file": str(table)}, f"CIFAR-10 from {table}"
    if explicit:
        raise SystemExit(f"error: --data-file {table}: no such file")
    return ({"dataset": "digits"},
            f"DIGITS, not CIFAR-10 (no table at {table}): scikit-learn's bundled 8x8 images")


def warm_cache(data: dict[str, Any]) -> float:
    """Decode the dataset into xmem's cache once (the first sweep would pay for it otherwise)."""
    from workers.config import TrialConfig
    from workers.data import load_dataset

    started = time.perf_counter()
    load_dataset(TrialConfig.from_mapping({**data, "train_size": 100, "test_size": 100,
                                           "probe_per_class": 2}, source="cache warm-up"), "cpu")
    return time.perf_counter() - started


def run_way(way: str, spec: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = workdir / f"way{way}"
    folder.mkdir()
    spec_path = folder / "spec.yaml"
    spec_path.write_text(spec)
    out = folder / "outcome.json"
    log = folder / "sweep.log"
    ray_tmp = tempfile.mkdtemp(prefix="xr-", dir="/tmp")  # Ray's socket paths must be short
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    try:
        with open(log, "w") as stream:
            code = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--child",
                                    str(spec_path), str(folder / "storage"), str(out)],
                                   cwd=REPO_ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                   timeout=args.timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.perf_counter() - started
    if code != 0 or not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"way ({way}): the sweep process exited with {code}; last lines of {log}:\n{tail}")
    result = json.loads(out.read_text())
    result["process_wall_s"] = wall
    return result


def merge_repeats(found: list[dict[str, Any]]) -> dict[str, Any]:
    """One way's repetitions as one result: medians of the times, statuses summed."""
    median = statistics.median
    statuses: dict[str, int] = {}
    for r in found:
        for status, n in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    return {**found[0], "exit_code": max(r["exit_code"] for r in found),
            "errors": {k: v for r in found for k, v in r["errors"].items()},
            "timings": {k: median(r["timings"][k] for r in found if k in r["timings"])
                        for k in found[0]["timings"]},
            "process_wall_s": median(r["process_wall_s"] for r in found),
            "statuses": statuses, "repeats": [
                {"trials_s": r["timings"]["trials_s"], "total_s": r["timings"]["total_s"],
                 "process_wall_s": r["process_wall_s"]} for r in found]}


def summarize(args: argparse.Namespace, gpu: bool, data_source: str, plan: dict, results: dict,
              warm_s: float) -> dict[str, Any]:
    model_epochs = {}
    per_model_epoch = {}
    for way, r in results.items():
        model_epochs[way] = r["trials"] * args.epochs
        per_model_epoch[way] = r["timings"]["trials_s"] / model_epochs[way]
    ratios = {}
    if 3 in per_model_epoch:
        for way in (1, 2):
            if way in per_model_epoch:
                ratios[f"{way}_over_3"] = per_model_epoch[way] / per_model_epoch[3]
    if 1 in per_model_epoch and 2 in per_model_epoch:
        ratios["1_over_2"] = per_model_epoch[1] / per_model_epoch[2]
    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch
        env["torch"] = torch.__version__
        env["device"] = torch.cuda.get_device_name(0) if gpu else cpu_model()
    except ImportError:
        env["device"] = cpu_model()
    targets = {}
    if 3 in per_model_epoch:
        targets["packed_at_most_0.015_s_per_model_epoch"] = per_model_epoch[3] <= TARGET_PACKED_S
    if "2_over_3" in ratios:
        targets["packed_at_least_5x_faster_than_fractional"] = ratios["2_over_3"] >= TARGET_PACKED_VS_FRACTIONAL
    return {"environment": env, "gpu": gpu, "data": data_source, "cache_warm_up_s": warm_s,
            "inputs": 64 if data_source.lower().startswith("digits") else 3072,
            "settings": {k: getattr(args, k) for k in ("trials", "train_size", "test_size", "hidden",
                                                       "epochs", "probe_per_class", "repeats", "quick")},
            "ways": {str(w): {"what": WAYS[w], "resources": plan[w][0], "max_size": plan[w][1],
                              **results[w], "model_epochs": model_epochs[w],
                              "s_per_model_epoch": per_model_epoch[w]} for w in results},
            "ratios": ratios, "targets": targets}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} (cpu), {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def print_report(r: dict[str, Any]) -> None:
    s = r["settings"]
    print(f"\nxmem sweep speed: {s['trials']} trials (sigma x seed), MLP {r['inputs']} -> {s['hidden']} -> 10, "
          f"sin, SGD lr 0.01, batch 256, {s['epochs']} epochs, eval every epoch, align every 10")
    print(f"device : {r['environment']['device']}; torch {r['environment'].get('torch')}, "
          f"python {r['environment']['python']}")
    sizes = (f"{s['train_size'] or 'all'} train / {s['test_size'] or 'all'} test images, "
             f"probe {s['probe_per_class']} per class")
    print(f"data   : {r['data']}: {sizes} (cache warm-up {r['cache_warm_up_s']:.1f} s, before the sweeps)")
    print("timing : the sweep's trials_s (launch of the trials to the last one's end) / (trials x epochs)"
          + (f"; medians of {s['repeats']} rounds, ways in turn" if s["repeats"] > 1 else ""))
    print(f"\n{'way':<50}{'resources':<20}{'packs':>6}{'trials_s':>10}{'s/model-epoch':>15}"
          f"{'total_s':>9}{'wall_s':>8}  statuses")
    for w, x in r["ways"].items():
        res = ", ".join(f"{k} {v:g}" for k, v in x["resources"].items())
        label = f"({w}) {x['what']}, max_size {x['max_size']}"
        print(f"{label:<50}{res:<20}{x['packs']:>6}{x['timings']['trials_s']:>10.1f}"
              f"{x['s_per_model_epoch']:>15.4f}{x['timings']['total_s']:>9.1f}{x['process_wall_s']:>8.1f}"
              f"  {', '.join(f'{k} {v}' for k, v in x['statuses'].items())}")
    for w, x in r["ways"].items():
        t = x["timings"]
        if len(x["repeats"]) > 1:
            print(f"    ({w}) trials_s of each round: "
                  + ", ".join(f"{one['trials_s']:.1f}" for one in x["repeats"]))
        print(f"    ({w}) Ray start {t.get('ray_start_s', float('nan')):.1f} s, MLflow ready after "
              f"{t.get('mlflow_start_s', float('nan')):.1f} s; {x['packing']}")
    ratios = r["ratios"]
    if ratios:
        print("\nratios of s per model-epoch:")
        for key, label in (("1_over_3", "(1) unpacked / (3) packed"),
                           ("2_over_3", "(2) fractional / (3) packed"),
                           ("1_over_2", "(1) unpacked / (2) fractional")):
            if key in ratios:
                print(f"    {label:<32}{ratios[key]:>7.2f}x")
    if r["targets"]:
        where = "" if r["gpu"] else " (set for an H100/H200; this is a CPU run, for the record only)"
        print(f"\ntargets{where}:")
        verdict = {True: "yes", False: "NO"}
        if "packed_at_most_0.015_s_per_model_epoch" in r["targets"]:
            print(f"    (3) <= {TARGET_PACKED_S} s per model-epoch : "
                  f"{verdict[r['targets']['packed_at_most_0.015_s_per_model_epoch']]} "
                  f"({r['ways']['3']['s_per_model_epoch']:.4f} s)")
        if "packed_at_least_5x_faster_than_fractional" in r["targets"]:
            print(f"    (3) >= 5x faster than (2)       : "
                  f"{verdict[r['targets']['packed_at_least_5x_faster_than_fractional']]} "
                  f"({ratios['2_over_3']:.2f}x)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", choices=("auto", "cpu", "gpu"), default="auto",
        help="gpu: the GPU configuration and resources; cpu: the small CPU one (default: gpu "
             "when torch sees a CUDA GPU)")
    add("--ways", default="1,2,3", help="which ways to run, comma-separated (default 1,2,3)")
    add("--trials", type=int, help="trials: 5 sigmas x trials/5 seeds (default 20; --quick 5)")
    add("--epochs", type=int, help="epochs per trial (default 100 on a GPU, 10 on a CPU)")
    add("--train-size", type=int, help="training images (default: all 50,000 on a GPU, 2,000 on a CPU)")
    add("--test-size", type=int, help="test images (default: all 10,000 on a GPU, 500 on a CPU)")
    add("--hidden", type=int, help="hidden width (default 1024 on a GPU, 256 on a CPU)")
    add("--probe-per-class", type=int, help="alignment probe per class (default 100 GPU, 20 CPU)")
    add("--gpu-fraction", type=float, default=0.25, help="GPU share per trial in (2) (default 0.25)")
    add("--cpu-fraction", type=float, default=0.5, help="CPU share per trial in (2) on a CPU "
        "machine (default 0.5: two trials per core)")
    add("--pack-size", default=None, help="packing.max_size of (3): auto or N (default auto on "
        "a GPU; on a CPU all trials, since auto means 1 there)")
    add("--pack-cpu", type=float, help="cpu of the pack in (3) on a CPU machine (default: every "
        "core, so the pack's worker may use them all; Ray gives a worker floor(cpu) threads)")
    add("--data-file", help=f"CIFAR-10 Parquet table (default {DEFAULT_DATA_FILE}, when present)")
    add("--dataset", choices=("cifar10", "digits"), default="cifar10",
        help="digits: the offline 8x8 digits even when the table exists")
    add("--repeats", type=int, default=1, help="rounds of the ways, in turn (default 1); medians")
    add("--timeout", type=float, default=3600, help="seconds one sweep may take (default 3600)")
    add("--keep", action="store_true", help="keep the temporary specs, logs and storages")
    add("--quick", action="store_true", help="smoke test: 5 trials of 3 epochs, tiny sizes")
    add("--json", help="also write every number to this JSON file")
    add("--child", nargs=3, metavar=("SPEC", "STORAGE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    try:
        args.ways = sorted({int(w) for w in args.ways.split(",") if w.strip()})
    except ValueError:
        parser.error(f"--ways: comma-separated way numbers, got {args.ways!r}")
    if not args.ways or any(w not in WAYS for w in args.ways):
        parser.error("--ways: ways are 1, 2 and 3")
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) is None:  # an explicit option wins over --quick
                setattr(args, key, value)
    if args.trials is None:
        args.trials = 20
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    if args.trials < 1:
        parser.error("--trials: at least 1")
    if args.pack_size is not None and args.pack_size != "auto":
        try:
            args.pack_size = int(args.pack_size)
        except ValueError:
            parser.error(f"--pack-size: auto or an integer, got {args.pack_size!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(*args.child)
    import torch

    gpu = torch.cuda.is_available() if args.device == "auto" else args.device == "gpu"
    if gpu and not torch.cuda.is_available():
        print("error: --device gpu: torch sees no CUDA GPU here", file=sys.stderr)
        return 2
    for key, value in (GPU_DEFAULTS if gpu else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.pack_size is None:
        args.pack_size = "auto" if gpu else args.trials
    if args.pack_cpu is None:
        args.pack_cpu = float(os.cpu_count() or 1)
    data, source = data_settings(args)
    if data["dataset"] == "digits":  # 1,198 / 599 images of 8x8: the CIFAR sizes do not apply
        args.train_size = min(args.train_size or 1198, 1198)
        args.test_size = min(args.test_size or 599, 599)
    print(f"warming the data cache ({data['dataset']}) ...", flush=True)
    warm_s = warm_cache(data)
    plan = ways(args, gpu)
    workdir = Path(tempfile.mkdtemp(prefix="xmem-sweep-speed-"))
    runs: dict[int, list[dict[str, Any]]] = {way: [] for way in args.ways}
    try:
        for round_ in range(args.repeats):  # ways in turn, so that a busy machine slows all alike
            for way in args.ways:
                resources, max_size = plan[way]
                name = f"sweep-speed-way{way}-{round_}"
                print(f"{'' if args.repeats == 1 else f'round {round_ + 1}: '}way ({way}) {WAYS[way]}: "
                      f"resources {resources}, packing.max_size {max_size} ...", flush=True)
                result = run_way(f"{way}-{round_}", spec_text(name, args, data, resources, max_size),
                                 workdir, args)
                runs[way].append(result)
                t = result["timings"]
                print(f"    trials {t['trials_s']:.1f} s, sweep {t['total_s']:.1f} s, process "
                      f"{result['process_wall_s']:.1f} s; {result['statuses']}", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}\n(files kept in {workdir})", file=sys.stderr)
        return 1
    results = {way: merge_repeats(found) for way, found in runs.items()}
    report = summarize(args, gpu, source, plan, results, warm_s)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    finished = all(set(r["statuses"]) <= {"finished", "diverged"} for r in results.values())
    for w, r in results.items():
        for name, error in r["errors"].items():
            print(f"    ({w}) {name}: {error}")
    if args.keep or not finished:
        print(f"kept {workdir}" + ("" if finished else " (some trials did not finish: see the "
                                                      "sweep.log and storage of each way there)"))
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
