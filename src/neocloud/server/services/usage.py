"""The bill of a workspace: usage records summed per workload, plus the running time not
yet written to a record (priced the same way, see ``metering.records``)."""

from __future__ import annotations

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
from neocloud.server.metering.records import gpus_of, running_cost


def bill(s: Session, *, workspace_id: str, workspace_name: str) -> Bill:
    """Everything the workspace has used so far, one line per (kind, workload name)."""
    lines: dict[tuple[str, str], BillLine] = {}
    first: datetime | None = None

    def line(kind: str, name: str, shape: str | None) -> BillLine:
        key = (kind, name)
        if key not in lines:
            lines[key] = BillLine(kind=kind, name=name, shape=shape, seconds=0.0,
                                  gpu_seconds=0.0, cost_usd=0.0)
        return lines[key]

    for rec in s.scalars(select(UsageRecord).where(UsageRecord.workspace_id == workspace_id)):
        first = rec.period_start if first is None else min(first, rec.period_start)
        ln = line(rec.kind, rec.name, rec.shape)
        ln.seconds += rec.seconds
        ln.gpu_seconds += rec.gpu_seconds
        ln.cost_usd += rec.cost_usd
        ln.prompt_tokens += rec.prompt_tokens
        ln.completion_tokens += rec.completion_tokens
        ln.requests += rec.requests
        if rec.shape:
            ln.shape = rec.shape
    now = datetime.now(UTC)
    open_rows = s.execute(
        select(Replica, Deployment, Shape)
        .join(Deployment, Deployment.id == Replica.deployment_id)
        .join(Shape, Shape.name == Deployment.shape, isouter=True)
        .where(Replica.workspace_id == workspace_id,
               Replica.status.in_(("starting", "ready", "failed", "stopping")),
               Replica.started_at.is_not(None))
    ).all()
    for r, dep, shape in open_rows:
        start = r.metered_until or r.started_at
        secs = max(0.0, (now - start).total_seconds())
        first = start if first is None else min(first, start)
        ln = line("replica", dep.name, dep.shape)
        ln.seconds += secs
        ln.gpu_seconds += secs * gpus_of(shape)
        ln.cost_usd += running_cost(shape, secs)
    open_work = [
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
    for kind, name, shape_name, shape, start in open_work:
        secs = max(0.0, (now - start).total_seconds())
        first = start if first is None else min(first, start)
        ln = line(kind, name, shape_name)
        ln.seconds += secs
        ln.gpu_seconds += secs * gpus_of(shape)
        ln.cost_usd += running_cost(shape, secs)
    for vol in s.scalars(select(Volume).where(Volume.workspace_id == workspace_id)):
        line("volume", vol.name, None).storage_bytes = vol.size_bytes
    out = sorted(lines.values(), key=lambda ln: (ln.kind, ln.name))
    return Bill(
        workspace=workspace_name, period_start=first, period_end=now, lines=out,
        replica_seconds=sum(ln.seconds for ln in out if ln.kind == "replica"),
        total_usd=sum(ln.cost_usd for ln in out),
    )
