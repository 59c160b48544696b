"""The bill of a workspace: usage records summed per workload, plus the running time not
yet written to a record.

Money is summed in integer micro-dollars only. A record contributes its
``amount_micros`` (records written before amounts existed, which have no ``meter``,
contribute their ``cost_usd`` converted once with :func:`~neocloud.server.metering.money.
micros_of_usd`, rounded to the nearest µ$). The open stretch of a running workload (since
its last record) is priced the way :func:`neocloud.server.metering.records.record_running`
will price it: cut at UTC midnights and price changes, each piece at the shape's price in
force then, rounded half up to a whole µ$ per piece (``money.running_micros``). So once no
work is running, the bill's total equals the sum of the records, which is what the
invoices of the periods covering them add up to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models import Bill, BillLine
from neocloud.server.db.tables import (
    Deployment,
    Job,
    JobWorker,
    Pod,
    Replica,
    Shape,
    UsageRecord,
    Volume,
)
from neocloud.server.metering.money import micros_of_usd, running_micros
from neocloud.server.metering.records import gpus_of, price_pieces
from neocloud.server.services import prices


def record_micros(rec: UsageRecord) -> int:
    """The amount of one usage record in µ$: its ``amount_micros``, or for a record with
    no meter (written before amounts were stored) its ``cost_usd`` rounded to a µ$."""
    if rec.meter is None:
        return micros_of_usd(rec.cost_usd)
    return int(rec.amount_micros)


def open_micros(s: Session, shape: Shape | None, start: datetime, end: datetime) -> int:
    """µ$ for running ``shape`` over ``[start, end)`` not yet recorded: cut at UTC
    midnights and at the shape's price changes, each piece priced at the price in force
    at its start and rounded half up to a whole µ$ (as its usage record will be)."""
    if shape is None or end <= start:
        return 0
    return sum(running_micros(prices.shape_price(s, shape, a).per_hour_micros,
                              (b - a).total_seconds())
               for a, b in price_pieces(s, shape, start, end))


OpenWork = tuple[str, str, str | None, Shape | None, datetime]
"""A workload running now: (kind, workload name, shape name, shape row, start of the
running time not yet recorded)."""


def open_work(s: Session, *, workspace_id: str) -> list[OpenWork]:
    """The workspace's replicas, job workers and pods running now, each with the start of
    its running time not yet written to a usage record (its ``metered_until``, or its
    start when it has no record yet)."""
    rows = [
        ("replica", dep.name, dep.shape, shape, r.metered_until or r.started_at)
        for r, dep, shape in s.execute(
            select(Replica, Deployment, Shape)
            .join(Deployment, Deployment.id == Replica.deployment_id)
            .join(Shape, Shape.name == Deployment.shape, isouter=True)
            .where(Replica.workspace_id == workspace_id,
                   Replica.status.in_(("starting", "ready", "failed", "stopping")),
                   Replica.started_at.is_not(None))
        ).all()
    ] + [
        ("job", job.name, job.shape, shape, w.metered_until or w.started_at)
        for w, job, shape in s.execute(
            select(JobWorker, Job, Shape)
            .join(Job, Job.id == JobWorker.job_id)
            .join(Shape, Shape.name == Job.shape, isouter=True)
            .where(JobWorker.workspace_id == workspace_id,
                   JobWorker.status.in_(("starting", "running", "stopping")),
                   JobWorker.started_at.is_not(None))
        ).all()
    ] + [
        ("pod", pod.name, pod.shape, shape, pod.metered_until or pod.started_at)
        for pod, shape in s.execute(
            select(Pod, Shape).join(Shape, Shape.name == Pod.shape, isouter=True)
            .where(Pod.workspace_id == workspace_id,
                   Pod.status.in_(("starting", "running", "stopping")),
                   Pod.started_at.is_not(None), Pod.node_id.is_not(None))
        ).all()
    ]
    return [w for w in rows if w[4] is not None]


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """Running time not yet in any usage record (so in no invoice yet).

    Attributes:
        workloads: replicas, job workers and pods running now.
        micros: µ$ of their running time since their last record, priced as the records
            will be (:func:`open_micros`).
    """

    workloads: int
    micros: int


def unrecorded(s: Session, *, workspace_id: str, now: datetime) -> Unrecorded:
    """What the workspace's running work has cost since its last usage records, up to
    ``now``: the difference between the live bill and the records it sums."""
    work = open_work(s, workspace_id=workspace_id)
    return Unrecorded(workloads=len(work),
                      micros=sum(open_micros(s, shape, start, now)
                                 for _, _, _, shape, start in work))


def bill(s: Session, *, workspace_id: str, workspace_name: str) -> Bill:
    """Everything the workspace has used so far, one line per (kind, workload name).

    Amounts are integer µ$ (``BillLine.amount_micros``, ``Bill.total_micros``); the USD
    figures are derived from them."""
    lines: dict[tuple[str, str], BillLine] = {}
    first: datetime | None = None

    def line(kind: str, name: str, shape: str | None) -> BillLine:
        key = (kind, name)
        if key not in lines:
            lines[key] = BillLine(kind=kind, name=name, shape=shape, seconds=0.0,
                                  gpu_seconds=0.0, amount_micros=0)
        return lines[key]

    for rec in s.scalars(select(UsageRecord).where(UsageRecord.workspace_id == workspace_id)):
        first = rec.period_start if first is None else min(first, rec.period_start)
        ln = line(rec.kind, rec.name, rec.shape)
        ln.seconds += rec.seconds
        ln.gpu_seconds += rec.gpu_seconds
        ln.amount_micros += record_micros(rec)
        ln.prompt_tokens += rec.prompt_tokens
        ln.completion_tokens += rec.completion_tokens
        ln.requests += rec.requests
        ln.failed_requests += rec.failed_requests
        if rec.shape:
            ln.shape = rec.shape
    now = datetime.now(UTC)
    running = open_work(s, workspace_id=workspace_id)
    open_total = 0
    for kind, name, shape_name, shape, start in running:
        secs = max(0.0, (now - start).total_seconds())
        first = start if first is None else min(first, start)
        ln = line(kind, name, shape_name)
        ln.seconds += secs
        ln.gpu_seconds += secs * gpus_of(shape)
        amount = open_micros(s, shape, start, now)
        ln.amount_micros += amount
        open_total += amount
    for vol in s.scalars(select(Volume).where(Volume.workspace_id == workspace_id)):
        line("volume", vol.name, None).storage_bytes = vol.size_bytes
    out = sorted(lines.values(), key=lambda ln: (ln.kind, ln.name))
    return Bill(
        workspace=workspace_name, period_start=first, period_end=now, lines=out,
        replica_seconds=sum(ln.seconds for ln in out if ln.kind == "replica"),
        total_micros=sum(ln.amount_micros for ln in out),
        running_workloads=len(running), unrecorded_micros=open_total,
    )
