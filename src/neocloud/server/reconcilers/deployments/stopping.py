"""Stopping replicas with a graceful drain, finishing a delete, and preemption.

A replica to stop is written ``stopping`` and the route table rebuilt *before* the
process is told to stop, so the gateway sends it no new request; then the backend stops
it with the deployment's ``drain_timeout_s`` of grace (SIGTERM, the serving runtime
finishes its in-flight requests, SIGKILL only after the timeout). Each stop runs in a
daemon thread of its own, so a long drain never holds up the pass of other deployments;
a replica is ``stopped`` (its allocation released) when its process is gone.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from neocloud.models.deployments import DeploymentStatus, ReplicaStatus
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.reconcilers.core import lock_row, set_status
from neocloud.server.reconcilers.deployments.base import DRAIN_MARGIN_S, LIVE, ReconcilerBase
from neocloud.server.services import events, placement

log = logging.getLogger(__name__)


class Stopping(ReconcilerBase):
    """Stops replicas (each in a thread of its own) and deletes what is done."""

    def _request_stop(self, rid: str) -> Future[None] | None:
        """Stop replica ``rid`` (written ``stopping``) in a background thread, unless a stop
        of it is already under way; returns the future of a stop started now."""
        with self._stops_lock:
            running = self._stops.get(rid)
            if running is not None and not running.done():
                return None
            fut: Future[None] = Future()
            fut.set_running_or_notify_cancel()
            self._stops[rid] = fut

        def run() -> None:
            # A daemon thread: a drain never holds up the exit of the control plane (the
            # replica stays ``stopping`` in the database and the next start stops it).
            try:
                self._stop_replica(rid)
            except BaseException as e:  # noqa: BLE001 - handed to the future's callback
                fut.set_exception(e)
            else:
                fut.set_result(None)

        def forget(f: Future[None]) -> None:
            with self._stops_lock:
                if self._stops.get(rid) is f:
                    del self._stops[rid]
            if f.exception() is not None:
                log.error("stopping replica %s failed", rid, exc_info=f.exception())

        fut.add_done_callback(forget)
        threading.Thread(target=run, name=f"neocloud-stop-{rid[:8]}", daemon=True).start()
        return fut

    def wait_stops(self, timeout_s: float | None = None) -> bool:
        """Wait for the stops under way; returns whether all finished (tests, shutdown)."""
        with self._stops_lock:
            futs = list(self._stops.values())
        _done, pending = wait_futures(futs, timeout=timeout_s)
        return not pending

    def _stop_replica(self, rid: str, grace_s: float | None = None) -> None:
        """Stop the process of a ``stopping`` replica, with its deployment's drain timeout
        (plus :data:`DRAIN_MARGIN_S`) as the grace before SIGKILL unless ``grace_s`` is
        given, then write it ``stopped`` and release its allocation."""
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None:
                return
            found = self._backend(s, r.node_id)
            handle = dict(r.handle)
            dep = s.get(Deployment, r.deployment_id)
            if grace_s is None:
                grace_s = (dep.drain_timeout_s + DRAIN_MARGIN_S if dep is not None
                           else self.settings.replica_stop_grace_s)
        if found is not None and handle:
            found[0].stop(handle, grace_s=grace_s)
        with self.db.session() as s:
            r = lock_row(s, Replica, rid)
            if r is None or r.status != ReplicaStatus.stopping:
                return
            self._meter_row(s, r, final=True)
            placement.release(s, owner_id=r.id)
            set_status(s, r, ReplicaStatus.stopped, reason="Stopped",
                       message=f"replica {r.id[:8]} stopped")

    def _finish_delete(self, dep_id: str) -> None:
        with self.db.session() as s:
            dep = lock_row(s, Deployment, dep_id, skip_locked=True)
            if dep is None or dep.status != DeploymentStatus.deleting:
                return
            live = s.scalars(
                select(Replica).where(Replica.deployment_id == dep_id,
                                      Replica.status != "stopped")
            ).first()
            if live is not None:
                return
            s.execute(delete(Replica).where(Replica.deployment_id == dep_id))
            events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                          object_id=dep.id, reason="Deleted", message="deployment deleted")
            s.delete(dep)

    def stop_local_replicas(self) -> int:
        """Stop every replica running on a ``local`` node (at ``neocloud up`` shutdown).

        Each is written ``stopping`` first, then stopped, metered and released, so the
        next start brings the deployments back with fresh replicas. Returns the count.
        """
        with self.db.session() as s:
            rows = s.execute(
                select(Replica.id).join(Node, Node.id == Replica.node_id)
                .where(Node.backend == "local",
                       Replica.status.in_(("starting", "ready", "failed", "stopping")))
            ).all()
            ids = [row[0] for row in rows]
            for rid in ids:
                r = s.get(Replica, rid)
                if r is not None:
                    set_status(s, r, ReplicaStatus.stopping, reason="Stopping",
                               message=f"replica {r.id[:8]} stopping: the control plane "
                                       "is shutting down")
        for rid in ids:
            try:
                self._stop_replica(rid, grace_s=self.settings.replica_stop_grace_s)
            except Exception:
                log.exception("stopping replica %s failed", rid)
        return len(ids)


def preempt_replica(s: Session, replica_id: str, reason: str) -> None:
    """Preemption handler of replicas: written ``stopping``; the reconciler stops it and
    the deployment asks for a new replica, which waits for room."""
    r = s.get(Replica, replica_id)
    if r is None or r.status not in LIVE:
        return
    r.message = reason
    set_status(s, r, ReplicaStatus.stopping, reason="Preempted", warning=True,
               message=f"replica {r.id[:8]} {reason}")
