"""Import boundaries: one module on each side knows Ray, the tracking adapters alone know MLflow;
the engine runs without Ray or MLflow; imports go orchestrator -> workers, never back; and no
two of the project's modules import each other, directly or around a loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("workers", "orchestrator")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES
            for path in sorted((REPO / package).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth (functions too), except
    imports under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree)
               if isinstance(block, ast.If)
               and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
               for statement in block.body for node in ast.walk(statement)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imports(path)}


# What a researcher writes by hand with Ray Tune and MLflow, timed against xmem: it is the
# comparison, so it imports both directly.
HAND_WRITTEN_BASELINE = "benchmarks/vs_handwritten.py"


def _modules_importing(root: str) -> list[str]:
    return sorted(str(path.relative_to(REPO)) for folder in ("workers", "orchestrator", "benchmarks")
                  for path in (REPO / folder).rglob("*.py")
                  if root in _imported_roots(path) and str(path.relative_to(REPO)) != HAND_WRITTEN_BASELINE)


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (``from a import b`` counts as an
    import of ``a.b`` when that is a module, else of ``a``).

    Only imports written in the code count: a submodule's implicit import of its parent
    package (``workers.data.arrays`` runs ``workers/data/__init__.py`` first) is Python's, and
    a package that re-exports its submodules is no cycle of ours."""
    modules = _project_modules()
    return {name: {imported for imported in _imports(path) if imported in modules} - {name}
            for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_only_the_tune_runner_and_the_trial_adapter_import_ray():
    assert _modules_importing("ray") == ["orchestrator/tune_runner.py", "workers/tune_trial.py"]


def test_only_the_tracking_adapters_import_mlflow():
    assert _modules_importing("mlflow") == ["orchestrator/tracking/reader.py",
                                            "orchestrator/tracking/writer.py",
                                            "workers/mlflow_log.py"]


def test_workers_never_import_the_orchestrator():
    assert [m for m in _modules_importing("orchestrator") if m.startswith("workers/")] == []


def test_no_import_cycles_between_the_project_modules():
    assert import_cycles(import_graph()) == []


def test_imports_are_absolute():
    """Relative imports would escape the graph above (and read worse)."""
    relative = sorted(f"{path.relative_to(REPO)}:{node.lineno}"
                      for path in _project_modules().values()
                      for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.ImportFrom) and node.level > 0)
    assert relative == []


def test_a_dry_run_loads_neither_ray_nor_mlflow_nor_torch(tmp_path):
    """``xmem sweep SPEC --dry-run`` answers at once: nothing heavy is imported on its path."""
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from orchestrator.cli import main\n"
            "result = CliRunner().invoke(main, ['sweep', 'experiments/quickstart.yaml', '--dry-run'])\n"
            "assert result.exit_code == 0, result.output\n"
            "print('LOADED', sorted(m for m in ('ray', 'mlflow', 'torch') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


def test_the_cycle_check_finds_a_planted_cycle():
    graph = import_graph()
    graph["workers.config"] = graph["workers.config"] | {"workers.yaml_io"}  # yaml_io -> config
    assert ["workers.config", "workers.yaml_io"] in import_cycles(graph)
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_training_a_trial_loads_neither_ray_nor_mlflow(tmp_path):
    """What the GPU machine (torch, no ray, no mlflow) runs: a whole trial in-process."""
    code = ("import sys\n"
            "from workers.config import TrialConfig\n"
            "from workers.local import run_trial\n"
            "run_trial(TrialConfig.from_mapping({'epochs': 1, 'hidden': 8, 'data_dir': sys.argv[1]}),"
            " echo=lambda line: None)\n"
            "loaded = sorted(m for m in ('ray', 'mlflow', 'orchestrator') if m in sys.modules)\n"
            "print('LOADED', loaded)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout
