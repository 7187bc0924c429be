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
@click.option("--include-stale", is_flag=True,
              help="Also the runs whose trial id is no longer in the sweep's spec (its defaults "
                   "or grid changed since they ran); left out by default.")
@store_options
def export(name: str, out: str | None, history: bool, include_stale: bool,
           tracking_uri: str | None, store: str | None) -> None:
    """Write the trials of sweep NAME as a Parquet table: ids, status, every trial config key
    and the last value of every metric with its epoch (METRIC@epoch; a value from before
    the trial's last epoch is named in stale_metrics), one typed column each.

    Example: xmem export quickstart -o quickstart.parquet
    """
    from orchestrator.results.tables import export_results

    path = out or (f"{name}-history.parquet" if history else f"{name}.parquet")
    loaded = export_results(name, path, history=history, tracking_uri=tracking_uri,
                            store=store, include_stale=include_stale)
    table = loaded.history if history else loaded.trials
    click.echo(f"wrote {path}: {table.num_rows} rows x {table.num_columns} columns "
               f"({'trial x evaluated epoch' if history else 'one per trial'})")
    if loaded.stale.note():
        click.echo(loaded.stale.note())
