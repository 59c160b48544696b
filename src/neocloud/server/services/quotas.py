"""Workspace quotas (set by operators) and the queue of waiting work."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models import QueueItem, QuotaOut, QuotaSet
from neocloud.server.db.tables import Deployment, Job, Pod, Quota, Replica, Workspace
from neocloud.server.services.placement import usage_of


def set_quota(s: Session, *, workspace: Workspace, spec: QuotaSet) -> Quota:
    """Replace the workspace's quota. Work already running is never stopped by a lower
    quota; new work waits until usage is under it again."""
    row = s.get(Quota, workspace.id)
    if row is None:
        row = Quota(workspace_id=workspace.id)
        s.add(row)
    row.gpus = dict(spec.gpus)
    row.gpus_total = spec.gpus_total
    row.cpu_milli = spec.cpu_milli
    row.memory_mib = spec.memory_mib
    row.updated_at = datetime.now(UTC)
    s.flush()
    return row


def quota_out(s: Session, *, workspace: Workspace) -> QuotaOut:
    row = s.get(Quota, workspace.id)
    used = usage_of(s, workspace.id)
    return QuotaOut(
        workspace=workspace.name,
        gpus=dict(row.gpus) if row else {},
        gpus_total=row.gpus_total if row else None,
        cpu_milli=row.cpu_milli if row else None,
        memory_mib=row.memory_mib if row else None,
        used_gpus={k: v / 1000 for k, v in used.gpu_milli_by_type.items()},
        used_cpu_milli=used.cpu_milli,
        used_memory_mib=used.memory_mib,
    )


def queue(s: Session, *, workspace_id: str | None) -> list[QueueItem]:
    """Waiting replicas, jobs and pods (``workspace_id=None``: of every workspace),
    highest priority first, then oldest, each with its reason."""
    names = {w.id: w.name for w in s.scalars(select(Workspace))}
    q = (select(Replica, Deployment)
         .join(Deployment, Deployment.id == Replica.deployment_id)
         .where(Replica.status == "pending"))
    jq = select(Job).where(Job.status == "queued")
    pq = select(Pod).where(Pod.status == "queued", Pod.desired == "running")
    if workspace_id is not None:
        q = q.where(Replica.workspace_id == workspace_id)
        jq = jq.where(Job.workspace_id == workspace_id)
        pq = pq.where(Pod.workspace_id == workspace_id)
    items = [
        QueueItem(kind="replica", name=dep.name, id=r.id, priority=dep.priority,
                  reason=r.message, since=r.created_at,
                  workspace=names.get(r.workspace_id, ""))
        for r, dep in s.execute(q)
    ]
    items += [QueueItem(kind="job", name=j.name, id=j.id, priority=j.priority, reason=j.reason,
                        since=j.created_at, workspace=names.get(j.workspace_id, ""))
              for j in s.scalars(jq)]
    items += [QueueItem(kind="pod", name=p.name, id=p.id, priority=0, reason=p.reason,
                        since=p.created_at, workspace=names.get(p.workspace_id, ""))
              for p in s.scalars(pq)]
    items.sort(key=lambda i: (-i.priority, i.since))
    return items
