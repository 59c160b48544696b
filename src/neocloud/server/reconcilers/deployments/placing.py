"""Placing pending replicas: admission, the node and GPUs, the allocation and the
``starting`` status written in one transaction under the placement lock, then the start."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from neocloud.models.deployments import DeploymentStatus, ReasonCode, ReplicaStatus
from neocloud.server.db.tables import Deployment, Node, Replica, Shape
from neocloud.server.reconcilers.core import (
    Waiting,
    lock_row,
    now,
    place,
    set_statuses,
)
from neocloud.server.reconcilers.deployments.base import Known, lock_replicas, rows_in
from neocloud.server.reconcilers.deployments.starting import Starting
from neocloud.server.scheduler import Binding
from neocloud.server.services import events, placement


class Placing(Starting):
    """Places the pending replicas of a deployment."""

    def _place_and_start(self, rid: str) -> None:
        """Place and start the one pending replica ``rid`` (:meth:`_place_pending`,
        :meth:`_start_many`)."""
        with self.db.session() as s:
            r = s.get(Replica, rid)
            dep_id = r.deployment_id if r is not None else None
        if dep_id is not None:
            placed = self._place_pending(dep_id, [rid])
            self._start_many(placed.ids, known=placed)

    def _pending(self, s: Session, dep: Deployment, r: Replica, reason: str,
                 code: ReasonCode) -> None:
        r.message = reason
        dep.pending_reason = reason
        dep.pending_code = code.value
        events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                      object_id=dep.id, reason="Unschedulable", message=reason, warning=True,
                      dedupe=True)

    def _place_pending(self, dep_id: str, rids: Sequence[str]) -> Known:
        """Place the pending replicas ``rids`` of deployment ``dep_id`` (in that order) in
        one transaction; returns the replicas placed, with their nodes, to be started
        (:meth:`_start_many`).

        One transaction takes the placement lock, then the replicas' row locks (one
        statement), then the deployment's, and finds each replica still wanted (pending,
        of the deployment's current generation, the deployment not ``deleting``) as
        :meth:`_place_and_start` does for one. Each is placed by the core's
        :func:`~neocloud.server.reconcilers.core.place` (admission, placement,
        preemption, the allocation), which reads the budget, the quota and the inventory
        once for the whole transaction (``services.placement``); the placed ones are
        written ``starting`` with their node and GPUs, with their events, before the
        transaction commits, and only then started. The first
        replica without room and without preemption ends the placing: the others have
        the same request and the same verdict, and get its reason.
        """
        placed = Known()
        with self.db.session() as s:
            placement.lock_placement(s)
            placement.defer_binds(s)  # the replica rows exist: allocations written together
            rows = lock_replicas(s, rids)
            dep = lock_row(s, Deployment, dep_id)
            if dep is None or dep.status == DeploymentStatus.deleting:
                return placed  # deleted meanwhile: its replicas are no longer wanted
            wanted = [rows[rid] for rid in rids if rid in rows
                      and rows[rid].status == ReplicaStatus.pending
                      and rows[rid].deployment_id == dep.id
                      and rows[rid].generation == dep.generation]
            if not wanted:
                return placed
            shape = s.get(Shape, dep.shape)
            if shape is None:
                for r in wanted:
                    self._pending(s, dep, r, f"shape {dep.shape!r} no longer exists",
                                  ReasonCode.SHAPE_MISSING)
                return placed
            request = placement.request_for_shape(shape)
            bound: list[tuple[Replica, Binding]] = []
            for i, r in enumerate(wanted):
                got = place(
                    s, kind="replica", waiter=r, workspace_id=dep.workspace_id,
                    requests=[request], priority=dep.priority, preemptible=dep.preemptible,
                    preempted_by=f"deployment {dep.name} (priority {dep.priority})",
                    owners=_owned_by(r.id))
                if isinstance(got, Waiting):
                    self._pending(s, dep, r, got.reason, got.code)
                    if not got.preempting:
                        for rest in wanted[i + 1:]:  # its event would be deduplicated
                            rest.message = got.reason
                        break
                    continue
                bound.append((r, got[0]))
            if not bound:
                return placed
            # the nodes chosen were read again under the placement lock (most of them)
            nodes = placement.nodes_read(s, (b.node_id for _r, b in bound))
            nodes.update((n.id, n) for n in rows_in(
                s, Node, Node.id, (b.node_id for _r, b in bound if b.node_id not in nodes)))
            at = now()
            dep.pending_reason = dep.pending_code = None
            # the statuses in one statement, the attributes and events written together
            # at commit
            with s.no_autoflush:
                messages: list[str] = []
                for r, binding in bound:
                    node = nodes.get(binding.node_id)
                    r.node_id = binding.node_id
                    r.gpu_indices = list(binding.gpu_indices)
                    # The port is picked on the replica's node before the start, outside
                    # this transaction and the placement lock (Ray asks the node).
                    r.port = None
                    r.started_at = at
                    r.message = None
                    where = node.name if node else "?"
                    gpus = f" GPUs {list(binding.gpu_indices)}" if binding.gpu_indices else ""
                    messages.append(f"replica {r.id[:8]} placed on node {where}{gpus}")
                    placed.reps.append(r)
                set_statuses(s, placed.reps, ReplicaStatus.starting, reason="Scheduled",
                             messages=messages)
            placed.nodes, placed.deps = nodes, {dep.id: dep}
        return placed


def _owned_by(rid: str) -> Callable[[list[Binding]], list[str]]:
    """The ``owners`` of :func:`~neocloud.server.reconcilers.core.place` for replica
    ``rid`` (one binding, owned by it)."""
    return lambda _bindings: [rid]
