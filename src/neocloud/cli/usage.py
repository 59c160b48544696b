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
from neocloud.models.usage import BillLine

TOKENS_KIND = "tokens"
"""The ``BillLine.kind`` of per-token (model serving) usage."""


COLUMNS = ("KIND", "NAME", "SHAPE", "TIME", "GPU-HOURS", "REQUESTS", "TOKENS", "COST")


def bill_row(line: BillLine) -> tuple[str | int | None, ...]:
    """One table row for ``line``, in :data:`COLUMNS` order. A column that does not apply
    to the line's meter is ``-``: ``tokens`` lines are billed per token and have no TIME;
    lines with no GPU time (CPU-only shapes, tokens, volumes) have no GPU-HOURS."""
    return (
        line.kind,
        line.name,
        line.shape,
        "-" if line.kind == TOKENS_KIND else seconds(line.seconds),
        f"{line.gpu_seconds / 3600:.4f}" if line.gpu_seconds > 0 else "-",
        line.requests or "-",
        (line.prompt_tokens + line.completion_tokens) or "-",
        usd6(line.amount_micros),
    )


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
    tbl = table(COLUMNS, [bill_row(line) for line in bill.lines])
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
