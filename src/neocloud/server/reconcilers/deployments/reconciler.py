"""The deployment reconciler's pass: which deployments to visit, and per deployment the
deciding transaction, the stops, then placement, starts, readiness and status."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import wait as wait_futures
from typing import Any, TypeVar

from sqlalchemy import select

from neocloud.models.deployments import ReplicaStatus
from neocloud.server.backends.base import Backend, backend_for
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.reconcilers.core import (
    StaleStatus,
    lock_row,
    now,
    reconcile_each,
    reconcile_locked,
    set_status,
)
from neocloud.server.reconcilers.deployments.autoscale import Autoscaling
from neocloud.server.reconcilers.deployments.base import LIVE, STOP_WAIT_S, Known, rows_in
from neocloud.server.reconcilers.deployments.changes import KEY_COLUMNS, Changes
from neocloud.server.reconcilers.deployments.node_loss import NodeLoss
from neocloud.server.reconcilers.deployments.placing import Placing
from neocloud.server.reconcilers.deployments.readiness import Readiness
from neocloud.server.reconcilers.deployments.scaling import Scaling
from neocloud.server.reconcilers.deployments.settled import Settled
from neocloud.server.reconcilers.deployments.status import Status
from neocloud.server.reconcilers.deployments.stopping import Stopping
from neocloud.server.reconcilers.deployments.workers import OrderedWorkers

log = logging.getLogger(__name__)

PARALLEL = 4
"""Default of :attr:`DeploymentReconciler.parallel`: enough to overlap the round trips of
a few deployments, few enough to leave the API most of the connection pool (each worker
holds two connections: its deployment's lock and its transaction)."""

LOOK_EVERY = 128
"""Deployments of one priority group run between two changed-first looks: a group is
every deployment of one priority that is not settled (in a burst, or when a whole fleet's
replicas are due for metering, thousands), so a deployment asked for meanwhile waits for
at most this many full steps (about a second at 5,000 nodes) rather than for the group."""

T = TypeVar("T")


class DeploymentReconciler(Changes, Placing, Readiness, Stopping, Scaling, Autoscaling,
                           NodeLoss, Settled, Status):
    """Drives every deployment towards its desired replicas. Call :meth:`run_once` in a loop.

    Args:
        db: the database.
        backends: backend per node ``backend`` name (``local``, ``fake``).
        settings: control-plane settings (timeouts, back-off, metering period).
        on_change: called with the ids of the deployments a pass (or a step) touched or
            saw change, whose routes may have changed (``DbRouteTable.refresh``).
        box: decrypts the secrets a deployment references.
    """

    parallel = PARALLEL
    """Deployments reconciled at once on PostgreSQL (:mod:`.workers`); SQLite, with its
    single writer, reconciles one at a time."""

    @functools.cached_property
    def workers(self) -> OrderedWorkers:
        return OrderedWorkers(self.parallel)

    _pass_started = float("-inf")
    """``time.monotonic()`` when the last full pass started."""

    # -- the loop ---------------------------------------------------------------------
    def run_step(self) -> None:
        """The reconciler thread's step: a full pass (:meth:`run_once`) when one is due,
        that is when none has started for ``settings.reconcile_interval_s``, as on a
        control plane no request wakes; otherwise, woken by a request in between, a
        changed-first look alone (``changes``: the full step of each deployment whose
        replicas asked for changed, a new one included).

        Invariant: **a full pass starts at most two reconcile intervals after the last
        one started while the thread runs** (it is due after one; the thread, which
        waits one interval after each step, runs it at the first step after that, the
        health checks and every change a look leaves with it), and **a wake never waits
        for a full pass to fall due to act on a change of the replicas asked for** (one
        the look leaves, a higher priority waiting, starts the pass at once: see
        ``changes.left_to_pass``). Before, every wake started a
        full pass: the fleet benchmark's steady writer (a change of the drain timeout
        about every 0.1 s) kept the passes back to back, 73 to 102 passes in 44 s with
        the health checks of all 50,000 replicas each, the interpreter busy with them 42
        s of the 44. A pass driven by hand (tests, ``Reconcilers.run_once``) is
        :meth:`run_once`, always a full pass."""
        due = time.monotonic() - self._pass_started >= self.settings.reconcile_interval_s
        if due or not self._full_passes:
            self.run_once()
            return
        self._changed_first(skip=set(), throttled=False)
        if self.left_to_pass:
            # the look left a change to the pass (a higher priority waits): the pass,
            # which runs the priorities in order, starts now, not when it falls due
            # (before: a lower-priority delete or scale waited up to two intervals)
            self.run_once()

    def run_once(self) -> None:
        """One full pass over every deployment (see :mod:`.changes` for the changed-first
        looks it makes when woken: between priority groups, every :data:`LOOK_EVERY`
        deployments of a group, and between the health checks of settled deployments).
        Every change is acted on within one pass of its commit. At the end the routes of
        every deployment the pass touched or saw change are rebuilt (``on_change``)."""
        self._pass_started = time.monotonic()
        self._release_lost_nodes()
        read_at = now()
        with self.db.session() as s:
            rows = s.execute(select(*KEY_COLUMNS).order_by(
                Deployment.priority.desc(), Deployment.created_at)).all()
            settled = self._settled(s, rows)
        touched = self._observe(rows, read_at)
        fixed = {row.id for row in rows if not row.autoscaling}
        # one priority after the other, each fully (its placements and preemptions
        # before any work of lower priority), the deployments of one priority at once
        by_priority: dict[int, list[str]] = {}
        for row in rows:
            if row.id not in settled:
                by_priority.setdefault(int(row.priority), []).append(row.id)
        self.workers.workers = self.parallel if self.db.is_postgres else 1
        handled: set[str] = set()  # run by a changed-first look after the read above
        groups = list(by_priority.values())
        for k, group in enumerate(groups):
            for j in range(0, len(group), LOOK_EVERY):
                if k or j:  # not before the first: the pass reads right before it
                    # the rest of this group and the groups after it are the pass's own
                    self._changed_first(skip=handled, coming={
                        *group[j:], *(i for g in groups[k + 1:] for i in g)})
                chunk = group[j:j + LOOK_EVERY]
                self.workers.run(chunk, lambda dep_id: reconcile_each(
                    self.db, "deployment", [dep_id],
                    functools.partial(self._reconcile, fixed=dep_id in fixed)))
                touched.update(chunk)
        for dep_id, checks in settled.items():
            self._changed_first(skip=handled)
            if dep_id in handled:  # its full step ran, health checks included
                continue
            # every replica ready and nothing to decide: only the health checks, and the
            # deployment's status at once if one of them found a process gone (as the
            # full step does after its checks)
            self._scalers.pop(dep_id, None)
            if not all([self._check_ready(rid, known=known) for rid, known in checks]):
                self._unsettle(dep_id)
                reconcile_locked(self.db, "deployment", dep_id, self._update_status)
                touched.add(dep_id)
        if self.on_change is not None:
            self.on_change(touched | handled)

    def reconcile(self, dep_id: str) -> None:
        """One pass over one deployment (several short transactions), under the lock on the
        deployment shared by every control-plane copy."""
        reconcile_locked(self.db, "deployment", dep_id, self._reconcile)

    def _reconcile(self, dep_id: str, *, fixed: bool = False) -> None:
        """The step of one deployment; ``fixed``: the pass read it without autoscaling
        settings (no autoscaling tick, which would read it again to find that out)."""
        if fixed:
            self._scalers.pop(dep_id, None)
        else:
            self._autoscale(dep_id)
        newly: list[str] = []
        with self.db.session() as s:
            dep = lock_row(s, Deployment, dep_id, skip_locked=True)
            if dep is None:
                return
            reps = list(s.scalars(select(Replica).where(Replica.deployment_id == dep.id)
                                  .execution_options(populate_existing=True)))
            deleting = dep.status == "deleting"
            to_stop: list[str] = []
            draining = self._draining_nodes(s, reps)
            if deleting:
                to_stop = [r.id for r in reps if r.status != "stopped"]
            else:
                to_stop = self._plan_scale(s, dep, reps, draining)
            for r in reps:
                if r.id in to_stop and r.status != "stopping":
                    r.stop_requested_at = now()
                    node = draining.get(r.node_id or "")
                    if node is not None and not deleting:
                        set_status(s, r, ReplicaStatus.stopping, reason="NodeDraining",
                                   message=f"replica {r.id[:8]} moves off draining node "
                                           f"{node}: stopping (drain up to "
                                           f"{dep.drain_timeout_s:g} s)")
                    else:
                        set_status(s, r, ReplicaStatus.stopping, reason="Stopping",
                                   message=f"replica {r.id[:8]} stopping (drain up to "
                                           f"{dep.drain_timeout_s:g} s)")
                    newly.append(r.id)
        # Act outside the deciding transaction: first take the stopping replicas out of
        # the route table (no new request reaches them), then tell them to stop.
        if newly and self.on_change is not None:
            self.on_change([dep_id])
        started = [f for f in (self._request_stop(rid) for rid in to_stop) if f is not None]
        if started:
            wait_futures(started, timeout=STOP_WAIT_S)
        if deleting:
            with self.workers.placing(False):
                self._finish_delete(dep_id)
            return
        self._advance(dep_id)
        self._update_status(dep_id)

    def _advance(self, dep_id: str) -> None:
        """Move each live replica of deployment ``dep_id`` one step: the pending ones
        placed and started together (:meth:`_place_pending`), the starting ones, those
        just started included, checked together (:meth:`_check_starting_many`), each
        ready one's health checked, each failed one restarted when its back-off is over,
        and the usage of each that has a record due metered."""
        with self.db.session() as s:
            reps = list(s.scalars(
                select(Replica).where(Replica.deployment_id == dep_id,
                                      Replica.status.in_(LIVE)).order_by(Replica.created_at)
            ))
            # metering due by the row read now; a step only moves the start of the
            # unmetered time later (a placement or restart starts it now), never earlier
            ids = [(r.id, r.status, self._meter_due(r)) for r in reps]
            nodes = {n.id: n for n in rows_in(s, Node, Node.id, (
                r.node_id for r in reps if r.node_id and r.status == ReplicaStatus.ready))}
            known: dict[str, tuple[Backend, dict[str, Any]]] = {}
            for r in reps:
                found = backend_for(self.backends, nodes.get(r.node_id or ""),
                                    lambda n: n.backend)
                if r.status == ReplicaStatus.ready and found is not None:
                    known[r.id] = (found[0], dict(r.handle))
        pending = [rid for rid, status, _due in ids if status == ReplicaStatus.pending]
        starting = [rid for rid, status, _due in ids if status == ReplicaStatus.starting]
        placed = started = Known()
        with self.workers.placing(bool(pending)):
            if pending:
                placed = self._step(dep_id,
                                    lambda: self._place_pending(dep_id, pending)) or placed
        if placed.reps:
            started = self._step(
                dep_id, lambda: self._start_many(placed.ids, known=placed)) or started
        if starting or started.reps:
            self._step(dep_id, lambda: self._check_starting_many(starting + started.ids,
                                                                  known=started))
        for rid, status, due in ids:
            try:
                if status == "ready":
                    self._check_ready(rid, known=known.get(rid))
                elif status == "failed":
                    self._maybe_restart(rid)
                if due:
                    self._meter(rid)
            except StaleStatus as e:
                log.debug("replica %s: %s; next pass", rid, e)
            except Exception:
                log.exception("replica %s: reconcile step failed", rid)

    @staticmethod
    def _step(dep_id: str, step: Callable[[], T]) -> T | None:
        """Run one step over several replicas of deployment ``dep_id``; a race lost
        (:class:`StaleStatus`) or an error is logged and the pass goes on."""
        try:
            return step()
        except StaleStatus as e:
            log.debug("deployment %s: %s; next pass", dep_id, e)
        except Exception:
            log.exception("deployment %s: reconcile step failed", dep_id)
        return None
