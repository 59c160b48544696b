"""``neocloud admin check``: the control plane's invariants, for operators."""

from __future__ import annotations

import typer

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import print_json, table

admin_app = typer.Typer(help="Operator tools.", no_args_is_help=True)


@admin_app.command("check")
def check(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Report every broken invariant (allocations without a live owner, quotas or nodes
    over their limits, processes of stopped or deleted work, status history). Exits 1
    when there is any; repairs nothing."""
    report = client(ctx).admin.check()
    if json_out:
        print_json(report)
    elif report.ok:
        counts = ", ".join(f"{n} {k}" for k, n in report.counts.items())
        output.out.print(f"ok: no invariant is broken ({counts})")
    else:
        rows = [(v.invariant.value, v.kind, v.object_id, v.workspace_id or "-", v.message)
                for v in report.violations]
        output.out.print(table(("INVARIANT", "KIND", "OBJECT", "WORKSPACE", "MESSAGE"), rows))
        output.err.print(f"{len(report.violations)} violation(s)")
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(admin_app, name="admin")
