"""Settled deployments: found for the whole fleet in a few queries, so that a pass gives
them only their health checks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models.deployments import DeploymentStatus, ReplicaStatus
from neocloud.models.inventory import NodeStatus
from neocloud.server.backends.base import Backend
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.reconcilers.core import now
from neocloud.server.reconcilers.deployments.base import ReconcilerBase


class Settled(ReconcilerBase):
    """Finds the deployments that need nothing but health checks."""

    def _settled(self, s: Session) -> dict[str, list[tuple[str, tuple[Backend, dict[str, Any]]]]]:
        """Deployments that need nothing this pass but their replicas' health checks, with
        each replica's backend and handle, read in two queries for the whole fleet.

        Settled: status ``ready``, no autoscaling, no pending reason; exactly
        ``replicas`` live replicas, all ``ready``, of the current generation, with a
        handle, on ``ready`` nodes whose backend is here, none stopping and none due for
        metering. For such a deployment the full step (:meth:`_reconcile`) would create,
        stop, place and meter nothing and keep its status; it would only run
        :meth:`_check_ready` on each replica, which is what the pass does, without the
        per-deployment transactions. The health checks only read; whatever they find is
        written under the replica's row lock as in the full step.
        """
        # columns, not rows: this runs every pass over the whole fleet
        deps = {row.id: row for row in s.execute(select(
            Deployment.id, Deployment.replicas, Deployment.generation, Deployment.autoscaling)
            .where(Deployment.status == DeploymentStatus.ready.value,
                   Deployment.pending_reason.is_(None), Deployment.pending_code.is_(None)))
            if not row.autoscaling}
        if not deps:
            return {}
        backends = {row.id: self.backends.get(row.backend) for row in s.execute(
            select(Node.id, Node.backend).where(Node.status == NodeStatus.ready.value))}
        by_dep: dict[str, list[Any]] = {}
        for r in s.execute(select(
                Replica.id, Replica.deployment_id, Replica.status, Replica.node_id,
                Replica.generation, Replica.handle, Replica.started_at,
                Replica.metered_until).where(Replica.status != ReplicaStatus.stopped.value)):
            by_dep.setdefault(r.deployment_id, []).append(r)
        due_before = now() - timedelta(seconds=self.settings.usage_period_s)
        out: dict[str, list[tuple[str, tuple[Backend, dict[str, Any]]]]] = {}
        for dep_id, dep in deps.items():
            reps = by_dep.get(dep_id, [])
            if len(reps) != dep.replicas:
                continue
            checks: list[tuple[str, tuple[Backend, dict[str, Any]]]] = []
            for r in reps:
                be = backends.get(r.node_id or "")
                # metering due: the rule of _meter_due (usage_period_s of unmetered time)
                if (be is None or r.status != ReplicaStatus.ready.value or not r.handle
                        or r.generation != dep.generation or r.started_at is None
                        or (r.metered_until or r.started_at) <= due_before):
                    break
                checks.append((r.id, (be, dict(r.handle))))
            else:
                out[dep_id] = checks
        return out
