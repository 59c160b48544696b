"""The status of a deployment, from its replicas (``ready``, ``degraded``, ``pending``,
``failed`` when every replica crash-loops, ``scaled_to_zero``)."""

from __future__ import annotations

from sqlalchemy import select

from neocloud.models.deployments import DeploymentStatus, ReasonCode
from neocloud.server.db.tables import Deployment, Replica
from neocloud.server.reconcilers.core import lock_row, now, set_status
from neocloud.server.reconcilers.deployments.base import (
    CRASH_LOOP_RESTARTS,
    LIVE,
    ReconcilerBase,
)


class Status(ReconcilerBase):
    """Writes a deployment's status from its replicas."""

    def _update_status(self, dep_id: str) -> None:
        with self.db.session() as s:
            dep = lock_row(s, Deployment, dep_id, skip_locked=True)
            if dep is None or dep.status == "deleting":
                return
            reps = s.scalars(select(Replica).where(Replica.deployment_id == dep_id)).all()
            ready = sum(1 for r in reps if r.status == "ready")
            old = any(r.generation != dep.generation and r.status in LIVE for r in reps)
            cur = [r for r in reps if r.generation == dep.generation and r.status in LIVE]
            # Steady while it lasts: a replica restarting after a crash still counts (its
            # restarts stay), so the status does not flip failed/pending at each restart.
            crash_loop = bool(cur) and all(
                r.status in ("failed", "starting") and r.restarts >= CRASH_LOOP_RESTARTS
                for r in cur)
            if dep.replicas == 0 and ready == 0:
                status = "scaled_to_zero"
            elif crash_loop and ready == 0:
                status = "failed"
            elif ready >= dep.replicas and not old:
                status = "ready"
            elif ready > 0:
                status = "degraded"
            else:
                status = "pending"
            if status in ("ready", "scaled_to_zero"):
                dep.pending_reason = dep.pending_code = None
            elif crash_loop and ready == 0:
                dep.pending_code = ReasonCode.CRASH_LOOP.value
            if status != dep.status:
                dep.updated_at = now()
                set_status(s, dep, DeploymentStatus(status), reason="StatusChanged",
                           message=f"{dep.status} -> {status} ({ready}/{dep.replicas} ready)")
