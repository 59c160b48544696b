"""Settled deployments: found for the whole fleet in a few queries, so that a pass gives
them only their health checks, and kept between passes, so that a pass on a settled
fleet reads the replicas of what changed, not every live replica.

Kept settled (:class:`Kept`): a deployment found settled is kept so by the next passes,
its replicas not read again, while all of these hold (each checked by every pass):

1. its key (``changes.key_of``: ``updated_at``, ``replicas``, ``generation``, ``status``,
   ``revision``) is the one read before its replicas were, and it is still ``ready``
   with no pending reason and no autoscaling. This rests on an invariant: **every write
   to a deployment row changes its key or sets its pending reason** (a request sets
   ``updated_at`` and raises ``revision``, the reconciler's status writes set
   ``updated_at``, a crash sets the pending reason; ``changes`` rests on the same);
2. none of its replicas is ``pending``, ``starting``, ``failed`` or ``stopping`` (one
   query on the indexed status, a few rows on a settled fleet): a replica preempted,
   moved off a lost node, crashed (seen by another copy), restarted or added is seen
   at once, whether or not its deployment's row was written;
3. every node its replicas run on is still ``ready`` (lost, cordoned, draining);
4. none of its replicas is due for metering (the earliest due time is kept);
5. this process's own health checks found every process running (a crash drops it);
6. it was read at most :data:`SETTLED_KEEP_S` (times 0.5 to 1.5, so the re-reads spread
   over the passes) ago: the resync, for what no check above sees (a replica that left
   ``ready`` and came back to it between two passes, written by another copy; an
   operator's direct writes).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models.deployments import DeploymentStatus, ReplicaStatus
from neocloud.models.inventory import NodeStatus
from neocloud.server.backends.base import Backend
from neocloud.server.db.batches import id_batches
from neocloud.server.db.tables import Node, Replica
from neocloud.server.reconcilers.core import now
from neocloud.server.reconcilers.deployments.base import ReconcilerBase
from neocloud.server.reconcilers.deployments.changes import KEY_COLUMNS, key_of

SETTLED_KEEP_S = 30.0
"""Seconds (on average; each deployment 0.5 to 1.5 times this) a deployment found settled
is kept settled without its replicas read again (see the module: the resync of writes
no deployment row shows)."""

NOT_SETTLED = (ReplicaStatus.pending.value, ReplicaStatus.starting.value,
               ReplicaStatus.failed.value, ReplicaStatus.stopping.value)
"""Replica statuses of which one makes its deployment unsettled (besides ``stopped``, the
only other is ``ready``)."""

Checks = list[tuple[str, tuple[Backend, dict[str, Any]]]]
"""The health checks of a settled deployment: per replica, its id, backend and handle."""


@dataclass(frozen=True)
class Kept:
    """A deployment found settled, as read (see the module for when it stays so)."""

    key: Any
    """Its ``changes.key_of`` key, read before its replicas."""
    checks: Checks
    nodes: frozenset[str]
    """The nodes its replicas run on."""
    due_at: datetime
    """When the first of its replicas is due for metering (UTC)."""
    until: float
    """``time.monotonic()`` after which its replicas are read again."""


class Settled(ReconcilerBase):
    """Finds the deployments that need nothing but health checks."""

    @functools.cached_property
    def _kept(self) -> dict[str, Kept]:
        """Deployment id -> what was read when it was found settled (see the module)."""
        return {}

    def _unsettle(self, dep_id: str) -> None:
        """Forget that ``dep_id`` was settled: the next pass reads its replicas."""
        self._kept.pop(dep_id, None)

    def _settled(self, s: Session, rows: Sequence[Any] | None = None) -> dict[str, Checks]:
        """Deployments that need nothing this pass but their replicas' health checks, with
        each replica's backend and handle.

        Settled: status ``ready``, no autoscaling, no pending reason; exactly
        ``replicas`` live replicas, all ``ready``, of the current generation, with a
        handle, on ``ready`` nodes whose backend is here, none stopping and none due for
        metering. For such a deployment the full step (:meth:`_reconcile`) would create,
        stop, place and meter nothing and keep its status; it would only run
        :meth:`_check_ready` on each replica, which is what the pass does, without the
        per-deployment transactions. The health checks only read; whatever they find is
        written under the replica's row lock as in the full step.

        ``rows``: every deployment's ``changes.KEY_COLUMNS``, read by the pass right
        before in this session (``None``: read here, and nothing kept between passes,
        every live replica read). With them, the deployments kept settled (module
        docstring) are not read again: the replicas read are those of the deployments
        that are not (on a settled fleet, a few).
        """
        keep = rows is not None
        if rows is None:
            rows = s.execute(select(*KEY_COLUMNS)).all()
        # columns, not rows: this runs every pass over the whole fleet
        deps = {row.id: row for row in rows
                if row.status == DeploymentStatus.ready.value and row.pending_reason is None
                and row.pending_code is None and not row.autoscaling}
        keys = {dep_id: key_of(row) for dep_id, row in deps.items()}
        kept = self._kept
        if not deps or not keep:
            kept.clear()
            if not deps:
                return {}
        backends = {row.id: self.backends.get(row.backend) for row in s.execute(
            select(Node.id, Node.backend).where(Node.status == NodeStatus.ready.value))}
        t, at = time.monotonic(), now()
        for dep_id, k in list(kept.items()):
            if (keys.get(dep_id) != k.key
                    or k.until <= t or k.due_at <= at
                    or not all(backends.get(n) is not None for n in k.nodes)):
                del kept[dep_id]
        if kept:  # a replica of a kept deployment left ready (condition 2)
            moved = set(s.scalars(select(Replica.deployment_id).where(
                Replica.status.in_(NOT_SETTLED)).distinct()))
            for dep_id in moved & kept.keys():
                del kept[dep_id]
        fresh = [d for d in deps if d not in kept]
        by_dep: dict[str, list[Any]] = {}
        columns = (Replica.id, Replica.deployment_id, Replica.status, Replica.node_id,
                   Replica.generation, Replica.handle, Replica.started_at,
                   Replica.metered_until)
        live = Replica.status != ReplicaStatus.stopped.value
        queries = ([select(*columns).where(live)] if len(fresh) == len(deps) else [
            select(*columns).where(live, Replica.deployment_id.in_(batch))
            for batch in id_batches(fresh)])
        for query in queries:
            for r in s.execute(query):
                by_dep.setdefault(r.deployment_id, []).append(r)
        period = timedelta(seconds=self.settings.usage_period_s)
        due_before = at - period
        out: dict[str, Checks] = {d: k.checks for d, k in kept.items()}
        for dep_id in fresh:
            dep = deps[dep_id]
            reps = by_dep.get(dep_id, [])
            if len(reps) != dep.replicas:
                continue
            checks: Checks = []
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
                if keep:
                    kept[dep_id] = Kept(
                        key=keys[dep_id], checks=checks,
                        nodes=frozenset(r.node_id for r in reps),
                        due_at=min((r.metered_until or r.started_at) + period for r in reps)
                        if reps else at + period,
                        until=t + SETTLED_KEEP_S * (0.5 + random.random()))
        return out
