"""Workspace and token commands: ``whoami``, ``token create|ls|rm``, ``workspace create|ls``."""

from __future__ import annotations

import typer
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import age, note, print_json, table
from neocloud.models import Role

JSON_HELP = "Print JSON to stdout instead of a table."

token_app = typer.Typer(help="API tokens of your workspace.", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces (tenants).", no_args_is_help=True)


def whoami(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show the workspace and token you are using."""
    me = client(ctx).whoami()
    if json_out:
        print_json(me)
        return
    operator = " (operator)" if me.workspace.operator else ""
    output.out.print(Text(f"workspace: {me.workspace.name}{operator}"))
    token = me.token
    output.out.print(Text(f"token:     {token.name} ({token.role.value}, {token.prefix}...)"))
    output.out.print(Text(f"url:       {client(ctx).url}"))


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Token name."),
    role: Role = typer.Option(Role.member, "--role", help="Role of the token."),
    workspace: str | None = typer.Option(
        None, "--workspace", "-w", help="Create it in another workspace (operators)."
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create an API token; its secret is printed once."""
    created = client(ctx).tokens.create(name, role, workspace=workspace)
    if json_out:
        print_json(created)
        return
    note(f"Created token {created.name} ({created.role.value}) in workspace {created.workspace}.")
    note("Store the secret now: it is not shown again.")
    output.out.print(Text(created.token, style="bold"))


@token_app.command("ls")
def token_ls(
    ctx: typer.Context,
    workspace: str | None = typer.Option(
        None, "--workspace", "-w", help="List another workspace's tokens (operators)."
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the tokens of your workspace, or of another one (secrets are never shown)."""
    tokens = client(ctx).tokens.list(workspace=workspace)
    if json_out:
        print_json(tokens)
        return
    rows = [
        (
            t.name,
            t.role.value,
            t.workspace,
            f"{t.prefix}...",
            age(t.created_at),
            age(t.last_used_at) if t.last_used_at else "never",
        )
        for t in tokens
    ]
    output.out.print(table(("NAME", "ROLE", "WORKSPACE", "PREFIX", "AGE", "LAST USED"), rows))


@token_app.command("rm")
def token_rm(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Token name."),
    workspace: str | None = typer.Option(
        None, "--workspace", "-w", help="Revoke a token of another workspace (operators)."
    ),
) -> None:
    """Revoke a token of your workspace, or of another one."""
    client(ctx).tokens.delete(name, workspace=workspace)
    where = f" of workspace {workspace}" if workspace else ""
    output.out.print(Text(f"Revoked token {name}{where}."))


@workspace_app.command("create")
def workspace_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Workspace name."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create a workspace (operators). Then: `neocloud token create NAME --workspace W`."""
    created = client(ctx).workspaces.create(name)
    if json_out:
        print_json(created)
        return
    output.out.print(Text(f"Created workspace {created.name}."))
    note(f"Give it a token: neocloud token create admin --role admin --workspace {created.name}")


@workspace_app.command("ls")
def workspace_ls(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List workspaces (all of them for an operator)."""
    workspaces = client(ctx).workspaces.list()
    if json_out:
        print_json(workspaces)
        return
    rows = [(w.name, "yes" if w.operator else "no", age(w.created_at)) for w in workspaces]
    output.out.print(table(("NAME", "OPERATOR", "AGE"), rows))


def register(app: typer.Typer) -> None:
    app.command()(whoami)
    app.add_typer(token_app, name="token")
    app.add_typer(workspace_app, name="workspace")
