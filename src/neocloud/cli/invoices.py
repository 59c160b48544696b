"""``neocloud invoice`` and ``neocloud chargeback``: the bill per period, and (operators)
what each node pool cost, split over workspaces."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import typer
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import print_json, table
from neocloud.cli.prices import usd6
from neocloud.formatting import quantity
from neocloud.models.billing import InvoiceOut, InvoiceStatus
from neocloud.models.usage import Bill

_SHORT = {"GPU-hour": "GPU-h", "CPU-hour": "CPU-h", "million tokens": "M tokens",
          "GiB-hour": "GiB-h"}


def invoice(
    ctx: typer.Context,
    period: str | None = typer.Option(None, "--period",
                                      help="YYYY-MM or YYYY-MM-DD (UTC); default this month."),
    workspace: str | None = typer.Option(None, "--workspace", help="Operators: another "
                                         "workspace's invoice."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the invoice of a period: one line per workload and meter, then the total (the
    usage recorded in the period: what is billed; a draft while the period is open)."""
    c = client(ctx)
    if csv_out:
        sys.stdout.write(c.invoices.csv(period, workspace=workspace))
        return
    inv = c.invoices.get(period, workspace=workspace)
    if json_out:
        print_json(inv)
        return
    title = (f"Invoice {inv.period} of {inv.workspace} ({inv.status.value}"
             + (f", closed {inv.closed_at:%Y-%m-%d %H:%M UTC}" if inv.closed_at else "") + ")")
    rows = []
    for ln in inv.lines:
        unit = _SHORT.get(ln.price_unit, ln.price_unit)
        what = ln.meter.value + (f" {ln.gpu_type}" if ln.gpu_type else "")
        rows.append((ln.kind, ln.name, what, quantity(ln),
                     f"{usd6(ln.unit_price_micros)}/{unit}", usd6(ln.amount_micros)))
    tbl = table(("KIND", "NAME", "METER", "QUANTITY", "UNIT PRICE", "AMOUNT"), rows,
                title=title)
    tbl.show_footer = True
    tbl.columns[0].footer = Text("TOTAL", style="bold")
    tbl.columns[-1].footer = Text(usd6(inv.total_micros), style="bold")
    output.out.print(tbl)
    bill = None
    if workspace is None and inv.status is InvoiceStatus.draft and _is_open(inv):
        bill = c.usage.bill()  # the caller's own workspace: its running work
    for line in invoice_notes(inv, bill):
        output.out.print(Text(line))


def _is_open(inv: InvoiceOut, now: datetime | None = None) -> bool:
    """Whether ``now`` (default: the current time) falls inside the invoice's period."""
    now = now or datetime.now(UTC)
    start, end = (t.replace(tzinfo=UTC) if t.tzinfo is None else t
                  for t in (inv.period_start, inv.period_end))
    return start <= now < end


def invoice_notes(inv: InvoiceOut, bill: Bill | None = None) -> list[str]:
    """What the invoice's TOTAL is, under its table: a closed invoice is final; a draft
    sums the usage recorded so far, and ``bill`` (the live ``/usage`` of the same
    workspace, for a period still open) says how much running time it does not hold yet.
    """
    if inv.status is InvoiceStatus.closed:
        return [f"Closed: the bill of {inv.period}, final; it never changes."]
    notes = [f"Draft: the usage recorded in {inv.period} so far; it grows as usage is "
             "recorded and closes after the period ends."]
    if bill is not None and bill.running_workloads:
        what = "workload" if bill.running_workloads == 1 else "workloads"
        notes.append(f"Not in it yet: {usd6(bill.unrecorded_micros)} for "
                     f"{bill.running_workloads} running {what} (replicas, job workers, pods) "
                     "not yet recorded; it is added when it is recorded (`neocloud usage` "
                     "shows the live estimate).")
    return notes


def chargeback(
    ctx: typer.Context,
    period: str | None = typer.Option(None, "--period", help="YYYY-MM or YYYY-MM-DD (UTC)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Each node pool's own cost over the period, split over the workspaces that used it
    and idle capacity (operators)."""
    cb = client(ctx).invoices.chargeback(period)
    if json_out:
        print_json(cb)
        return
    rows = []
    for p in cb.pools:
        for sh in p.shares:
            pct = 100.0 * sh.used_units / p.capacity_units if p.capacity_units else 0.0
            rows.append((p.pool, sh.workspace, f"{sh.used_units / 3600:,.2f} "
                         f"{'GPU' if p.unit == 'gpu_seconds' else 'CPU'}-h", f"{pct:.1f} %",
                         usd6(sh.amount_micros)))
    output.out.print(table(("POOL", "WORKSPACE", "USED", "SHARE", "COST"), rows,
                           title=f"Chargeback {cb.period}: {usd6(cb.total_micros)}"))


def register(app: typer.Typer) -> None:
    app.command()(invoice)
    app.command()(chargeback)
