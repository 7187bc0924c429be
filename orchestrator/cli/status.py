"""``xmem status`` and ``xmem resume``: a sweep by name, without its YAML."""

from __future__ import annotations

import sys

import click

from orchestrator.cli.store_options import store_options


@click.command()
@click.argument("name")
@store_options
def status(name: str, tracking_uri: str | None, store: str | None) -> None:
    """Every trial of sweep NAME: state, attempts, epochs done, last metrics; then totals."""
    from orchestrator.status import sweep_status

    sweep_status(name, tracking_uri=tracking_uri, store=store, echo=click.echo)


@click.command()
@click.argument("name")
@store_options
@click.option("--address", metavar="ADDR", help="Ray cluster to join (else RAY_ADDRESS, else a local cluster).")
@click.option("--restart-failed", is_flag=True, help="Start failed trials over instead of resuming them.")
@click.option("--take-over", is_flag=True,
              help="Take the sweep over from the driver holding its lease (one known to be dead).")
def resume(name: str, tracking_uri: str | None, store: str | None, address: str | None,
           restart_failed: bool, take_over: bool) -> None:
    """Resume sweep NAME with the spec stored with it (its spec.yaml artifact, not the file
    at its recorded path), its storage, and its relative data paths resolved as they were."""
    from orchestrator.status import resume_sweep

    outcome = resume_sweep(name, tracking_uri=tracking_uri, store=store, address=address,
                           restart_failed=restart_failed, echo=click.echo,
                           live=sys.stdout.isatty(), take_over=take_over)
    if outcome is not None and outcome.exit_code:
        sys.exit(outcome.exit_code)
