"""``xmem schema``: the JSON Schema of sweep spec files, for editors."""

from __future__ import annotations

import json

import click

from workers.errors import XmemError


@click.command(name="schema")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Write the schema to FILE.json instead of printing it.")
def schema(out: str | None) -> None:
    """Print the JSON Schema (draft 2020-12) of sweep spec files: every key with its
    documentation, type, choices and range, for an editor to complete and check specs.

    A spec uses it when its first line is the YAML language server's comment (VS Code's
    YAML extension and other editors read it):

        # yaml-language-server: $schema=../xmem-spec.schema.json

    The full check of a spec, including the expanded sweep, stays: xmem sweep SPEC --dry-run

    Example: xmem schema -o xmem-spec.schema.json
    """
    from orchestrator.schema import schema_comment, spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise XmemError(f"cannot write the schema to {out}: {error.strerror or error}; "
                        "check that its folder exists and is writable") from error
    click.echo(f"wrote {out}; to use it, start a spec with {schema_comment(out)} (a path "
               "relative to the spec file, an absolute path, or a URL)")
