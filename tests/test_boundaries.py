"""Import boundaries: one module on each side knows Ray; the engine runs without Ray or MLflow;
imports go orchestrator -> workers, never back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _modules_importing(root: str) -> list[str]:
    return sorted(str(path.relative_to(REPO)) for folder in ("workers", "orchestrator", "benchmarks")
                  for path in (REPO / folder).rglob("*.py") if root in _imported_roots(path))


def test_only_the_tune_runner_and_the_trial_adapter_import_ray():
    assert _modules_importing("ray") == ["orchestrator/tune_runner.py", "workers/tune_trial.py"]


def test_only_the_two_tracking_adapters_import_mlflow():
    assert _modules_importing("mlflow") == ["orchestrator/tracking.py", "workers/mlflow_log.py"]


def test_workers_never_import_the_orchestrator():
    assert [m for m in _modules_importing("orchestrator") if m.startswith("workers/")] == []


def test_training_a_trial_loads_neither_ray_nor_mlflow(tmp_path):
    """What the GPU machine (torch, no ray, no mlflow) runs: a whole trial in-process."""
    code = ("import sys\n"
            "from workers.config import TrialConfig\n"
            "from workers.run_local import run_trial\n"
            "run_trial(TrialConfig.from_mapping({'epochs': 1, 'hidden': 8, 'data_dir': sys.argv[1]}),"
            " echo=lambda line: None)\n"
            "loaded = sorted(m for m in ('ray', 'mlflow', 'orchestrator') if m in sys.modules)\n"
            "print('LOADED', loaded)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
