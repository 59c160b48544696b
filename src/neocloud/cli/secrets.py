"""``neocloud secret``: set, ls, rm (values are never shown)."""

from __future__ import annotations

import getpass
import sys

import typer

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import age, note, print_json, table

app = typer.Typer(help="Workspace secrets, injected into workloads as environment "
                       "variables.", no_args_is_help=True)


@app.command("set")
def set_(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Secret name."),
    value: str | None = typer.Option(
        None, "--value", help="The value (default: read from standard input; prompted "
                              "without echo on a terminal)."),
) -> None:
    """Create or replace a secret. The value is read from stdin unless --value is given."""
    if value is None:
        if sys.stdin.isatty():
            value = getpass.getpass(f"Value of {name}: ")
        else:
            value = sys.stdin.read()
            if value.endswith("\n"):  # `echo x | neocloud secret set` sends one newline
                value = value[:-1]
                if value.endswith("\r"):
                    value = value[:-1]
    if not value:
        raise typer.BadParameter("the value is empty", param_hint="'--value' / stdin")
    secret = client(ctx).secrets.set(name, value)
    verb = "Created" if secret.version == 1 else "Updated"
    note(f"{verb} secret {name} (version {secret.version}).")


@app.command("ls")
def ls(ctx: typer.Context,
       json_out: bool = typer.Option(False, "--json", help="Print JSON to stdout.")) -> None:
    """Secret names of the workspace (never their values)."""
    rows = client(ctx).secrets.list()
    if json_out:
        print_json(rows)
        return
    output.out.print(table(("NAME", "VERSION", "UPDATED"),
                           [(s.name, s.version, f"{age(s.updated_at)} ago") for s in rows]))


@app.command("rm")
def rm(ctx: typer.Context, name: str = typer.Argument(..., help="Secret name.")) -> None:
    """Delete a secret."""
    client(ctx).secrets.delete(name)
    note(f"Deleted secret {name}.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="secret")
