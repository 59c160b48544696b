"""Invoices: usage records rolled up per workspace and period (a UTC day or month).

An invoice of period ``P`` covers exactly the usage records whose ``bill_day`` (day
periods) or ``bill_month`` (months) is ``P`` (see ``metering.periods`` for how a record
gets them). Its lines group those records by workload (kind and name, so a job's
workers of every attempt make one line, as a deployment's replicas do), meter, shape, GPU
type and unit price;
a line's amount is the sum of its records' amounts, so the invoice total equals the sum
of the records it covers, to the micro-dollar.

While a period is open (or within ``CLOSE_GRACE_S`` of its end) its invoice is a live
draft computed on read. Once closable it is *closed*: its lines are written once to
``invoices`` / ``invoice_lines`` and read from there ever after, and no record can join
the period any more (late records go to the open period), so a closed invoice never
changes. Two control-plane copies closing the same invoice race on the unique
``(workspace_id, period)``; the loser reads the winner's rows.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neocloud.errors import NotFound
from neocloud.models import Role
from neocloud.models.billing import (
    MICROS_PER_USD,
    InvoiceLine,
    InvoiceOut,
    InvoiceStatus,
    Meter,
    PeriodKind,
)
from neocloud.server.db.batches import id_batches
from neocloud.server.db.tables import (
    Invoice,
    InvoiceLineRow,
    JobWorker,
    Replica,
    UsageRecord,
    Workspace,
)
from neocloud.server.metering.periods import closable, month_of, parse_period
from neocloud.server.services.principal import Caller
from neocloud.server.services.workspaces import get_workspace


def target_workspace(s: Session, *, caller: Caller, workspace: str | None) -> str:
    """The workspace id a billing request (invoices, budget) acts on: the caller's own,
    or (operators only) the one named by ``workspace``.

    Raises:
        NotFound: ``workspace`` is another workspace and the caller is no operator
            (whether it exists or not), or no workspace has that name (``param="workspace"``
            for the first).
    """
    if workspace is None or workspace == caller.workspace_name:
        return caller.workspace_id
    if not (caller.operator and caller.role is Role.admin):
        raise NotFound(f"workspace {workspace!r} not found", param="workspace")
    return get_workspace(s, name=workspace).id


def _covers(kind: PeriodKind, period: str):  # type: ignore[no-untyped-def]
    col = UsageRecord.bill_month if kind is PeriodKind.month else UsageRecord.bill_day
    return col == period


def _workload_ids(s: Session, object_ids: set[str]) -> dict[str, str]:
    """The workload each usage record's object belongs to: a job worker's job, a
    replica's deployment (where the row still exists); other objects are their own."""
    out = {oid: oid for oid in object_ids}
    ids = sorted(object_ids)
    for chunk in id_batches(ids):
        for oid, owner in s.execute(select(JobWorker.id, JobWorker.job_id)
                                    .where(JobWorker.id.in_(chunk))):
            out[oid] = owner
        for oid, owner in s.execute(select(Replica.id, Replica.deployment_id)
                                    .where(Replica.id.in_(chunk))):
            out[oid] = owner
    return out


