"""Deciding the replicas of a deployment: rows to create, replicas to stop (scale-in,
rolling update, draining nodes).

Rolling update: a change of engine, service, model, shape or env raises the generation; new
replicas start first (at most ``max_surge``, default 1, above the desired count) and old
ones stop only while at least ``replicas - max_unavailable`` (default: all) stay ready;
old replicas not ready yet are stopped at once. Scale-in picks replicas that are not
ready first, then the idle ones, then the least loaded (in-flight requests at the
gateway), newest first on a tie.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models.inventory import NodeStatus
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.reconcilers.deployments.base import LIVE, ReconcilerBase


class Scaling(ReconcilerBase):
    """Plans the replica rows of a deployment."""

    @staticmethod
    def _draining_nodes(s: Session, reps: list[Replica]) -> dict[str, str]:
        """Id -> name of the ``draining`` nodes among those of ``reps``."""
        ids = {r.node_id for r in reps if r.node_id}
        if not ids:
            return {}
        return {n.id: n.name for n in s.scalars(select(Node).where(
            Node.id.in_(ids), Node.status == NodeStatus.draining.value))}

    def _plan_scale(self, s: Session, dep: Deployment, reps: list[Replica],
                    draining: dict[str, str] | None = None) -> list[str]:
        """Create missing replica rows; return ids of replicas to stop.

        A replica on a ``draining`` node (one of ``draining``: id -> name) moves as in a
        rolling update: it counts as an old replica, so its replacement is placed (on
        another node: the scheduler places only on ``ready`` ones) and it is stopped once
        the replacement is ready (at once if it was not ready itself)."""
        draining = draining or {}
        live = [r for r in reps if r.status in LIVE]
        cur = [r for r in live if r.generation == dep.generation
               and r.node_id not in draining]
        old = [r for r in live if r.generation != dep.generation or r.node_id in draining]
        desired = dep.replicas
        stop: list[str] = [r.id for r in reps if r.status == "stopping"]
        # a rollout runs at most max_surge replicas above the desired count, and keeps at
        # least desired - max_unavailable ready ones
        max_total = desired + dep.max_surge if old else desired
        want = min(desired - len(cur), max_total - len(live))
        for _ in range(max(0, want)):
            r = Replica(deployment_id=dep.id, workspace_id=dep.workspace_id,
                        generation=dep.generation, status="pending")
            s.add(r)
            cur.append(r)
        load = self._replica_load(dep.id)

        def victim_order(r: Replica) -> tuple[int, int, float]:
            # not ready first, then idle, then least loaded; newest first on a tie
            order = {"pending": 0, "failed": 1, "starting": 2, "ready": 3}
            return (order[r.status], load.get(r.id, 0), -r.created_at.timestamp())

        if len(cur) > desired:
            extra = sorted(cur, key=victim_order)
            stop += [r.id for r in extra[: len(cur) - desired]]
        cur_ready = sum(1 for r in cur if r.status == "ready")
        old_ready = sorted((r for r in old if r.status == "ready"), key=victim_order)
        stop += [r.id for r in old if r.status != "ready"]
        surplus = cur_ready + len(old_ready) - max(0, desired - dep.max_unavailable)
        if old_ready and (surplus > 0 or desired == 0):
            stop += [r.id for r in old_ready[: max(1, surplus)]]
        s.flush()
        return list(dict.fromkeys(stop))

    def _replica_load(self, dep_id: str) -> dict[str, int]:
        """In-flight requests per replica id at the gateway (empty without one)."""
        st = self.stats(dep_id) if self.stats is not None else None
        return dict(st.replica_in_flight) if st is not None else {}
