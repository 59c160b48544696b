"""The node-health reconciler: node status from what the backends see, and drains.

Each pass (first in the reconciler thread, so the workload reconcilers that follow act on
the new statuses in the same pass):

* **Node loss.** For each backend that lists its live nodes (``alive_node_ids()``: Ray),
  a node of that backend whose ``ray.io/node-id`` label (set at ``neocloud node join``)
  is no longer among them becomes ``not_ready``, with a ``NodeLost`` event. Ray marks a
  node dead about 14 s after its raylet stops answering. A ``not_ready`` node whose id is
  alive again is ``ready`` (``NodeReady``); a node that rejoins gets a new Ray node id
  and is made ``ready`` by the join itself (``services.nodes.join_node``). When the
  backend cannot be asked, nothing changes: an unreachable Ray cluster is not a lost
  node.
* **What the loss does** is each workload kind's own, in its reconciler: replicas lose
  their allocation and are placed again (``deployments``), job workers fail their attempt
  with reason ``node lost`` and the job retries as configured (``jobs``), pods are
  stopped with that reason (``pods``). Each frees the allocation in the transaction that
  moves its workload to a state that holds nothing (the core's first invariant), so
  nothing held on a lost node outlives this pass; nothing is started again when the node
  comes back, since what moved no longer points at it.
* **Drain.** A ``draining`` node takes no new work (the scheduler places only on
  ``ready`` nodes); its jobs and pods run to their end and its replicas move; once it
  holds no allocation it becomes ``cordoned`` (``Drained``), and ``node remove`` is then
  allowed (it answers 409 while allocations remain).

Node status changes go through :func:`neocloud.server.services.nodes.set_node_status`
(compare-and-set on the status read, with the event in the same transaction).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models import NodeStatus
from neocloud.server.backends.base import Backend
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Allocation, Node
from neocloud.server.reconcilers.core import lock_row, reconcile_each
from neocloud.server.services.nodes import RAY_NODE_ID_LABEL, set_node_status

log = logging.getLogger(__name__)


class NodeReconciler:
    """Keeps node statuses in line with the backends' view of their nodes, and finishes
    drains. Call :meth:`run_once` in a loop.

    Args:
        db: the database.
        backends: backend per node ``backend`` name; those with ``alive_node_ids()``
            (Ray) are asked which of their nodes are alive.
    """

    def __init__(self, db: Database, backends: Mapping[str, Backend]):
        self.db = db
        self.backends = backends

    def run_once(self) -> None:
        alive = self._alive()
        with self.db.session() as s:
            ids = list(s.scalars(select(Node.id).where(
                Node.backend.in_(list(alive)) | (Node.status == NodeStatus.draining.value))
                .order_by(Node.name)))
        reconcile_each(self.db, "node", ids, lambda node_id: self._reconcile(node_id, alive))

    def _alive(self) -> dict[str, frozenset[str]]:
        """Live node ids per backend that lists them and has nodes registered; a backend
        that cannot be asked now is left out (its nodes keep their status)."""
        out: dict[str, frozenset[str]] = {}
        for name, be in self.backends.items():
            ask = getattr(be, "alive_node_ids", None)
            if ask is None:
                continue
            with self.db.session() as s:
                if s.scalars(select(Node.id).where(Node.backend == name).limit(1)).first() \
                        is None:
                    continue  # no node of that backend: do not connect to it
            try:
                out[name] = frozenset(ask())
            except Exception as e:
                log.warning("cannot list the live nodes of the %s backend: %s", name, e)
        return out

    def _reconcile(self, node_id: str, alive: Mapping[str, frozenset[str]]) -> None:
        with self.db.session() as s:
            node = lock_row(s, Node, node_id, skip_locked=True)
            if node is None:
                return
            if node.backend in alive:
                self._health(s, node, alive[node.backend])
            if node.status == NodeStatus.draining:
                self._drained(s, node)

    @staticmethod
    def _health(s: Session, node: Node, alive: frozenset[str]) -> None:
        backend_id = str((node.labels or {}).get(RAY_NODE_ID_LABEL) or "")
        if not backend_id:
            return  # registered by hand, not joined: its backend cannot tell
        if backend_id not in alive and node.status != NodeStatus.not_ready:
            set_node_status(s, node, NodeStatus.not_ready, reason="NodeLost", warning=True,
                            message=f"node {node.name}: {node.status} -> not_ready (its "
                                    f"{node.backend} node {backend_id[:12]} is no longer "
                                    "alive); its work is moved or stopped")
        elif backend_id in alive and node.status == NodeStatus.not_ready:
            set_node_status(s, node, NodeStatus.ready, reason="NodeReady",
                            message=f"node {node.name}: not_ready -> ready (its "
                                    f"{node.backend} node {backend_id[:12]} is alive)")

    @staticmethod
    def _drained(s: Session, node: Node) -> None:
        held = s.scalars(select(Allocation.id).where(Allocation.node_id == node.id)
                         .limit(1)).first()
        if held is None:
            set_node_status(s, node, NodeStatus.cordoned, reason="Drained",
                            message=f"node {node.name}: draining -> cordoned (no work "
                                    "left on it); it can be removed")
