"""``xmem ui``: browse an embedded MLflow store in the MLflow UI."""

from __future__ import annotations

from pathlib import Path

import click



@click.command()
@click.option("--store", type=click.Path(file_okay=False), metavar="DIR",
              help="The folder an embedded sweep server used (holds mlflow.db and artifacts/). "
                   "Default: xmem-runs/mlflow, where sweeps with the default --storage keep it.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
def ui(store: str | None, host: str, port: int) -> None:
    """Serve the MLflow UI over a local sweep store (Ctrl-C to stop); prints a link to each
    sweep's trials (model-training mode, one row per trial)."""
    from orchestrator.settings import local_mlflow_root
    from orchestrator.tracking.server import serve_ui

    root = Path(store) if store else local_mlflow_root()
    click.echo(f"starting the MLflow UI on http://{host}:{port} over the store {root.resolve()}; "
               "Ctrl-C to stop")
    serve_ui(root, host, port, echo=click.echo)
