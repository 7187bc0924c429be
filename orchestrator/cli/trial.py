"""``xmem trial``: one trial in this process (no Ray, no MLflow)."""

from __future__ import annotations

import click



def _print_keys(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from workers.config import TrialConfig

    defaults = TrialConfig().to_dict()
    for key, doc in TrialConfig.field_docs().items():
        click.echo(f"{key} (default {defaults[key]!r})\n    {doc}")
    ctx.exit(0)


@click.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a trial key (VALUE is read as YAML: 10, 0.01, null, true).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write one JSON object per evaluated epoch here.")
@click.option("--help-keys", is_flag=True, expose_value=False, is_eager=True, callback=_print_keys,
              help="List every trial key with its default and meaning, then exit.")
def trial(config_file: str | None, assignments: tuple[str, ...], out: str | None) -> None:
    """Run one trial from CONFIG_FILE (YAML of trial keys) and --set overrides.

    Example: xmem trial --set dataset=digits --set sigma=10 --set epochs=100 --out m.jsonl
    """
    from workers.yaml_io import load_trial_config
    from workers.local import run_trial

    config = load_trial_config(config_file, assignments)
    run_trial(config, out=out, echo=click.echo)