def draft_lines(s: Session, *, workspace_id: str, period: str) -> list[InvoiceLine]:
    """The lines of ``period`` computed from the usage records it covers: one per
    workload (kind and name: every worker of every attempt of a job, every replica of a
    deployment, together), meter, shape, GPU type and unit price. A line's ``object_id``
    is the workload's id (the job's or deployment's, while its rows exist; else the id
    of one of its records' objects)."""
    kind, _, _ = parse_period(period)
    rows = s.execute(
        select(UsageRecord.kind, UsageRecord.name, UsageRecord.object_id, UsageRecord.shape,
               UsageRecord.meter, UsageRecord.gpu_type, UsageRecord.unit_price_micros,
               func.sum(UsageRecord.quantity), func.sum(UsageRecord.amount_micros),
               func.count())
        .where(UsageRecord.workspace_id == workspace_id, _covers(kind, period),
               UsageRecord.meter.is_not(None))
        .group_by(UsageRecord.kind, UsageRecord.name, UsageRecord.object_id,
                  UsageRecord.shape, UsageRecord.meter, UsageRecord.gpu_type,
                  UsageRecord.unit_price_micros)
    ).all()
    owner = _workload_ids(s, {r[2] for r in rows})
    groups: dict[tuple[str, str, str | None, str, str | None, int], list[Any]] = {}
    for k, n, oid, shape, meter, gt, up, q, a, c in rows:
        groups.setdefault((k, n, shape, str(meter), gt, int(up)), []).append(
            (owner[oid], float(q or 0), int(a or 0), int(c)))
    lines = [
        InvoiceLine(kind=k, name=n, object_id=min(p[0] for p in parts), shape=shape,
                    meter=Meter(meter), gpu_type=gt, quantity=sum(p[1] for p in parts),
                    unit_price_micros=up, amount_micros=sum(p[2] for p in parts),
                    records=sum(p[3] for p in parts))
        for (k, n, shape, meter, gt, up), parts in groups.items()
    ]
    return sorted(lines, key=lambda ln: (ln.kind, ln.name, ln.meter.value, ln.shape or "",
                                         ln.gpu_type or "", ln.unit_price_micros))


def records_total(s: Session, *, workspace_id: str, period: str) -> int:
    """Sum of the amounts (µ$) of the usage records ``period`` covers."""
    kind, _, _ = parse_period(period)
    return int(s.scalar(select(func.coalesce(func.sum(UsageRecord.amount_micros), 0)).where(
        UsageRecord.workspace_id == workspace_id, _covers(kind, period))) or 0)


def _out(ws_name: str, period: str, status: InvoiceStatus, lines: list[InvoiceLine],
         closed_at: datetime | None) -> InvoiceOut:
    kind, start, end = parse_period(period)
    total = sum(ln.amount_micros for ln in lines)
    return InvoiceOut(workspace=ws_name, period=period, period_kind=kind, period_start=start,
                      period_end=end, status=status, closed_at=closed_at, lines=lines,
                      total_micros=total, total_usd=total / MICROS_PER_USD)


def _stored(s: Session, inv: Invoice, ws_name: str) -> InvoiceOut:
    rows = s.scalars(select(InvoiceLineRow).where(InvoiceLineRow.invoice_id == inv.id)
                     .order_by(InvoiceLineRow.id))
    lines = [InvoiceLine(kind=r.kind, name=r.name, object_id=r.object_id, shape=r.shape,
                         meter=Meter(r.meter), gpu_type=r.gpu_type, quantity=r.quantity,
                         unit_price_micros=r.unit_price_micros, amount_micros=r.amount_micros,
                         records=r.records) for r in rows]
    return _out(ws_name, inv.period, InvoiceStatus.closed, lines, inv.closed_at)


def close(s: Session, *, workspace_id: str, period: str, now: datetime) -> Invoice:
    """Write the invoice of a closable period once (idempotent: an existing one is
    returned). Runs in a savepoint, so a concurrent close by another copy is not an error.
    """
    existing = s.scalars(select(Invoice).where(Invoice.workspace_id == workspace_id,
                                               Invoice.period == period)).first()
    if existing is not None:
        return existing
    _, start, end = parse_period(period)
    lines = draft_lines(s, workspace_id=workspace_id, period=period)
    try:
        with s.begin_nested():
            inv = Invoice(workspace_id=workspace_id, period=period, period_start=start,
                          period_end=end, total_micros=sum(ln.amount_micros for ln in lines),
                          closed_at=now)
            s.add(inv)
            s.flush()
            s.add_all(InvoiceLineRow(
                invoice_id=inv.id, kind=ln.kind, name=ln.name, object_id=ln.object_id,
                shape=ln.shape, meter=ln.meter.value, gpu_type=ln.gpu_type,
                quantity=ln.quantity, unit_price_micros=ln.unit_price_micros,
                amount_micros=ln.amount_micros, records=ln.records) for ln in lines)
            s.flush()
        return inv
    except IntegrityError:
        got = s.scalars(select(Invoice).where(Invoice.workspace_id == workspace_id,
                                              Invoice.period == period)).first()
        assert got is not None
        return got


