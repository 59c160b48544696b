"""``neocloud usage``: the workspace's bill so far.

Amounts are printed from the bill's integer micro-dollars (``amount_micros``,
``total_micros``), exactly, as ``neocloud invoice`` prints them."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import print_json, seconds, table
from neocloud.cli.prices import usd6


def usage(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print the bill as JSON."),
) -> None:
    """Show the workspace's bill: one line per workload, then the total."""
    bill = client(ctx).usage.bill()
    if json_out:
        print_json(bill)
        return
    start = _utc(bill.period_start) if bill.period_start else "the start"
    title = f"Workspace {bill.workspace}: usage from {start} to {_utc(bill.period_end)}"
    output.out.print(Text(title, style="bold"))
    rows = [
        (
            line.kind,
            line.name,
            line.shape,
            seconds(line.seconds),
            f"{line.gpu_seconds / 3600:.4f}",
            line.requests or "-",
            (line.prompt_tokens + line.completion_tokens) or "-",
            usd6(line.amount_micros),
        )
        for line in bill.lines
    ]
    tbl = table(("KIND", "NAME", "SHAPE", "TIME", "GPU-HOURS", "REQUESTS", "TOKENS", "COST"), rows)
    tbl.show_footer = True
    tbl.columns[0].footer = Text("TOTAL", style="bold")
    tbl.columns[-1].footer = Text(usd6(bill.total_micros), style="bold")
    output.out.print(tbl)
    output.out.print(Text(f"Replica time: {seconds(bill.replica_seconds)}"))


def _utc(when: datetime) -> str:
    """``2025-01-31 14:05:09 UTC`` (naive datetimes are taken as UTC)."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def register(app: typer.Typer) -> None:
    app.command()(usage)
