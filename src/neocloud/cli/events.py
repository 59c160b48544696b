"""``neocloud events``: what happened to the workspace's deployments, jobs, pods and
other resources, and why (scheduling, readiness, crashes, retries, budget alerts)."""

from __future__ import annotations

from enum import StrEnum

import typer
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import age, print_json, table
from neocloud.models import EventOut
from neocloud.sdk.deployments import brief

#: The most events one call returns (the API's bound on ``limit``).
MAX_LIMIT = 1000

COLUMNS = ("AGE", "KIND", "NAME", "TYPE", "REASON", "MESSAGE")


class EventKind(StrEnum):
    """The kinds of resource whose events a workspace sees (a replica's are its
    deployment's, a job worker's its job's; nodes belong to no workspace)."""

    deployment = "deployment"
    job = "job"
    pod = "pod"
    volume = "volume"
    secret = "secret"
    budget = "budget"


def event_row(e: EventOut) -> tuple[str | Text, ...]:
    """One row in :data:`COLUMNS` order; a ``warning`` is yellow."""
    kind = Text(e.type, style="yellow" if e.type == "warning" else "")
    return (age(e.created_at), e.kind, e.name, kind, e.reason, brief(e.message))


def events(
    ctx: typer.Context,
    kind: EventKind | None = typer.Option(None, "--kind", "-k",
                                          help="Only events of this kind of resource."),
    name: str | None = typer.Option(None, "--name", "-n",
                                    help="Only events of the resource of this name."),
    limit: int = typer.Option(100, "--limit", min=1, max=MAX_LIMIT,
                              help="At most this many: the newest ones."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON to stdout instead of a table."),
) -> None:
    """The events of your workspace, oldest first: e.g. `neocloud events --kind job --name
    train` (a deployment's recent ones are also in `neocloud status NAME`)."""
    rows = client(ctx).events.list(kind=kind.value if kind else None, name=name, limit=limit)
    if json_out:
        print_json(rows)
        return
    output.out.print(table(COLUMNS, [event_row(e) for e in rows]))


def register(app: typer.Typer) -> None:
    app.command()(events)
