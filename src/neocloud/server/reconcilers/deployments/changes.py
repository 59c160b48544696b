"""Changed deployments first: what an API write asks of a deployment's replicas is acted
on before, or in the middle of, the pass over the whole fleet.

A full pass (``reconciler.run_once``) reads the key columns of every deployment, the
replicas of those not kept settled (``settled``), and checks the process of every
replica of a settled deployment; on a large settled fleet that takes seconds, and a
deployment created meanwhile would wait for it. So the reconciler keeps,
per deployment, the *observed* key read at the start of the last pass or look
(:data:`Key`), and when woken (:meth:`Changes.wake`, called with the reconciler thread's
wake after an API write) the pass looks, between its priority groups, every
``LOOK_EVERY`` deployments inside a group (``reconciler.py``) and between the
health checks of settled deployments (at most every :data:`CHANGED_EVERY_S`), for the
deployments whose *asked-for* part of the key (:func:`asked_of`: ``replicas``,
``generation``, deleting or not) differs from the observed one, or that it has never
seen, and runs their full step there, before the rest of the pass. Those the pass is
about to run anyway (the priority groups still to come) are left to it: in a burst,
where every deployment is new, the pass's own order and workers place them. Between
full passes a wake runs a look alone (``reconciler.run_step``: a full pass starts when
none has for the reconcile interval).

A look compares only what a write asks of the replicas, not the whole key: the
reconciler's own writes (a status ``pending`` -> ``starting`` -> ``ready``, with its
``updated_at``) are not changes to act on (with the whole key compared, every deployment
a pass had just moved read as changed at its next look and ran a second full step there,
outside the pass's order; only the autoscaler's own change of ``replicas`` still reads
so). Nor is a spec change that starts no rollout and asks for no other number of
replicas (it raises ``revision`` alone: a drain or cold-start timeout, a priority,
preemptible, the surge limits, the autoscaling bounds): for a deployment that is settled
the full step would do what the pass does, its health checks, and one that is not
settled is run by every pass anyway, so a look leaves it to the next pass (which reads
the deployment's replicas again, its key having changed). Before, each such change ran
a full step in the next look, and those that piled up while one long look ran (the
fleet benchmark: 1,496 deployments whose drain timeout the steady writer had changed
during the burst's last look, 20.7 s of full steps) all ran in the look after it, one
batch with no look inside it, ahead of a deployment created meanwhile (23 s to ready,
the SLO is 5 s). The whole key still tells the pass which routes to rebuild
(``_observe``: a status another control-plane copy wrote changes the routes this copy
serves).

Invariant: **every change is acted on within one pass of its commit**, and a change of
the replicas asked for is acted on first, by the next look. A write commits either
before the read of a pass's start (the full pass acts on it) or after it: then the next
full pass acts on it (the full pass stays the resync, this path is only an
accelerator); and if it changes the replicas asked for, its asked-for key differs from
the one observed (a create is a new id; a scale raises ``replicas``, a rollout
``generation``; a wake from zero raises ``replicas``; a delete sets ``deleting``), so
the next look of the changed-first path acts on it first.
A change the look leaves (a higher priority waits, or the deployment's lock is held
elsewhere) is acted on by that next pass: the same wake woke the reconciler thread,
which starts it at once.

A look reads only the deployments that can matter to it (:meth:`Changes._look_rows`):
those whose ``updated_at`` is at most :data:`LOOK_MARGIN_S` older than the previous
look's (or full pass's) read, and those not settled (their priority decides what may run
early), not the key columns of the whole fleet at each look. This rests on an invariant
(tested in ``tests/server/test_reconciler_threads.py``): **every request that changes
what a deployment asks for sets its ``updated_at`` to its own time** (a create, an
update or scale, a priority, a wake from zero, a delete; the autoscaler's scale too). A
write whose transaction took longer than the margin between setting ``updated_at`` and
committing, or whose clock (another control-plane copy's) is behind by more than the
margin, is left to the next full pass, which reads every deployment (the resync).

Priorities are kept: a changed deployment is run here only if no unchanged deployment of
higher priority is waiting (status not ``ready``/``scaled_to_zero``, or a pending
reason); otherwise it is left to the full pass, which runs the priorities in order.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from neocloud.models.deployments import DeploymentStatus
from neocloud.server.db.tables import Deployment
from neocloud.server.reconcilers.core import now, reconcile_each
from neocloud.server.reconcilers.deployments.base import ReconcilerBase

CHANGED_EVERY_S = 0.25
"""Shortest time (seconds) between two looks for changed deployments inside one pass (each
look reads a few columns of the deployments written since the last read and of those
not settled)."""

LOOK_MARGIN_S = 5.0
"""Seconds before the previous read that a look still reads back by ``updated_at`` (a
request's transaction sets it, then commits: a write that commits later than this after
setting it is acted on by the next full pass instead)."""

Key = tuple[datetime | None, int, int, str, int]
"""What the reconciler observed of a deployment: ``(updated_at, replicas, generation,
status, revision)``."""

Asked = tuple[int, int, bool]
"""The part of a :data:`Key` that asks for replicas: ``(replicas, generation, deleting)``
(the reconciler's own status writes leave it as it is, and so does a spec change that
raises ``revision`` alone: see the module)."""

SETTLED_STATUSES = (DeploymentStatus.ready.value, DeploymentStatus.scaled_to_zero.value)
"""Deployment statuses that wait for nothing (with no pending reason)."""


def key_of(row: Any) -> Key:
    """The observed key of a row with the columns of :data:`KEY_COLUMNS`."""
    return (row.updated_at, int(row.replicas), int(row.generation), str(row.status),
            int(row.revision))


def asked_of(key: Key) -> Asked:
    """What a request asked of the replicas, of an observed key (see :data:`Asked`)."""
    _updated_at, replicas, generation, status, _revision = key
    return (replicas, generation, status == DeploymentStatus.deleting.value)


KEY_COLUMNS = (Deployment.id, Deployment.updated_at, Deployment.replicas,
               Deployment.generation, Deployment.status, Deployment.revision,
               Deployment.priority, Deployment.pending_reason, Deployment.pending_code,
               Deployment.autoscaling, Deployment.created_at)
"""The columns one look reads per deployment."""


class Changes(ReconcilerBase):
    """The changed-first path of the deployment reconciler (see the module)."""

    @functools.cached_property
    def _changes(self) -> threading.Event:
        """Set by :meth:`wake`: something may have changed since the last look."""
        return threading.Event()

    @functools.cached_property
    def _observed(self) -> dict[str, Key]:
        """Deployment id -> key observed at the last look (empty before the first pass)."""
        return {}

    @functools.cached_property
    def changed_first_runs(self) -> list[list[str]]:
        """The deployments each look ran, in order (the newest last, the last 100 looks
        kept): what tests and the benchmark read."""
        return []

    _full_passes = 0
    _last_look = float("-inf")
    _read_at: datetime | None = None
    """When the last full pass or look read the deployments (UTC)."""
    left_to_pass = False
    """Whether the last look left a changed deployment to the full pass (a higher
    priority waits): the thread's step then starts that pass at once
    (``reconciler.run_step``)."""

    def wake(self) -> None:
        """An API write committed: the next look (at once if the thread sleeps, else at
        the pass's next check point) runs what changed first."""
        self._changes.set()

    def _observe(self, rows: Sequence[Any], read_at: datetime | None = None) -> set[str]:
        """Record the keys read at the start of a full pass (every deployment, read at
        ``read_at``, UTC, default now); returns the ids whose key differs from the one
        observed before, new and gone ones included."""
        read_at = read_at or now()
        self._read_at = read_at
        keys = {row.id: key_of(row) for row in rows}
        changed = {i for i, k in keys.items() if self._observed.get(i) != k}
        changed |= self._observed.keys() - keys.keys()
        self._observed.clear()
        self._observed.update(keys)
        self._full_passes += 1
        return changed

    def _asked(self, dep_id: str) -> Asked | None:
        """The asked-for part of the key observed for ``dep_id`` (``None``: never seen)."""
        key = self._observed.get(dep_id)
        return None if key is None else asked_of(key)

    def _look_rows(self) -> list[Any]:
        """The key columns a look needs, by priority then age: the deployments written
        since :data:`LOOK_MARGIN_S` before the previous read (:attr:`_read_at`), and every
        one not settled (status not ``ready``/``scaled_to_zero``, or a pending reason);
        on a settled fleet a few rows, not the whole fleet."""
        read_at = now()
        query = select(*KEY_COLUMNS).order_by(Deployment.priority.desc(),
                                              Deployment.created_at)
        if self._read_at is not None:
            query = query.where(or_(
                Deployment.updated_at >= self._read_at - timedelta(seconds=LOOK_MARGIN_S),
                Deployment.status.notin_(SETTLED_STATUSES),
                Deployment.pending_reason.is_not(None)))
        with self.db.session() as s:
            rows = s.execute(query).all()
        self._read_at = read_at
        return list(rows)

    def _changed_first(self, *, skip: set[str], coming: Collection[str] = (),
                       throttled: bool = True) -> set[str]:
        """When woken since the last look, and (``throttled``, inside a pass) the last
        look is :data:`CHANGED_EVERY_S` old: run the full step of every changed
        deployment, by priority then age (on the pass's workers, placements in that
        order), and return their ids (those also added to ``skip``, which the caller then
        leaves out of the rest of its pass). Those in ``coming`` (the pass runs them next
        anyway) are left to the pass. Nothing before the first full pass (every
        deployment would read as new)."""
        if not self._changes.is_set() or not self._full_passes:
            return set()
        if throttled and time.monotonic() - self._last_look < CHANGED_EVERY_S:
            return set()
        self._changes.clear()
        self._last_look = time.monotonic()
        self.left_to_pass = False
        rows = self._look_rows()
        changed = [row for row in rows if row.id not in coming
                   and self._asked(row.id) != asked_of(key_of(row))]
        if not changed:
            return set()
        ids = {row.id for row in changed}
        waiting = [int(row.priority) for row in rows if row.id not in ids and (
            row.status not in SETTLED_STATUSES or row.pending_reason is not None)]
        floor = max(waiting, default=None)
        run = [row for row in changed if floor is None or int(row.priority) >= floor]
        self.left_to_pass = len(run) < len(changed)
        if not run:
            return set()
        fixed = {row.id for row in run if not row.autoscaling}
        by_priority: dict[int, list[str]] = {}
        for row in run:
            self._observed[row.id] = key_of(row)
            by_priority.setdefault(int(row.priority), []).append(row.id)
        for group in by_priority.values():
            self.workers.run(group, lambda dep_id: reconcile_each(  # type: ignore[attr-defined]
                self.db, "deployment", [dep_id], functools.partial(
                    self._reconcile, fixed=dep_id in fixed)))  # type: ignore[attr-defined]
        done = {row.id for row in run}
        self.changed_first_runs.append([row.id for row in run])
        del self.changed_first_runs[:-100]
        skip |= done
        if done and self.on_change is not None:
            self.on_change(done)
        return done
