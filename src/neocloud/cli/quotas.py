"""``neocloud quota`` and ``neocloud queue``: workspace limits and waiting work."""

from __future__ import annotations

import typer

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import age, print_json, table

quota_app = typer.Typer(help="Workspace quotas (setting them is for operators); "
                        "without a command: your own quota.", invoke_without_command=True)


@quota_app.callback()
def _quota(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        show(ctx, workspace=None, json_out=False)


def _parse_gpus(values: list[str]) -> dict[str, int]:
    gpus: dict[str, int] = {}
    for v in values:
        kind, sep, count = v.partition("=")
        if not sep or not kind or not count.isdigit():
            raise typer.BadParameter(f"{v!r}: expected TYPE=COUNT, e.g. H100=8 or '*=4'",
                                     param_hint="--gpus")
        gpus[kind] = int(count)
    return gpus


@quota_app.command("show")
def show(
    ctx: typer.Context,
    workspace: str | None = typer.Argument(None, help="Workspace (default: your own)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a workspace's quota and what it uses now."""
    q = client(ctx).quotas.get(workspace)
    if json_out:
        print_json(q)
        return
    types = sorted(set(q.gpus) | set(q.used_gpus))
    rows = [(f"GPUs {t}", f"{q.used_gpus.get(t, 0):g}", q.gpus.get(t, "-")) for t in types]
    rows.append(("GPUs (all types)", f"{sum(q.used_gpus.values()):g}",
                 q.gpus_total if q.gpus_total is not None else "-"))
    rows.append(("CPU (millicores)", q.used_cpu_milli,
                 q.cpu_milli if q.cpu_milli is not None else "-"))
    rows.append(("memory (MiB)", q.used_memory_mib,
                 q.memory_mib if q.memory_mib is not None else "-"))
    output.out.print(table(("RESOURCE", "USED", "LIMIT"), rows, title=f"Quota of {q.workspace}"))


@quota_app.command("set")
def set_quota(
    ctx: typer.Context,
    workspace: str = typer.Argument(..., help="Workspace name."),
    gpus: list[str] = typer.Option([], "--gpus", help="TYPE=COUNT, repeatable ('*' = any "
                                   "other type)."),
    gpus_total: int | None = typer.Option(None, "--gpus-total", min=0),
    cpu_milli: int | None = typer.Option(None, "--cpu-milli", min=0),
    memory_mib: int | None = typer.Option(None, "--memory-mib", min=0),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Replace a workspace's quota (limits left out mean no limit)."""
    q = client(ctx).quotas.set(workspace, gpus=_parse_gpus(gpus), gpus_total=gpus_total,
                               cpu_milli=cpu_milli, memory_mib=memory_mib)
    if json_out:
        print_json(q)
        return
    output.note(f"Quota of {q.workspace} set.")


def queue(
    ctx: typer.Context,
    all_workspaces: bool = typer.Option(False, "--all", help="Every workspace (operators)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Work waiting for resources, and why."""
    items = client(ctx).queue.list(all_workspaces=all_workspaces)
    if json_out:
        print_json(items)
        return
    rows = [(i.workspace, i.kind, i.name, i.id[:8], i.priority, age(i.since), i.reason or "-")
            for i in items]
    output.out.print(table(("WORKSPACE", "KIND", "NAME", "ID", "PRIORITY", "WAITING", "REASON"),
                           rows))


def register(app: typer.Typer) -> None:
    app.add_typer(quota_app, name="quota")
    app.command()(queue)
