"""Where a command that reads a sweep back finds its MLflow runs: shared options."""

from __future__ import annotations

import click


def store_options(command):
    """``--tracking-uri`` (else MLFLOW_TRACKING_URI), else ``--store`` (an embedded store)."""
    command = click.option(
        "--store", type=click.Path(file_okay=False), metavar="DIR",
        help="An embedded sweep store (holds mlflow.db and artifacts/), served while the "
             "command runs; used when no tracking URI is given. Default: xmem-runs/mlflow.")(command)
    return click.option(
        "--tracking-uri", metavar="URI",
        help="MLflow tracking server (else MLFLOW_TRACKING_URI, else --store).")(command)
