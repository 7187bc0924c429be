"""``xmem export``: a sweep's results from MLflow as a Parquet table."""

from __future__ import annotations

import click

from orchestrator.cli.store_options import store_options


@click.command()
@click.argument("name")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), metavar="FILE.parquet",
              help="Where to write (default: NAME.parquet, or NAME-history.parquet with --history).")
@click.option("--history", is_flag=True,
              help="One row per trial and evaluated epoch with every metric, instead of one row "
                   "per trial with each metric's last value.")
@store_options
def export(name: str, out: str | None, history: bool, tracking_uri: str | None,
           store: str | None) -> None:
    """Write the trials of sweep NAME as a Parquet table: ids, status, every trial config key
    and the last value of every metric, one typed column each.

    Example: xmem export quickstart -o quickstart.parquet
    """
    from orchestrator.results.tables import export_results

    path = out or (f"{name}-history.parquet" if history else f"{name}.parquet")
    table = export_results(name, path, history=history, tracking_uri=tracking_uri, store=store)
    click.echo(f"wrote {path}: {table.num_rows} rows x {table.num_columns} columns "
               f"({'trial x evaluated epoch' if history else 'one per trial'})")
