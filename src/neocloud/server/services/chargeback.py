"""Chargeback of owned hardware: what each node pool cost its owner over a period, split
over the workspaces that used it, plus the cost of idle capacity.

For a pool ``P`` and period ``[a, b)`` (clipped to now for the current one):

- cost = the pool's hourly cost (``pool`` price list, versioned) integrated over the period,
  in µ$ (cut at each price change);
- unit = GPU-seconds if the pool's nodes have GPUs, else CPU-seconds; capacity = Σ over
  the pool's nodes of its GPUs (or CPUs) × the seconds of the period it was registered
  (from ``max(a, created_at)``), so a node that joined mid-month adds no idle time before
  it joined; a node removed inside the period is no longer stored and counts for none of
  it (its usage records still count as used);
- used(w) = the unit summed over the usage records of workspace ``w`` on ``P`` whose
  running time starts inside the period;
- share(w) = cost × used(w) / max(capacity, Σ used), idle = the rest. Shares are split by
  the largest-remainder method, so shares + idle == cost exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neocloud.models.billing import (
    ChargebackOut,
    ChargebackPool,
    ChargebackShare,
    PriceKind,
)
from neocloud.server.db.tables import Node, UsageRecord, Workspace
from neocloud.server.metering.money import running_micros, split_even
from neocloud.server.metering.periods import month_of, parse_period
from neocloud.server.services import prices

IDLE = "(idle)"


def pool_cost_micros(s: Session, pool: str, start: datetime, end: datetime) -> int:
    """µ$ the pool costs over ``[start, end)`` at its versioned hourly cost."""
    if end <= start:
        return 0
    marks = [start, *prices.changes_between(s, PriceKind.pool, [pool], start, end), end]
    return sum(running_micros(prices.pool_price(s, pool, a).per_hour_micros,
                              (b - a).total_seconds()) for a, b in zip(marks, marks[1:],
                                                                       strict=False))


def _present_s(node: Node, start: datetime, until: datetime) -> float:
    """Seconds of ``[start, until)`` the node was registered."""
    joined = node.created_at if node.created_at.tzinfo else node.created_at.replace(tzinfo=UTC)
    return max(0.0, (until - max(start, joined)).total_seconds())


def chargeback(s: Session, *, period: str | None = None,
               now: datetime | None = None) -> ChargebackOut:
    """Cost per pool split over workspaces and idle capacity (see the module docstring).

    Raises:
        InvalidRequest: a malformed ``period`` (``param="period"``).
    """
    now = now or datetime.now(UTC)
    period = period or month_of(now)
    _, start, end = parse_period(period)
    until = min(end, max(start, now))
    pools: dict[str, list[Node]] = {}
    for n in s.scalars(select(Node)):
        pools.setdefault(n.pool or "default", []).append(n)
    names = {w.id: w.name for w in s.scalars(select(Workspace))}
    out: list[ChargebackPool] = []
    for pool, nodes in sorted(pools.items()):
        gpus = sum(len(n.gpus or []) for n in nodes)
        unit = "gpu_seconds" if gpus else "cpu_seconds"
        capacity = sum((len(n.gpus or []) if gpus else n.cpu_milli / 1000.0)
                       * _present_s(n, start, until) for n in nodes)
        col = UsageRecord.gpu_seconds if gpus else UsageRecord.cpu_seconds
        used = {ws: float(u or 0) for ws, u in s.execute(
            select(UsageRecord.workspace_id, func.sum(col))
            .where(UsageRecord.pool == pool, UsageRecord.period_start >= start,
                   UsageRecord.period_start < end)
            .group_by(UsageRecord.workspace_id)).all() if u}
        cost = pool_cost_micros(s, pool, start, until)
        total_used = sum(used.values())
        idle_units = max(0.0, capacity - total_used)
        keys = sorted(used, key=lambda w: names.get(w, w))
        parts = split_even(cost, [used[w] for w in keys] + [idle_units])
        shares = [ChargebackShare(workspace=names.get(w, w), used_units=used[w],
                                  amount_micros=parts[i]) for i, w in enumerate(keys)]
        shares.append(ChargebackShare(workspace=IDLE, used_units=idle_units,
                                      amount_micros=parts[-1]))
        out.append(ChargebackPool(pool=pool, unit=unit, capacity_units=capacity,
                                  cost_micros=cost, shares=shares))
    return ChargebackOut(period=period, period_start=start, period_end=end, pools=out,
                         total_micros=sum(p.cost_micros for p in out))
