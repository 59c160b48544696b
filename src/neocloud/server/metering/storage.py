"""Storage usage: bytes each volume holds, metered as byte-hours.

Every ``period_s`` seconds a volume gets a ``storage_byte_hours`` record for the time
since its last one (its first covers the time since it was created), at its last measured
size (``Volume.size_bytes``) and the ``storage`` price per GiB-hour in force at the start
of the span (spans are cut at UTC midnights and price changes).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neocloud.models.billing import Meter, PriceKind
from neocloud.server.db.tables import UsageRecord, Volume
from neocloud.server.metering.money import GIB, storage_micros
from neocloud.server.metering.periods import billed_periods, split_days
from neocloud.server.services import prices


def meter_storage(s: Session, now: datetime, *, period_s: float) -> int:
    """Write the storage records due at ``now``; returns how many were written."""
    last = dict(s.execute(
        select(UsageRecord.object_id, func.max(UsageRecord.period_end))
        .where(UsageRecord.meter == Meter.storage_byte_hours.value)
        .group_by(UsageRecord.object_id)).all())
    n = 0
    for vol in s.scalars(select(Volume)):
        start = last.get(vol.id) or vol.created_at
        if (now - start).total_seconds() < period_s:
            continue
        changes = prices.changes_between(s, PriceKind.storage, ["*"], start, now)
        for a, b in split_days(start, now):
            marks = [a, *(c for c in changes if a < c < b), b]
            for x, y in zip(marks, marks[1:], strict=False):
                secs = (y - x).total_seconds()
                price = prices.storage_price(s, x)
                day, month = billed_periods(x, now)
                amount = storage_micros(price.per_gib_hour_micros, vol.size_bytes, secs)
                s.add(UsageRecord(
                    workspace_id=vol.workspace_id, kind="volume", object_id=vol.id,
                    name=vol.name, period_start=x, period_end=y, seconds=secs,
                    meter=Meter.storage_byte_hours.value,
                    quantity=vol.size_bytes * secs / 3600.0,
                    unit_price_micros=price.per_gib_hour_micros, amount_micros=amount,
                    cost_usd=amount / 1e6, bill_day=day, bill_month=month))
                n += 1
    return n


__all__ = ["GIB", "meter_storage"]
