"""``xmem sweep``: run a sweep spec on Ray Tune, tracked in MLflow."""

from __future__ import annotations

import sys

import click



@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--address", metavar="ADDR", help="Ray cluster to join (else RAY_ADDRESS, else a local cluster).")
@click.option("--tracking-uri", metavar="URI",
              help="MLflow tracking server (else MLFLOW_TRACKING_URI, else the spec's, else an embedded server).")
@click.option("--storage", metavar="PATH", help="Tune storage: local dir, NFS or s3:// (else the spec's, else ./xmem-runs).")
@click.option("--dry-run", is_flag=True, help="Validate the spec, print the expanded trials, and exit.")
@click.option("--restart-failed", is_flag=True,
              help="Start failed trials over from epoch 0 (in a new MLflow run that supersedes the failed one) instead of resuming them "
                   "(interrupted trials still resume).")
@click.option("--take-over", is_flag=True,
              help="Take the sweep over from the driver holding its lease (one known to be dead, "
                   "on another machine) instead of waiting for the lease to expire.")
def sweep(spec: str, address: str | None, tracking_uri: str | None, storage: str | None, dry_run: bool,
          restart_failed: bool, take_over: bool) -> None:
    """Run every trial of the sweep SPEC (YAML) and print a results table.

    Rerunning a sweep resumes it: finished trials are kept, interrupted or failed ones continue
    from their latest checkpoint, and new grid points run. One driver at a time runs a sweep:
    a second one refuses while the first holds the sweep's lease.

    Ctrl-C (or SIGTERM) stops the running trials as interrupted, prints the table and how to
    continue, and exits 130; a second Ctrl-C exits at once. Either way a rerun continues from
    the trials' checkpoints.

    Example: xmem sweep experiments/quickstart.yaml
    """
    from orchestrator.run import run_sweep

    outcome = run_sweep(spec, address=address, tracking_uri=tracking_uri, storage=storage,
                        dry_run=dry_run, restart_failed=restart_failed, echo=click.echo,
                        live=sys.stdout.isatty(), take_over=take_over)
    if outcome is not None and outcome.exit_code:
        sys.exit(outcome.exit_code)
