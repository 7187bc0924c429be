"""``xmem report``: a sweep's figures, claims table and trial table (PNG + HTML)."""

from __future__ import annotations

import click

from orchestrator.cli.store_options import store_options


@click.command()
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder for report.html, the PNGs and the tables (default: "
                   "xmem-runs/reports/NAME).")
@click.option("--include-stale", is_flag=True,
              help="Also show, in the trial table, the runs whose trial id is no longer in the "
                   "sweep's spec (its defaults or grid changed since they ran); the figures and "
                   "claims never use them.")
@store_options
def report(name: str, out: str | None, include_stale: bool, tracking_uri: str | None,
           store: str | None) -> None:
    """Draw the figures of sweep NAME, check the paper's claims on its numbers, and write them
    as PNGs and one self-contained HTML page; also logged to the sweep's parent MLflow run.

    Example: xmem report quickstart
    """
    from orchestrator.results.report import write_report

    write_report(name, out, tracking_uri=tracking_uri, store=store, echo=click.echo,
                 include_stale=include_stale)
