"""Replicas on lost nodes: freed, written ``pending`` and placed again, and their old
process stopped through its backend, so that what moved never runs twice."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from neocloud.models.deployments import ReplicaStatus
from neocloud.models.inventory import NodeStatus
from neocloud.server.backends.base import Backend
from neocloud.server.db.tables import Node, Replica
from neocloud.server.reconcilers.core import (
    StaleStatus,
    backend_of,
    lock_row,
    release_ended,
    set_status,
)
from neocloud.server.reconcilers.deployments.base import LIVE, ReconcilerBase
from neocloud.server.services import placement

log = logging.getLogger(__name__)


class NodeLoss(ReconcilerBase):
    """Moves the replicas of ``not_ready`` nodes."""

    def _release_lost_nodes(self) -> None:
        """Replicas on nodes that are ``not_ready`` lose their allocation and are placed
        again (on another node when one fits), each in its own transaction under its row
        lock; then, outside any transaction, the process each had is stopped through its
        backend (:func:`~neocloud.server.reconcilers.core.release_ended`: Ray frees what
        it still accounts for it, and a node that comes back runs nothing of it), so what
        moved is never running twice."""
        with self.db.session() as s:
            lost = {n.id: n.name for n in
                    s.scalars(select(Node).where(Node.status == NodeStatus.not_ready.value))}
            ids = list(s.scalars(select(Replica.id).where(
                Replica.node_id.in_(lost), Replica.status.in_(LIVE)))) if lost else []
        ended: list[tuple[Backend, dict[str, Any]]] = []
        for rid in ids:
            try:
                found = self._release_lost(rid, lost)
            except StaleStatus as e:
                log.debug("replica %s: %s; next pass", rid, e)
                continue
            if found is not None:
                ended.append(found)
        for be, handle in ended:
            release_ended(be, handle, grace_s=self.settings.replica_stop_grace_s)

    def _release_lost(self, rid: str, lost: dict[str, str]
                      ) -> tuple[Backend, dict[str, Any]] | None:
        """Free replica ``rid`` on a lost node (one of ``lost``: node id -> name) and write
        it ``pending``; returns the backend and handle of the process it had, if any."""
        ended: tuple[Backend, dict[str, Any]] | None = None
        with self.db.session() as s:
            r = lock_row(s, Replica, rid, skip_locked=True)
            if r is None or r.status not in LIVE or r.node_id not in lost:
                return None
            found = backend_of(self.backends, s, r.node_id)
            if found is not None and r.handle:
                ended = (found[0], dict(r.handle))
            self._meter_row(s, r, final=True)
            placement.release(s, owner_id=r.id)
            node_name = lost[r.node_id or ""]
            r.node_id, r.handle, r.pid, r.port = None, {}, None, None
            r.started_at, r.ready_at, r.metered_until = None, None, None
            r.message = f"node {node_name} was lost; placing again"
            set_status(s, r, ReplicaStatus.pending, reason="NodeLost", warning=True,
                       message=f"replica {r.id[:8]}: node {node_name} is not ready; "
                               "its allocation was freed")
        return ended
