"""Readiness and health of started replicas: ``starting`` -> ``ready`` when ``/ready``
answers, a crash recorded when the process ended, restarts after the back-off."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models.deployments import DeploymentStatus, Engine, ReasonCode, ReplicaStatus
from neocloud.server.backends.base import Backend, backend_for
from neocloud.server.db.tables import Allocation, Deployment, Node, Replica
from neocloud.server.reconcilers.core import (
    lock_row,
    now,
    release_ended,
    set_status,
    set_statuses,
)
from neocloud.server.reconcilers.deployments.base import Known, lock_replicas, rows_in
from neocloud.server.reconcilers.deployments.starting import Starting
from neocloud.server.services import events
from neocloud.server.services.deployments import autoscaling_of


class Readiness(Starting):
    """Checks starting and ready replicas, restarts failed ones."""

    def _check_starting(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            found = self._backend(s, r.node_id) if r else None
            if r is None or found is None:
                return
            be, node = found
            handle, url = dict(r.handle), self._url(node, r, "/ready")
            started = r.started_at or now()
            dep = s.get(Deployment, r.deployment_id)
            limit = self.ready_timeout_s(dep.engine if dep else Engine.builtin)
        if not handle:
            # Written as starting, but the process start never got recorded (a crash in
            # between): start it now. No process can exist without its handle recorded
            # except in that window, so nothing is started twice.
            self._start_process(rid)
            return
        state = be.inspect(handle)
        if not state.running:
            if not self._ended(be, rid, handle, state.exit_code):
                return
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == "starting":
                    self._crashed(s, r, self._exit_message(be, handle, state.exit_code))
            return
        self._verdict.forget(rid)
        if be.probe_ready(handle, url, timeout_s=1.0):
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is None or r.status != "starting":
                    return
                r.ready_at, r.message = now(), None
                secs = (r.ready_at - started).total_seconds()
                set_status(s, r, ReplicaStatus.ready, reason="Ready",
                           message=f"replica {r.id[:8]} ready in {secs:.1f} s")
                self._cold_start_event(s, r)
            return
        self._maybe_timed_out(rid, be, handle, started, limit)

    def _maybe_timed_out(self, rid: str, be: Backend, handle: dict[str, Any],
                         started: datetime, limit: float) -> None:
        """A starting replica not ready ``limit`` seconds after ``started``: its process
        is stopped and the replica written crashed (``STARTUP_TIMEOUT``)."""
        if (now() - started).total_seconds() > limit:
            be.stop(handle, grace_s=self.settings.replica_stop_grace_s)
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == "starting":
                    self._crashed(s, r, f"not ready after {limit:.0f} s",
                                  ReasonCode.STARTUP_TIMEOUT)

    def _check_starting_many(self, rids: Sequence[str], known: Known | None = None) -> None:
        """:meth:`_check_starting` for several replicas, the ready ones written together.

        One transaction reads the replicas, their nodes and deployments (those of
        ``known``, just started, are not read again); each running
        process is probed outside any transaction; those that answer are written
        ``ready`` (with their events) in one transaction under the rows' locks, each only
        if still ``starting``. A replica with no handle recorded, or whose process
        ended, goes through :meth:`_check_starting`; one not ready in its time is
        stopped and written crashed, as there.
        """
        if not rids:
            return
        known = known or Known()
        have = {r.id for r in known.reps}
        reps = [r for r in known.reps if r.id in set(rids)]
        nodes, deps = dict(known.nodes), dict(known.deps)
        rest = [rid for rid in rids if rid not in have]
        if rest:
            with self.db.session() as s:
                more = [r for r in s.scalars(select(Replica).where(Replica.id.in_(rest)))
                        if r.status == ReplicaStatus.starting]
                nodes.update((n.id, n) for n in rows_in(
                    s, Node, Node.id, (r.node_id for r in more if r.node_id)))
                deps.update((d.id, d) for d in rows_in(
                    s, Deployment, Deployment.id, (r.deployment_id for r in more)))
            reps += more
        answered: dict[str, datetime] = {}
        for r in reps:
            found = backend_for(self.backends, nodes.get(r.node_id or ""), lambda n: n.backend)
            if found is None:
                continue
            be, node = found
            handle = dict(r.handle)
            if not handle:
                self._check_starting(r.id)
                continue
            if not be.inspect(handle).running:
                self._check_starting(r.id)
                continue
            self._verdict.forget(r.id)
            started = r.started_at or now()
            if be.probe_ready(handle, self._url(node, r, "/ready"), timeout_s=1.0):
                answered[r.id] = started
                continue
            dep = deps.get(r.deployment_id)
            self._maybe_timed_out(r.id, be, handle, started,
                                  self.ready_timeout_s(dep.engine if dep else Engine.builtin))
        if not answered:
            return
        with self.db.session() as s:
            rows = lock_replicas(s, list(answered))
            # kept while the statuses are written (their events name the deployment; the
            # session holds rows weakly and would read each again)
            held = rows_in(s, Deployment, Deployment.id,
                           (r.deployment_id for r in rows.values()))
            at = now()
            # the statuses in one statement, the rows and their events written together
            with s.no_autoflush:
                ready: list[Replica] = []
                messages: list[str] = []
                for rid, started in answered.items():
                    row = rows.get(rid)
                    if row is None or row.status != ReplicaStatus.starting:
                        continue
                    row.ready_at, row.message = at, None
                    secs = (at - started).total_seconds()
                    ready.append(row)
                    messages.append(f"replica {row.id[:8]} ready in {secs:.1f} s")
                set_statuses(s, ready, ReplicaStatus.ready, reason="Ready",
                             messages=messages)
                if ready:  # the first of the batch is the one that started from zero
                    self._cold_start_event(s, ready[0], batch={r.id for r in ready})
            del held

    def _cold_start_event(self, s: Session, r: Replica,
                          batch: Collection[str] = ()) -> None:
        """A deployment that scales to zero got its first ready replica: record the
        measured cold start (replica row created -> ready, seconds). ``batch``: the ids
        of replicas written ready together with ``r`` (not counted as ready before it).
        A replica ready again after a crash (``restarts`` > 0) is a restart, not a start
        from zero: its row's age holds its earlier runs, and its ``Crashed`` event
        already tells the story."""
        if r.restarts > 0 or r.ready_at is None:
            return
        dep = s.get(Deployment, r.deployment_id)
        config = autoscaling_of(dep) if dep is not None else None
        if dep is None or config is None or config.min_replicas > 0:
            return
        others = s.scalars(select(Replica.id).where(
            Replica.deployment_id == dep.id, Replica.id.not_in({r.id, *batch}),
            Replica.status == ReplicaStatus.ready)).first()
        if others is not None:
            return
        secs = (r.ready_at - r.created_at).total_seconds()
        events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                      object_id=dep.id, reason="ColdStart",
                      message=f"started from zero: replica {r.id[:8]} ready {secs:.1f} s "
                              "after it was asked for")

    def _check_ready(self, rid: str,
                     known: tuple[Backend, dict[str, Any]] | None = None) -> bool:
        """Health check of a ready replica; ``known``: its backend and handle, already
        read. Returns whether its process still runs."""
        if known is not None:
            be, handle = known
        else:
            with self.db.session() as s:
                r = s.get(Replica, rid)
                found = self._backend(s, r.node_id) if r else None
                if r is None or found is None:
                    return True
                be, _node = found
                handle = dict(r.handle)
        state = be.inspect(handle)
        if state.running:
            self._verdict.forget(rid)
            return True
        if self._ended(be, rid, handle, state.exit_code):
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == "ready":
                    self._crashed(s, r, self._exit_message(be, handle, state.exit_code))
        return False

    def _maybe_restart(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None or r.status != "failed":
                return
            if r.next_restart_at and r.next_restart_at > now():
                return
            found = self._backend(s, r.node_id)
            if found is not None and r.handle:
                be = found[0]
                handle = dict(r.handle)
            else:
                be, handle = None, {}
        if be is not None and handle:
            release_ended(be, handle, grace_s=1.0)  # nothing of the old process is left
        with self.db.session() as s:
            r = lock_row(s, Replica, rid)
            if r is None or r.status != "failed":
                return
            dep = s.get(Deployment, r.deployment_id)
            if dep is None or dep.status == DeploymentStatus.deleting:
                return
            alloc = s.scalars(select(Allocation).where(Allocation.owner_id == r.id)).first()
            if alloc is None:
                r.node_id = None
                set_status(s, r, ReplicaStatus.pending, reason="Pending",
                           message=f"replica {r.id[:8]} lost its allocation; placing again")
                return
            r.handle, r.pid = {}, None
            r.port = None  # picked on its node before the start (_port)
            # It kept its allocation through the crash: metering goes on from where it was,
            # not from the new start (GPU time held while crash-looping is billed).
            r.metered_until = r.metered_until or r.started_at
            r.started_at = now()
            set_status(s, r, ReplicaStatus.starting, reason="Restarting",
                       message=f"replica {r.id[:8]} restart {r.restarts}")
        self._start_process(rid)
