"""xmem against the sweep a researcher writes by hand, on the same grid, in one run.

The hand-written sweep is what the Ray and MLflow documentation lead to:
  - a Ray Tune *function trainable* with ``ray.air.integrations.mlflow.setup_mlflow`` (one MLflow
    run per trial, the config logged as params), run by ``tune.Tuner`` with Tune's defaults
    (function trainables, result loggers, console output), ``{"cpu": 1}`` per trial, on a local
    cluster started in-process with ``ray.init(num_cpus=2, include_dashboard=False)``;
  - a typical PyTorch loop: ``nn.Module``, ``torch.optim.SGD``, ``DataLoader(TensorDataset,
    shuffle=True)``; after every epoch, train and test loss and accuracy over DataLoaders, one
    ``mlflow.log_metrics`` call and one ``tune.report``;
  - data: scikit-learn's ``load_digits``, a stratified 1,198 / 599 split, per-image
    standardization (as the paper), loaded in every trial.
xmem runs the same grid with ``xmem sweep`` (``orchestrator.run.run_sweep``): 8 trials (sigma
0.001, 0.1, 1, 10 x seeds 0, 1) x 60 epochs of a sin MLP 64 -> 1024 -> 10, batch 32, SGD lr
0.01, evaluated every epoch (xmem also measures its hidden-layer dynamics every epoch, and
alignment at epochs 0 and 60 with ``--align-every 60``), ``resources: {cpu: 1}``.

Both log to the same MLflow server, which this script starts itself (``setsid mlflow server``
on 127.0.0.1, SQLite store, served artifacts, one worker, MLflow's job runner off as in xmem's
embedded server) and stops by its process group. Each side runs in its own Python process (so
that neither sees the other's imports or environment) with its own short Ray temp dir; its wall
time is that process's, from spawn to exit: the time a user waits for ``python my_sweep.py``
or ``xmem sweep spec.yaml``. Phases inside each (imports, Ray start, the trials) are printed
too. The goal: xmem's wall time at most 0.5 of the hand-written one's.

Run from the repository root: ``python benchmarks/vs_handwritten.py [--repeats N] [--json PATH]``
(``--repeats`` alternates the order: H X, X H, ...; medians). Exit status 0 when every trial
of both sides finished, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SIGMAS = (0.001, 0.1, 1.0, 10.0)
SEEDS = (0, 1)
HIDDEN, BATCH_SIZE, LR = 1024, 32, 0.01
GOAL = 0.5


# --- the hand-written sweep (runs in its own process) --------------------------------------
def handwritten(uri: str, storage: str, out: str, epochs: int, experiment: str) -> int:
    started = time.perf_counter()
    import mlflow
    import ray
    from ray import tune
    imported = time.perf_counter()

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    ray_tmp = tempfile.mkdtemp(prefix="xr-", dir="/tmp")  # Ray's socket paths must be short
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp)
        ray_up = time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(train_digits, {"cpu": 1}),
            param_space={"sigma": tune.grid_search(list(SIGMAS)), "seed": tune.grid_search(list(SEEDS)),
                         "hidden": HIDDEN, "batch_size": BATCH_SIZE, "lr": LR, "epochs": epochs,
                         "tracking_uri": uri, "experiment": experiment},
            run_config=tune.RunConfig(name=experiment, storage_path=storage),
        )
        results = tuner.fit()
        fitted = time.perf_counter()
        errors = sum(1 for result in results if result.error is not None)
        finished = sum(1 for result in results
                       if result.error is None and (result.metrics or {}).get("epoch") == epochs)
        ray.shutdown()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    done = time.perf_counter()
    Path(out).write_text(json.dumps({
        "trials": len(results), "finished": finished, "errors": errors,
        "phases_s": {"imports": imported - started, "ray_start": ray_up - imported,
                     "trials (tuner.fit)": fitted - ray_up, "ray_shutdown": done - fitted},
        "in_process_s": done - started}, indent=2) + "\n")
    return 0


def train_digits(config: dict) -> None:
    """The trainable, written the way the tutorials write it."""
    import torch
    from ray import tune
    from ray.air.integrations.mlflow import setup_mlflow
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    hyper = {k: config[k] for k in ("sigma", "seed", "hidden", "batch_size", "lr", "epochs")}
    mlflow = setup_mlflow(hyper, tracking_uri=config["tracking_uri"],
                          experiment_name=config["experiment"],
                          run_name=f"sigma{config['sigma']:g}-seed{config['seed']}")
    torch.manual_seed(config["seed"])

    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=599,
                                                        stratify=labels, random_state=0)

    def standardize(x):  # per image, as tf.image.per_image_standardization
        x = torch.tensor(x, dtype=torch.float32)
        std = x.std(dim=1, keepdim=True, unbiased=False).clamp_min(1.0 / x.shape[1] ** 0.5)
        return (x - x.mean(dim=1, keepdim=True)) / std

    train_set = TensorDataset(standardize(x_train), torch.tensor(y_train))
    test_set = TensorDataset(standardize(x_test), torch.tensor(y_test))
    train_loader = DataLoader(train_set, batch_size=config["batch_size"], shuffle=True)
    eval_loaders = {"train": DataLoader(train_set, batch_size=256),
                    "test": DataLoader(test_set, batch_size=256)}

    class MLP(nn.Module):
        def __init__(self, hidden: int, sigma: float):
            super().__init__()
            self.fc1 = nn.Linear(64, hidden, bias=False)
            self.fc2 = nn.Linear(hidden, 10, bias=False)
            nn.init.normal_(self.fc1.weight, 0.0, sigma)

        def forward(self, x):
            return self.fc2(torch.sin(self.fc1(x)))

    model = MLP(config["hidden"], config["sigma"])
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    loss_fn = nn.CrossEntropyLoss()

    def evaluate() -> dict[str, float]:
        model.eval()
        metrics = {}
        with torch.no_grad():
            for split, loader in eval_loaders.items():
                loss, correct, count = 0.0, 0, 0
                for x, y in loader:
                    logits = model(x)
                    loss += loss_fn(logits, y).item() * len(y)
                    correct += (logits.argmax(dim=1) == y).sum().item()
                    count += len(y)
                metrics[f"{split}_loss"], metrics[f"{split}_acc"] = loss / count, correct / count
        model.train()
        return metrics

    for epoch in range(config["epochs"] + 1):  # epoch 0: before any update, as xmem
        if epoch:
            for x, y in train_loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
        metrics = evaluate()
        mlflow.log_metrics(metrics, step=epoch)
        tune.report({**metrics, "epoch": epoch})
    mlflow.end_run()


# --- xmem (runs in its own process) -------------------------------------------------------
def xmem_side(uri: str, storage: str, out: str, epochs: int, experiment: str, align_every: int,
              packing: str) -> int:
    started = time.perf_counter()
    from orchestrator.run import run_sweep
    imported = time.perf_counter()

    spec = {"name": experiment, "description": "benchmarks/vs_handwritten.py",
            "defaults": {"dataset": "digits", "model": "mlp", "activation": "sin",
                         "loss": "cross_entropy", "hidden": HIDDEN, "batch_size": BATCH_SIZE,
                         "lr": LR, "momentum": 0.0, "epochs": epochs, "eval_every": 1,
                         "align_every": align_every, "probe_per_class": 50},
            "grid": {"sigma": list(SIGMAS), "seed": list(SEEDS)},
            "resources": {"cpu": 1, "gpu": 0},
            "packing": {"max_size": packing if packing == "auto" else int(packing)},
            "max_failures": 0}
    spec_path = Path(storage).parent / "xmem-spec.yaml"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")  # JSON is YAML
    outcome = run_sweep(str(spec_path), tracking_uri=uri, storage=storage)
    done = time.perf_counter()
    statuses = [row["status"] for row in outcome.rows]
    timings = outcome.timings
    Path(out).write_text(json.dumps({
        "trials": len(statuses), "finished": statuses.count("finished"),
        "errors": sum(1 for s in statuses if s not in ("finished", "diverged")),
        "timings": timings,
        "phases_s": {"imports": imported - started, "ray_start": timings.get("ray_start_s"),
                     "trials (trials_s)": timings.get("trials_s"),
                     "rest of run_sweep": timings["total_s"] - timings.get("trials_s", 0.0)
                     - timings.get("ray_start_s", 0.0)},
        "in_process_s": done - started}, indent=2) + "\n")
    return 0


# --- the parent ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """``setsid mlflow server`` on 127.0.0.1: its own session and process group, stopped by it."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        (root / "artifacts").mkdir(parents=True)
        mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
        self.command = ["setsid", mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port),
                        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
                        "--workers", "1"]
        self.log = open(root / "server.log", "wb")
        # setsid (not a group leader here) execs in place: the pid is the server's, and it leads
        # its own process group (uvicorn's worker included).
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT,
                                        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def wait_until_ready(self, timeout_s: float = 120) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}; see "
                                   f"{self.root / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mlflow server did not answer {self.uri}/health in {timeout_s:g} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # uvicorn's worker may outlive the leader for a moment: the group, by its id
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


