"""What the pack's system metrics cost a trial: the same CPU training with MLflow's system-metrics
monitor off, sampling every 10 s (xmem's default) and every 1 s (ten times as often).

The process's CPU time (all threads: the monitor's sampling, requests and logging included)
is the figure that matters on a shared machine; wall time is printed too. Runs alternate so a
busy machine slows all alike; medians are reported. A local ``mlflow server`` is started over a
temporary folder. Measured on the 2-core CPU machine (load ~4.7 from other work), 3 runs each
of a 400-epoch digits trial (hidden 1024, batch 32), torch on 1 thread (medians, ranges)::

    monitor off   process CPU 5.72 s (5.61 .. 5.77)   wall 12.23 s (9.13 .. 12.58)
    every 10 s    process CPU 5.70 s (5.55 .. 5.80)   wall  9.45 s (8.07 .. 14.78)
    every 1 s     process CPU 5.87 s (5.55 .. 5.92)   wall 10.62 s (9.09 .. 14.54)

At 10 s no difference shows beyond the run-to-run spread (about 0.2 s of CPU).

One sample (psutil reads, the monitor's get_run, a log_batch) took 4.5 ms of CPU and 43 ms of
wall time in the monitor's thread (median of 30): 0.05% of one core at 10 s.

    python benchmarks/system_metrics_overhead.py [--epochs 400] [--runs 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from orchestrator.tracking.server import start_local_server  # noqa: E402
from orchestrator.tracking.writer import SweepTracker  # noqa: E402
from workers.config import TrialConfig  # noqa: E402
from workers.mlflow_log import PackSystemMetrics, TrialRunLogger  # noqa: E402
from workers.trial import Trial  # noqa: E402

INTERVALS_S = (0.0, 10.0, 1.0)   # 0 = off


class _Point:
    """What ``SweepTracker.create_trial_runs`` needs of a trial."""

    def __init__(self, index: int, config: TrialConfig):
        self.trial_id, self.name, self.config = f"bench{index:07d}", f"bench-{index}", config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--runs", type=int, default=4, help="runs per interval (alternating)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # several torch threads on a shared machine drown any difference
    config = TrialConfig(dataset="digits", hidden=1024, epochs=args.epochs, batch_size=32,
                         eval_every=50, align_every=args.epochs, device="cpu")
    server = start_local_server(Path(tempfile.mkdtemp(prefix="xmem-bench-")))
    try:
        tracker = SweepTracker(server.uri, "system-metrics-overhead")
        tracker.ensure_experiment()
        parent = tracker.start_parent_run({}, 0)
        count = 0

        def one(interval_s: float) -> tuple[float, float]:
            nonlocal count
            count += 1
            point = _Point(count, config)
            run_id = tracker.create_trial_runs([point], parent)[point.trial_id]
            system = PackSystemMetrics(server.uri, [run_id], interval_s=interval_s)
            TrialRunLogger(server.uri, run_id).start(system.host_tags())
            system.start()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in Trial(config).run():
                pass
            result = time.perf_counter() - wall, time.process_time() - cpu
            system.members_ending([run_id])
            return result

        one(0.0)  # warm-up: data cache, torch
        results: dict[float, list[tuple[float, float]]] = {i: [] for i in INTERVALS_S}
        for _ in range(args.runs):
            for interval_s in INTERVALS_S:
                results[interval_s].append(one(interval_s))
    finally:
        server.stop()
    for interval_s, runs in results.items():
        label = "monitor off" if interval_s == 0 else f"every {interval_s:g} s"
        cpu = [c for _, c in runs]
        wall = [w for w, _ in runs]
        print(f"{label:<12}  process CPU {statistics.median(cpu):.2f} s ({min(cpu):.2f} .. "
              f"{max(cpu):.2f})   wall {statistics.median(wall):.2f} s ({min(wall):.2f} .. {max(wall):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
