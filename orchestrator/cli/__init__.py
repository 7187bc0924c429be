"""The ``xmem`` command: a thin Click group, one module per command.

Commands parse their options and call one function; every ``XmemError`` becomes a message
on stderr and exit code 2 here, in one place. Heavy imports (torch, ray, mlflow) happen
inside the commands, so ``xmem --help`` and spec validation stay fast.
"""

from __future__ import annotations

import click

from workers.errors import XmemError


EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


class XmemGroup(click.Group):
    """Maps user errors to exit code 2 with a message and no traceback, and Ctrl-C to 130
    (the shell's convention for SIGINT). ``xmem sweep`` and ``resume`` exit 1 themselves when
    trials failed or did not finish."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except XmemError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("\ninterrupted (Ctrl-C); a sweep resumes where it stopped when run again",
                       err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=XmemGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xmem")
def main() -> None:
    """Sweep initialization scale vs. extreme memorization on Ray Tune, tracked in MLflow."""


def _add_commands() -> None:
    """Every command of ``xmem`` (``xmem --help`` lists them alphabetically)."""
    from orchestrator.cli.export import export
    from orchestrator.cli.report import report
    from orchestrator.cli.schema import schema
    from orchestrator.cli.status import resume, status
    from orchestrator.cli.sweep import sweep
    from orchestrator.cli.trial import trial
    from orchestrator.cli.ui import ui

    for command in (sweep, status, resume, export, report, ui, trial, schema):
        main.add_command(command)


_add_commands()
