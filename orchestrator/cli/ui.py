"""``xmem ui``: browse an embedded MLflow store in the MLflow UI."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli import main


@main.command()
@click.option("--store", type=click.Path(file_okay=False), default="xmem-runs/mlflow", show_default=True,
              help="The folder an embedded sweep server used (holds mlflow.db and artifacts/).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def ui(store: str, host: str, port: int) -> None:
    """Serve the MLflow UI over a local sweep store (Ctrl-C to stop)."""
    from orchestrator.tracking import serve_ui
    from workers.errors import XmemError

    root = Path(store)
    if not (root / "mlflow.db").is_file():
        raise XmemError(f"no MLflow store at {root.resolve()} (expected {root / 'mlflow.db'}).\n"
                        "Run a sweep first (xmem sweep experiments/quickstart.yaml), or pass --store "
                        "with the folder a sweep printed.")
    click.echo(f"MLflow UI on http://{host}:{port} (store {root.resolve()}); Ctrl-C to stop")
    serve_ui(root, host, port)
