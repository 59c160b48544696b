"""``neocloud budget``: the workspace's monthly budget, alerts and hard stop."""

from __future__ import annotations

import typer

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import print_json, table
from neocloud.cli.prices import micros, usd6

budget_app = typer.Typer(help="Monthly budget of the workspace; without a command: show it.",
                         invoke_without_command=True)


@budget_app.callback()
def _budget(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        show(ctx, workspace=None, json_out=False)


@budget_app.command("show")
def show(
    ctx: typer.Context,
    workspace: str | None = typer.Option(None, "--workspace", help="Operators: another one."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """This month's spend against the budget."""
    b = client(ctx).budgets.get(workspace=workspace)
    if json_out:
        print_json(b)
        return
    output.out.print(table(("WORKSPACE", "MONTH", "SPENT", "BUDGET", "USED", "STATUS",
                            "ALERTS", "HARD STOP"), [(
        b.workspace, b.month, usd6(b.spent_micros), usd6(b.monthly_micros),
        f"{b.percent:.1f} %", b.status.value + (" (refusing work)" if b.refusing else ""),
        ",".join(f"{p}%" for p in b.thresholds),
        ("yes, stops running work" if b.stop_running else "yes") if b.hard_stop else "no")]))


@budget_app.command("set")
def set_budget(
    ctx: typer.Context,
    amount: str = typer.Argument(..., help="USD per month, e.g. 500 or 99.99."),
    alert: list[int] = typer.Option([], "--alert", help="Threshold in percent, repeatable "
                                    "(default 50, 80, 100)."),
    hard_stop: bool = typer.Option(False, "--hard-stop", help="At 100 %, refuse new work and "
                                   "gateway requests."),
    stop_running: bool = typer.Option(False, "--stop-running", help="With --hard-stop: stop "
                                      "running work too."),
    workspace: str | None = typer.Option(None, "--workspace", help="Operators: another one."),
) -> None:
    """Set the monthly budget (workspace admins)."""
    if stop_running and not hard_stop:
        raise typer.BadParameter("needs --hard-stop", param_hint="--stop-running")
    b = client(ctx).budgets.set(micros(amount, "AMOUNT"), thresholds=alert or None,
                                hard_stop=hard_stop, stop_running=stop_running,
                                workspace=workspace)
    output.note(f"budget of {b.workspace}: {usd6(b.monthly_micros)} a month; "
                f"{usd6(b.spent_micros)} spent in {b.month} ({b.percent:.1f} %)")


@budget_app.command("rm")
def rm(
    ctx: typer.Context,
    workspace: str | None = typer.Option(None, "--workspace", help="Operators: another one."),
) -> None:
    """Remove the budget."""
    client(ctx).budgets.delete(workspace=workspace)
    output.note("budget removed")


def register(app: typer.Typer) -> None:
    app.add_typer(budget_app, name="budget")
