"""Billing periods: UTC days (``2026-11-30``) and months (``2026-11``).

**Which invoice covers a usage record.** A record is first split so it lies inside one
UTC day. It is billed in its own day and month unless that period ended more than
:data:`CLOSE_GRACE_S` before the record is written; then it goes to the period holding
the write time (a late record, e.g. time metered after a control-plane outage, lands on
the open invoice). Periods are closed only once they ended :data:`CLOSE_GRACE_S` ago, so
no record is ever added to a closed period: the grace must exceed the longest write
transaction plus the clock skew between control-plane copies.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from neocloud.errors import InvalidRequest
from neocloud.models.billing import PeriodKind

#: Seconds after a period's end before it may be closed (and before records stop going
#: into it). One hour: far above a reconciler's metering period (``usage_period_s``,
#: 60 s by default) and any transaction.
CLOSE_GRACE_S = 3600.0

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")


def day_of(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d")


def month_of(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m")


def parse_period(period: str, *, param: str = "period") -> tuple[PeriodKind, datetime, datetime]:
    """``(kind, start, end)`` of ``2026-11`` or ``2026-11-30`` (UTC, end exclusive).

    Raises:
        InvalidRequest: neither form, or not a real date (names ``param``).
    """
    try:
        if _MONTH.match(period):
            start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
            return PeriodKind.month, start, next_month(start)
        if _DAY.match(period):
            start = datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=UTC)
            return PeriodKind.day, start, start + timedelta(days=1)
    except ValueError:
        raise InvalidRequest(f"period {period!r} is not a calendar date or month",
                             param=param) from None
    raise InvalidRequest(f"period {period!r} is neither YYYY-MM nor YYYY-MM-DD", param=param)


def next_month(start: datetime) -> datetime:
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0,
                                                                second=0, microsecond=0)


def day_bounds(t: datetime) -> tuple[datetime, datetime]:
    start = t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def month_bounds(t: datetime) -> tuple[datetime, datetime]:
    start = t.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, next_month(start)


def split_days(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut at every UTC midnight inside it."""
    out: list[tuple[datetime, datetime]] = []
    a = start
    while a < end:
        b = min(end, day_bounds(a)[1])
        out.append((a, b))
        a = b
    return out


def billed_periods(start: datetime, written_at: datetime,
                   grace_s: float = CLOSE_GRACE_S) -> tuple[str, str]:
    """``(bill_day, bill_month)`` of a record that starts at ``start`` (inside one day) and
    is written at ``written_at`` (see the module docstring)."""
    d_end = day_bounds(start)[1]
    m_end = month_bounds(start)[1]
    late = timedelta(seconds=grace_s)
    day = day_of(start) if written_at - d_end < late else day_of(written_at)
    month = month_of(start) if written_at - m_end < late else month_of(written_at)
    return day, month


def closable(period_end: datetime, now: datetime, grace_s: float = CLOSE_GRACE_S) -> bool:
    """Whether a period ending at ``period_end`` may be closed at ``now``."""
    return (now - period_end).total_seconds() >= grace_s