def get_invoice(s: Session, *, workspace_id: str, period: str | None = None,
                now: datetime | None = None) -> InvoiceOut:
    """The invoice of ``period`` (default: the current month): stored if closed, closed
    now if closable, else the live draft.

    Raises:
        InvalidRequest: ``period`` is neither ``YYYY-MM`` nor ``YYYY-MM-DD`` (``param="period"``).
    """
    now = now or datetime.now(UTC)
    period = period or month_of(now)
    _, _, end = parse_period(period)
    ws = s.get(Workspace, workspace_id)
    ws_name = ws.name if ws else workspace_id
    inv = s.scalars(select(Invoice).where(Invoice.workspace_id == workspace_id,
                                          Invoice.period == period)).first()
    if inv is None and closable(end, now):
        inv = close(s, workspace_id=workspace_id, period=period, now=now)
    if inv is not None:
        return _stored(s, inv, ws_name)
    return _out(ws_name, period, InvoiceStatus.draft,
                draft_lines(s, workspace_id=workspace_id, period=period), None)


def list_invoices(s: Session, *, workspace_id: str, now: datetime | None = None,
                  kind: PeriodKind = PeriodKind.month) -> list[InvoiceOut]:
    """Every period of ``kind`` with usage, newest first (closable ones are closed)."""
    now = now or datetime.now(UTC)
    col = UsageRecord.bill_month if kind is PeriodKind.month else UsageRecord.bill_day
    periods = set(s.scalars(select(distinct(col)).where(
        UsageRecord.workspace_id == workspace_id, col.is_not(None))))
    periods |= {p for p in s.scalars(select(Invoice.period).where(
        Invoice.workspace_id == workspace_id)) if len(p) == (7 if kind is PeriodKind.month
                                                             else 10)}
    current = month_of(now) if kind is PeriodKind.month else now.strftime("%Y-%m-%d")
    periods.add(current)
    return [get_invoice(s, workspace_id=workspace_id, period=p, now=now)
            for p in sorted(periods, reverse=True)]


def close_due(s: Session, now: datetime) -> int:
    """Close every invoice (day and month, every workspace) whose period is closable and
    holds usage; returns how many were closed now."""
    n = 0
    for col in (UsageRecord.bill_day, UsageRecord.bill_month):
        pairs = s.execute(select(UsageRecord.workspace_id, col).where(col.is_not(None))
                          .distinct()).all()
        have = set(s.execute(select(Invoice.workspace_id, Invoice.period)).all())
        for ws, period in pairs:
            if (ws, period) in have:
                continue
            _, _, end = parse_period(period)
            if closable(end, now):
                close(s, workspace_id=ws, period=period, now=now)
                n += 1
    return n


def to_csv(inv: InvoiceOut) -> str:
    """The invoice as CSV: one row per line, then a TOTAL row (amounts in µ$ and USD).

    Each row names its units: ``quantity`` in ``quantity_unit``, ``unit_price_micros`` per
    ``price_unit``, and ``priced_quantity`` (the quantity in the price's unit)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["period", "status", "kind", "name", "shape", "meter", "gpu_type", "quantity",
                "quantity_unit", "priced_quantity", "unit_price_micros", "price_unit",
                "amount_micros", "amount_usd"])
    for ln in inv.lines:
        w.writerow([inv.period, inv.status.value, ln.kind, ln.name, ln.shape or "",
                    ln.meter.value, ln.gpu_type or "", f"{ln.quantity:.6f}",
                    ln.quantity_unit, f"{ln.priced_quantity:.9f}", ln.unit_price_micros,
                    ln.price_unit, ln.amount_micros,
                    f"{ln.amount_micros / MICROS_PER_USD:.6f}"])
    w.writerow([inv.period, inv.status.value, "TOTAL", "", "", "", "", "", "", "", "",
                "", inv.total_micros, f"{inv.total_micros / MICROS_PER_USD:.6f}"])
    return buf.getvalue()
