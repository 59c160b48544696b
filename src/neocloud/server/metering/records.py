"""Usage records for running time and for tokens.

Running time: a workload holding an allocation from ``t0`` to ``t1`` costs
``(t1 - t0) / 3600 × price_per_hour_usd`` of its shape; GPU-seconds are
``(t1 - t0) × GPUs`` where a fractional share counts ``gpu_milli / 1000`` of a GPU.
Records cover at most ``usage_period_s`` each, so a crash loses at most one period of
un-recorded time, and the bill adds the open stretch since the last record on read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.orm import Session

from neocloud.server.db.tables import Shape, UsageRecord


def gpus_of(shape: Shape | None) -> float:
    """GPUs held by one workload of ``shape`` (fractional shares count as a fraction)."""
    if shape is None:
        return 0.0
    return float(shape.gpu_count) if shape.gpu_count else shape.gpu_milli / 1000.0


def running_cost(shape: Shape | None, seconds: float) -> float:
    """USD for ``seconds`` of running time of ``shape``."""
    return (shape.price_per_hour_usd if shape else 0.0) * seconds / 3600.0


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
) -> UsageRecord | None:
    """Write one running-time record for ``[start, end)``; ``None`` if the span is empty."""
    seconds = (end - start).total_seconds()
    if seconds <= 0:
        return None
    rec = UsageRecord(
        workspace_id=workspace_id, kind=kind, object_id=object_id, name=name,
        shape=shape.name if shape else None, period_start=start, period_end=end,
        seconds=seconds, gpu_seconds=seconds * gpus_of(shape),
        cpu_seconds=seconds * (shape.cpu_milli / 1000.0 if shape else 0.0),
        price_per_hour_usd=shape.price_per_hour_usd if shape else 0.0,
        cost_usd=running_cost(shape, seconds),
    )
    s.add(rec)
    return rec


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
                   shape=shape, start=start, end=end)
    row.metered_until = end