def run_side(side: str, round_: int, uri: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = workdir / f"{side}-{round_}"
    folder.mkdir()
    out = folder / "outcome.json"
    experiment = f"vs-handwritten-{side}-{round_}"
    ray_tmp = tempfile.mkdtemp(prefix="xr-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, uri,
               str(folder / "storage"), str(out), experiment, "--epochs", str(args.epochs),
               "--align-every", str(args.align_every), "--xmem-packing", args.xmem_packing]
    started = time.perf_counter()
    try:
        with open(folder / "output.log", "w") as log:
            code = subprocess.call(command, cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, timeout=args.timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.perf_counter() - started
    if code != 0 or not out.is_file():
        tail = "\n".join((folder / "output.log").read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{side} exited with {code}; last lines of {folder / 'output.log'}:\n{tail}")
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    return result


def count_mlflow_runs(uri: str, experiment: str, side: str) -> tuple[int, int]:
    """(trial runs, logged test accuracy values) in an experiment: a check that both sides
    logged alike (xmem's experiment also holds the sweep's parent run, not counted)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0, 0
    runs = client.search_runs([found.experiment_id], max_results=1000)
    if side == "xmem":
        runs = [r for r in runs if "xmem.trial_id" in r.data.tags]
    key = "test/acc" if side == "xmem" else "test_acc"
    return len(runs), sum(len(client.get_metric_history(r.info.run_id, key)) for r in runs)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--epochs", type=int, default=60, help="epochs per trial (default 60)")
    add("--align-every", type=int, default=60, help="xmem's align_every (default 60: alignment "
        "at epochs 0 and 60 only; the hand-written sweep measures none)")
    add("--xmem-packing", default="auto", help="xmem's packing.max_size (default auto: 1 on a CPU)")
    add("--repeats", type=int, default=1, help="rounds, alternating the order (default 1)")
    add("--timeout", type=float, default=1800, help="seconds one side may take (default 1800)")
    add("--keep", action="store_true", help="keep the temporary folder (server store, logs)")
    add("--json", help="also write every number to this JSON file")
    add("--side", nargs=5, metavar=("SIDE", "URI", "STORAGE", "OUT", "EXPERIMENT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        side, uri, storage, out, experiment = args.side
        if side == "handwritten":
            return handwritten(uri, storage, out, args.epochs, experiment)
        return xmem_side(uri, storage, out, args.epochs, experiment, args.align_every, args.xmem_packing)

    workdir = Path(tempfile.mkdtemp(prefix="xmem-vs-hand-"))
    server = MlflowServer(workdir / "mlflow")
    results: dict[str, list[dict[str, Any]]] = {"handwritten": [], "xmem": []}
    try:
        print(f"starting {' '.join(server.command[1:3])} on {server.uri} (setsid, pid "
              f"{server.process.pid}) ...", flush=True)
        ready = server.wait_until_ready()
        print(f"    ready after {ready:.1f} s", flush=True)
        for round_ in range(args.repeats):
            order = ("handwritten", "xmem") if round_ % 2 == 0 else ("xmem", "handwritten")
            for side in order:
                print(f"round {round_ + 1}: {side}: {len(SIGMAS) * len(SEEDS)} digits trials x "
                      f"{args.epochs} epochs ...", flush=True)
                result = run_side(side, round_, server.uri, workdir, args)
                runs, values = count_mlflow_runs(server.uri, f"vs-handwritten-{side}-{round_}", side)
                result["mlflow_runs"], result["mlflow_test_acc_values"] = runs, values
                results[side].append(result)
                phases = ", ".join(f"{k} {v:.1f} s" for k, v in result["phases_s"].items()
                                   if v is not None)
                print(f"    wall {result['wall_s']:.1f} s ({phases}); {result['finished']} of "
                      f"{result['trials']} finished; MLflow: {runs} runs, {values} test acc values",
                      flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}\n(files kept in {workdir})", file=sys.stderr)
        server.stop()
        return 1
    finally:
        server.stop()

    median = statistics.median
    walls = {side: median(r["wall_s"] for r in rs) for side, rs in results.items()}
    fits = {"handwritten": median(r["phases_s"]["trials (tuner.fit)"] for r in results["handwritten"]),
            "xmem": median(r["phases_s"]["trials (trials_s)"] for r in results["xmem"])}
    ratio = walls["xmem"] / walls["handwritten"]
    report = {
        "environment": {"machine": cpu_model(), "python": platform.python_version()},
        "settings": {"trials": len(SIGMAS) * len(SEEDS), "sigmas": SIGMAS, "seeds": SEEDS,
                     "epochs": args.epochs, "hidden": HIDDEN, "batch_size": BATCH_SIZE, "lr": LR,
                     "xmem_align_every": args.align_every, "xmem_packing": args.xmem_packing,
                     "repeats": args.repeats},
        "runs": results, "wall_s": walls, "trials_phase_s": fits,
        "ratio_wall_xmem_over_handwritten": ratio,
        "ratio_trials_phase_xmem_over_handwritten": fits["xmem"] / fits["handwritten"],
        "goal_met": ratio <= GOAL,
    }
    print(f"\nxmem vs a hand-written Ray Tune + MLflow sweep: {report['settings']['trials']} digits "
          f"trials (sigma {', '.join(f'{s:g}' for s in SIGMAS)} x seed 0, 1) x {args.epochs} epochs, "
          f"MLP 64 -> {HIDDEN} -> 10, batch {BATCH_SIZE}, eval every epoch, 1 CPU per trial")
    print(f"machine: {report['environment']['machine']}; one MLflow server for both; "
          f"{args.repeats} round(s), medians")
    print(f"\n{'':<14}{'wall s':>9}{'trials phase s':>16}")
    for side in ("handwritten", "xmem"):
        print(f"{side:<14}{walls[side]:>9.1f}{fits[side]:>16.1f}")
    print(f"\nxmem / hand-written: wall {ratio:.2f}, trials phase "
          f"{report['ratio_trials_phase_xmem_over_handwritten']:.2f}  (goal: wall <= {GOAL}: "
          f"{'met' if report['goal_met'] else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    ok = all(r["errors"] == 0 and r["finished"] == r["trials"] for rs in results.values() for r in rs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
