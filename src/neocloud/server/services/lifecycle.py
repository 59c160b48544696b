"""How a workload's status changes: the one way, for services and reconcilers alike.

* :func:`lock_row` reads a row so that nobody else changes it until the transaction ends
  (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the database write lock, taken by a
  no-op write before the read, so the read is the newest and stays so).
* :func:`set_status` changes a status: only along :data:`TRANSITIONS`, only from the status
  the caller read (a compare-and-set: ``UPDATE ... WHERE status = <read>``; a row changed
  meanwhile raises :class:`StaleStatus` and the whole transaction rolls back), and it
  records the event that names the new status, so the history and the row agree.

The tables below say which status may follow which, per status enum, and which statuses
hold resources; the invariant checker (``server.invariants``) reads the same tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from neocloud.errors import Conflict
from neocloud.models.deployments import DeploymentStatus as D
from neocloud.models.deployments import ReplicaStatus as R
from neocloud.models.jobs import JobStatus as J
from neocloud.models.jobs import WorkerStatus as W
from neocloud.models.pods import PodStatus as P
from neocloud.server.db.tables import Base, Deployment, Job, JobWorker, Pod, Replica
from neocloud.server.services import events

_SERVING = (D.pending, D.ready, D.degraded, D.scaled_to_zero, D.failed)

#: status -> the statuses it may change to, for each status enum.
TRANSITIONS: Mapping[type[StrEnum], Mapping[StrEnum, frozenset[StrEnum]]] = {
    D: {
        **{s: frozenset((*_SERVING, D.deleting)) for s in _SERVING},
        D.deleting: frozenset(),  # the row is removed once its replicas have stopped
    },
    R: {
        R.pending: frozenset({R.starting, R.stopping}),
        R.starting: frozenset({R.ready, R.failed, R.stopping, R.pending}),
        R.ready: frozenset({R.failed, R.stopping, R.pending}),
        R.failed: frozenset({R.starting, R.pending, R.stopping}),
        R.stopping: frozenset({R.stopped}),
        R.stopped: frozenset(),
    },
    J: {
        J.queued: frozenset({J.starting, J.stopped, J.failed}),
        J.starting: frozenset({J.running, J.stopping, J.retrying, J.failed, J.succeeded}),
        J.running: frozenset({J.stopping, J.retrying, J.failed, J.succeeded}),
        J.retrying: frozenset({J.queued, J.stopped}),
        J.stopping: frozenset({J.queued, J.stopped, J.failed}),
        J.succeeded: frozenset(),
        J.failed: frozenset(),
        J.stopped: frozenset(),
    },
    W: {
        W.starting: frozenset({W.running, W.stopping, W.succeeded, W.failed}),
        W.running: frozenset({W.stopping, W.succeeded, W.failed}),
        W.stopping: frozenset({W.stopped, W.succeeded, W.failed}),
        W.succeeded: frozenset(),
        W.failed: frozenset(),
        W.stopped: frozenset(),
    },
    P: {
        P.queued: frozenset({P.starting, P.stopped, P.failed}),
        P.starting: frozenset({P.running, P.stopping, P.failed}),
        P.running: frozenset({P.stopping, P.failed}),
        P.stopping: frozenset({P.queued, P.stopped, P.failed}),
        P.stopped: frozenset({P.queued}),
        P.failed: frozenset({P.queued}),
    },
}

#: Statuses in which a workload holds an allocation (and only these).
HOLDS: Mapping[str, frozenset[str]] = {
    "replica": frozenset({R.starting, R.ready, R.failed, R.stopping}),
    "job": frozenset({W.starting, W.running, W.stopping}),
    "pod": frozenset({P.starting, P.running, P.stopping}),
}

#: Statuses in which a workload runs or starts, so must hold an allocation.
NEEDS_ALLOCATION: Mapping[str, frozenset[str]] = {
    "replica": frozenset({R.starting, R.ready}),
    "job": frozenset({W.starting, W.running}),
    "pod": frozenset({P.starting, P.running}),
}

#: Statuses in which a workload may have a process (a process in any other is a leak).
MAY_RUN: Mapping[str, frozenset[str]] = {
    "replica": frozenset({R.pending, R.starting, R.ready, R.failed, R.stopping}),
    "job": frozenset({W.starting, W.running, W.stopping}),
    "pod": frozenset({P.starting, P.running, P.stopping}),
}

#: Job statuses in which none of its workers may hold a process or a node.
JOB_IDLE: frozenset[str] = frozenset({J.queued, J.retrying, J.succeeded, J.failed, J.stopped})


def allowed(enum: type[StrEnum], old: str, new: str) -> bool:
    """Whether a row of status enum ``enum`` may go from ``old`` to ``new``."""
    if old == new:
        return True
    table = TRANSITIONS[enum]
    return enum(new) in table.get(enum(old), frozenset())


M = TypeVar("M", bound=Base)


class StaleStatus(Conflict):
    """The row's status changed after the caller read it (another call or reconciler got
    there first); the transaction must roll back and the step be decided again. Should it
    ever reach an API caller, it is a 409 (the services lock the row first, so it does
    not)."""

    default_code = "status_changed"


class IllegalTransition(Exception):
    """A status change that :data:`TRANSITIONS` does not allow (a bug in the caller)."""


def lock_row(s: Session, model: type[M], row_id: str, *, skip_locked: bool = False
             ) -> M | None:
    """The newest row ``row_id`` of ``model``, locked until the transaction ends.

    PostgreSQL: ``SELECT ... FOR UPDATE`` (with ``skip_locked``: ``None`` at once when
    another transaction holds the row, which reconcilers use to pass over busy rows; else
    wait for it). SQLite: a no-op ``UPDATE`` of the row first takes the database write
    lock (waiting up to the busy timeout), then the row is read; no other writer can
    commit until this transaction ends. With ``skip_locked`` on SQLite (a reconciler's
    routine read; one control plane runs them there) the newest row is read without
    taking the write lock, so routine passes do not hold API writes back; every status
    they write is still a compare-and-set (:func:`set_status`). (The SQLite driver runs
    the reads that come before a transaction's first write outside any transaction, so
    the read after the no-op write is the newest.)
    ``None`` when the row does not exist. Objects already in the session are refreshed
    from the row read. ``row_id`` is the value of the table's one primary-key column
    (``id``, or ``workspace_id`` for a workspace's budget).
    """
    table: Any = model.__table__  # type: ignore[attr-defined]
    (key,) = table.primary_key.columns
    if s.get_bind().dialect.name != "postgresql":
        if not skip_locked:
            s.execute(update(table).where(key == row_id).values({key.name: key}))
        q = select(model).where(key == row_id)
    else:
        q = select(model).where(key == row_id).with_for_update(skip_locked=skip_locked)
    return s.scalars(q.execution_options(populate_existing=True)).first()


#: The status enum of each workload table.
ENUMS: Mapping[type, type[StrEnum]] = {
    Deployment: D, Replica: R, Job: J, JobWorker: W, Pod: P,
}

#: Default event reason when the status is entered (callers may name a more precise one).
DEFAULT_REASON: Mapping[str, str] = {
    "pending": "Pending", "starting": "Starting", "ready": "Ready", "degraded": "Degraded",
    "scaled_to_zero": "ScaledToZero", "failed": "Failed", "deleting": "Deleting",
    "stopping": "Stopping", "stopped": "Stopped", "queued": "Queued", "running": "Running",
    "retrying": "Retrying", "succeeded": "Succeeded",
}


def subject(s: Session, row: Any) -> tuple[str, str, str]:
    """``(event kind, resource name, workspace id)`` of a workload row: replicas speak
    under their deployment, job workers under their job."""
    if isinstance(row, Replica):
        dep = s.get(Deployment, row.deployment_id)
        return "deployment", dep.name if dep else row.deployment_id, row.workspace_id
    if isinstance(row, JobWorker):
        job = s.get(Job, row.job_id)
        return "job", job.name if job else row.job_id, row.workspace_id
    kind = {Deployment: "deployment", Job: "job", Pod: "pod"}[type(row)]
    return kind, row.name, row.workspace_id


def set_status(
    s: Session,
    row: Any,
    status: StrEnum,
    *,
    reason: str | None = None,
    message: str | None = None,
    warning: bool = False,
) -> bool:
    """Move ``row`` (a deployment, replica, job, job worker or pod) to ``status``.

    Writes ``UPDATE <table> SET status = <new> WHERE id = <id> AND status = <read>`` and
    records an event (``reason``, default from :data:`DEFAULT_REASON`; ``message``,
    default ``"<old> -> <new>"``) whose ``status`` column names the new status. Setting
    the status the row already has does nothing. Returns whether the status changed.

    Raises:
        IllegalTransition: the change is not in :data:`TRANSITIONS`.
        StaleStatus: the row's status in the database is no longer the one read.
    """
    enum = ENUMS[type(row)]
    new = enum(status)
    old = row.status
    if old == new:
        return False
    if not allowed(enum, old, new):
        raise IllegalTransition(f"{type(row).__name__} {row.id}: {old} -> {new} is not allowed")
    table: Any = type(row).__table__
    done = s.execute(update(table).where(table.c.id == row.id, table.c.status == old)
                     .values(status=new.value))
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleStatus(f"{type(row).__name__} {row.id} is no longer {old}")
    set_committed_value(row, "status", new.value)
    kind, name, workspace_id = subject(s, row)
    events.record(s, workspace_id=workspace_id, kind=kind, name=name, object_id=row.id,
                  reason=reason or DEFAULT_REASON.get(new.value, new.value.title()),
                  message=message or f"{old} -> {new.value}", warning=warning,
                  status=new.value)
    return True
