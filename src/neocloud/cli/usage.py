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
from neocloud.models.usage import Bill, BillLine

TOKENS_KIND = "tokens"
"""The ``BillLine.kind`` of per-token (model serving) usage."""


COLUMNS = ("KIND", "NAME", "SHAPE", "TIME", "GPU-HOURS", "REQUESTS", "FAILED", "TOKENS",
           "COST")
"""``REQUESTS``: requests the gateway forwarded to a replica and served; ``FAILED``: those
forwarded that failed (status 400 or above, their tokens billed in ``TOKENS`` too). The
gateway's own refusals (no token, a body it refuses, an unknown model) reach no replica
and are no usage (the gateway's metrics count them)."""


def bill_row(line: BillLine) -> tuple[str | int | None, ...]:
    """One table row for ``line``, in :data:`COLUMNS` order. A column that does not apply
    to the line's meter is ``-``: ``tokens`` lines are billed per token and have no TIME;
    lines with no GPU time (CPU-only shapes, tokens, volumes) have no GPU-HOURS; a count
    of requests that is 0 (REQUESTS, FAILED) is ``-``."""
    return (
        line.kind,
        line.name,
        line.shape,
        "-" if line.kind == TOKENS_KIND else seconds(line.seconds),
        f"{line.gpu_seconds / 3600:.4f}" if line.gpu_seconds > 0 else "-",
        line.requests or "-",
        line.failed_requests or "-",
        (line.prompt_tokens + line.completion_tokens) or "-",
        usd6(line.amount_micros),
    )


def usage(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print the bill as JSON."),
) -> None:
    """Show the workspace's usage so far, live: one line per workload, then the total
    (records plus running time not yet recorded; each month's invoice is what is billed)."""
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
    for line in figure_notes(bill):
        output.out.print(Text(line))


def running_note(workloads: int, micros: int) -> str:
    """The line that says how much of a live figure is running time not yet recorded."""
    what = "workload" if workloads == 1 else "workloads"
    return (f"Includes {usd6(micros)} for {workloads} running {what} (replicas, job workers, "
            "pods) not yet recorded; the invoice adds it when it is recorded.")


def figure_notes(bill: Bill) -> list[str]:
    """What ``neocloud usage``'s TOTAL is, under its table: a live estimate (usage records
    plus running time not yet recorded, summed over every period since the first record),
    and which figure is billed (each period's invoice, which sums records only)."""
    notes = []
    if bill.running_workloads:
        notes.append(running_note(bill.running_workloads, bill.unrecorded_micros))
    notes.append("A live estimate over every period so far; what is billed is each "
                 "period's invoice, the usage recorded in it (`neocloud invoice`: this "
                 "month's, a draft until the month closes).")
    return notes


def _utc(when: datetime) -> str:
    """``2025-01-31 14:05:09 UTC`` (naive datetimes are taken as UTC)."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def register(app: typer.Typer) -> None:
    app.command()(usage)
