"""Usage records for running time (and the shared way every record is priced and dated).

Running time: a workload holding an allocation from ``t0`` to ``t1`` is charged its
shape's price per hour for ``t1 - t0`` seconds (per-second billing, see
:func:`neocloud.server.metering.money.running_micros`). GPU-seconds are
``(t1 - t0) × GPUs`` where a fractional share counts ``gpu_milli / 1000`` of a GPU;
CPU-seconds ``(t1 - t0) × cpu_milli / 1000``.

A span is cut at every UTC midnight and at every price change inside it, so each record
lies in one day and has one price; each record carries its meter (``gpu_seconds`` for
shapes with GPUs, else ``cpu_seconds``), quantity, unit price (µ$ per GPU-hour or
CPU-hour, for reading; the amount comes from the shape's hourly price), amount in µ$, node
pool, and the day and month whose invoices cover it (``metering.periods``). Records
cover at most ``usage_period_s`` each, so a crash loses at most one period of
un-recorded time, and the bill adds the open stretch since the last record on read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.orm import Session

from neocloud.models.billing import Meter, PriceKind
from neocloud.server.db.tables import Node, Shape, UsageRecord
from neocloud.server.metering.money import running_micros
from neocloud.server.metering.periods import billed_periods, split_days
from neocloud.server.services import prices


def gpus_of(shape: Shape | None) -> float:
    """GPUs held by one workload of ``shape`` (fractional shares count as a fraction)."""
    if shape is None:
        return 0.0
    return float(shape.gpu_count) if shape.gpu_count else shape.gpu_milli / 1000.0


def price_pieces(s: Session, shape: Shape | None, start: datetime,
                 end: datetime) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut at UTC midnights and at price changes of ``shape``: the spans
    of running time that each get one usage record (one day, one price)."""
    changes = prices.changes_between(s, PriceKind.shape, [shape.name if shape else None],
                                     start, end)
    pieces: list[tuple[datetime, datetime]] = []
    for a, b in split_days(start, end):
        marks = [a, *(c for c in changes if a < c < b), b]
        pieces.extend(zip(marks, marks[1:], strict=False))
    return pieces


def record_running(
    s: Session,
    *,
    workspace_id: str,
    kind: str,
    object_id: str,
    name: str,
    shape: Shape | None,
    start: datetime,
    end: datetime,
    node_id: str | None = None,
    written_at: datetime | None = None,
) -> list[UsageRecord]:
    """Write the running-time records of ``[start, end)`` (one per day and price); none
    if the span is empty.

    Args:
        node_id: the node the workload ran on (its pool goes on the record, for
            chargeback).
        written_at: when the records are written (default now): decides which invoice
            covers them (``metering.periods.billed_periods``).
    """
    if (end - start).total_seconds() <= 0:
        return []
    written_at = written_at or datetime.now(UTC)
    node = s.get(Node, node_id) if node_id else None
    gpus = gpus_of(shape)
    cpus = shape.cpu_milli / 1000.0 if shape else 0.0
    meter = Meter.gpu_seconds if gpus > 0 else Meter.cpu_seconds
    gpu_type = (shape.gpu_type if shape else None) if gpus > 0 else None
    if gpus > 0 and gpu_type is None and node is not None and node.gpus:
        gpu_type = node.gpus[0].get("type")
    out: list[UsageRecord] = []
    for a, b in price_pieces(s, shape, start, end):
        seconds = (b - a).total_seconds()
        price = prices.shape_price(s, shape, a)
        units = gpus if gpus > 0 else cpus
        day, month = billed_periods(a, written_at)
        amount = running_micros(price.per_hour_micros, seconds)
        rec = UsageRecord(
            workspace_id=workspace_id, kind=kind, object_id=object_id, name=name,
            shape=shape.name if shape else None, period_start=a, period_end=b,
            seconds=seconds, gpu_seconds=seconds * gpus, cpu_seconds=seconds * cpus,
            price_per_hour_usd=price.per_hour_micros / 1e6,
            cost_usd=amount / 1e6,
            meter=meter.value, quantity=seconds * units,
            unit_price_micros=round(price.per_hour_micros / units) if units else 0,
            amount_micros=amount, gpu_type=gpu_type,
            pool=(node.pool or "default") if node is not None else None,
            bill_day=day, bill_month=month,
        )
        s.add(rec)
        out.append(rec)
    return out


class Metered(Protocol):
    """A running workload row: when it started, on which node, and how far it is metered."""

    started_at: datetime | None
    node_id: str | None
    metered_until: datetime | None


def meter_running(
    s: Session,
    row: Metered,
    *,
    period_s: float,
    final: bool,
    workspace_id: str,
    kind: str,
    object_id: str,
    name: str,
    shape: Shape | None,
) -> None:
    """Record ``row``'s running time since its last record once ``period_s`` seconds have
    gathered (or at once when ``final``: it stops), and move its ``metered_until`` on."""
    if row.started_at is None or row.node_id is None:
        return
    start = row.metered_until or row.started_at
    end = datetime.now(UTC)
    if not final and (end - start).total_seconds() < period_s:
        return
    record_running(s, workspace_id=workspace_id, kind=kind, object_id=object_id, name=name,
                   shape=shape, start=start, end=end, node_id=row.node_id, written_at=end)
    row.metered_until = end
