"""How long a large sweep takes to validate and expand on the driver (no Ray, no MLflow).

    python benchmarks/expansion_speed.py [--trials 10000]

Writes a spec whose grid has about ``--trials`` points (sigma x lr x seed), then times
``load_spec`` (every trial's config checked, duplicates found) and ``expand_trials`` (ids,
names), the median of three runs each. The target: well under a second for 10,000 trials.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.expand import expand_trials  # noqa: E402
from orchestrator.spec import load_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    args = parser.parse_args()
    seeds = max(1, args.trials // 500)    # 25 sigmas x 20 learning rates x seeds
    values = lambda n: ", ".join(f"{0.001 * (i + 1):g}" for i in range(n))  # noqa: E731
    spec = (f"name: expansion-bench\nmax_trials: {500 * seeds}\n"
            f"grid:\n  sigma: [{values(25)}]\n  lr: [{values(20)}]\n"
            f"  seed: [{', '.join(str(i) for i in range(seeds))}]\n")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(spec)
        loads, expansions = [], []
        for _ in range(3):
            started = time.perf_counter()
            loaded = load_spec(path)
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            trials = expand_trials(loaded)
            expansions.append(time.perf_counter() - started)
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{len(trials)} trials: load_spec {statistics.median(loads):.3f} s, "
          f"expand_trials {statistics.median(expansions):.3f} s (medians of 3)")


if __name__ == "__main__":
    main()
