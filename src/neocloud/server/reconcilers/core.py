"""The reconciler core: what every reconciler (deployments, jobs, pods) does the same way.

A reconciler reads the desired state of one workload from the database and acts to make
the world match it, in short transactions: decide and write under the row lock, commit,
act on the backend outside any transaction, then write what the backend answered. Each
kind keeps only what is its own (a deployment's replica count and rolling update, a job's
gang and retries, a pod's idle timeout); the steps below are shared.

The API (small, on purpose; the autoscaler, the Ray backend and the console build on it)
--------------------------------------------------------------------------------------
``reconcile_each(db, kind, ids, step)``
    Run ``step(id)`` for each id under the lock ``kind:id`` shared by every control-plane
    copy; one failure is logged and the loop goes on. A step that lost a race
    (:class:`StaleStatus`) is simply tried again at the next pass.
``lock_row(s, Model, id, skip_locked=False)``
    The newest row, locked until the transaction ends (both databases).
``set_status(s, row, Status.x, reason=..., message=...)``
    The one way to change a status: only along the allowed transitions, compare-and-set
    on the status read, and the event that names the new status in the same transaction.
    ``set_statuses(s, rows, Status.x, reason=..., messages=...)`` does the same for
    several rows of one table in one statement per status read (a batch's placements,
    its replicas found ready).
``lock_for_placement(s, Model, id)`` then ``place(s, ...)``
    Admission, placement, preemption and the allocation writes of one workload, in the
    transaction that holds the placement lock and the workload's row lock.
``start_process(db, backend, spec, record=..., grace_s=...)``
    Start (or adopt) a process, then record its handle under the row lock; a workload no
    longer wanted by then has its process stopped at once. ``start_processes`` does the
    same for several, their handles recorded in one transaction.

Smaller helpers every kind uses: :func:`backend_of` (the backend and node of a node id),
:func:`gpu_milli_of` (the share of each GPU an owner's allocation holds, for
:class:`WorkloadSpec`), :func:`meter` (running time of a workload row),
:func:`free_port_on` (a port free on the node that will listen), :func:`node_lost`
(whether a handle's node is gone from its backend), :class:`NodeVerdict` (wait for a
node's verdict before calling an end without exit code a crash) and
:func:`release_ended` (stop an ended process so that its backend frees what it holds,
e.g. Ray's GPU accounting).

Invariants kept (checked by :mod:`neocloud.server.invariants`, ``neocloud admin check``)
-----------------------------------------------------------------------------------------
1. **No allocation without a live owner.** An allocation row has a foreign key to its
   workload (replica, job worker or pod), deleted with it; it is written only by
   :func:`place`, in the transaction that re-reads the owner under its row lock and finds
   it still wanted (a replica ``pending`` of its deployment's current generation, the
   deployment not ``deleting``; a job ``queued``; a pod ``queued`` and desired
   ``running``) and moves it to ``starting`` by compare-and-set; it is removed in the
   transaction that moves the owner to a state that holds nothing.
2. **No running process for a stopped or deleted workload.** A terminal status
   (``stopped``, ``succeeded``, ``failed``) is written only after the backend has stopped
   the process; a row is deleted only in a terminal status; a stop or delete that
   arrives while a start is in flight wins: :func:`start_process` sees it when it records
   the handle and stops the process at once.
3. **Allocated GPUs, CPU and memory of a workspace are within its quota at every
   instant, and those of a node within its capacity.** The quota and the free room are
   read and the allocations written inside one transaction holding the placement lock
   (a PostgreSQL advisory lock shared by every copy; SQLite's single writer lock).
4. **The history is consistent.** Every status change goes through :func:`set_status`
   (or :func:`set_statuses`, the same for several rows of one table): it follows the
   allowed transitions (nothing leaves a terminal status, nothing follows
   ``deleting``), it applies only if the status is still the one read (a stop written
   meanwhile makes the reconciler's step roll back), and it records the event naming
   the new status, so the newest status event and the row always agree.
5. **A stop, delete or scale is never lost.** The services that write them lock the row
   first (:func:`lock_row`) and change status by :func:`set_status`; the reconcilers'
   compare-and-set cannot overwrite them.

Lock order (no deadlock on PostgreSQL): the placement lock first, then row locks;
reconciler steps outside placement take row locks with ``skip_locked`` and never wait.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from neocloud.models.deployments import ReasonCode
from neocloud.server.backends.base import Backend, WorkloadSpec, backend_for, start_or_adopt
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Allocation, Base, Node, Shape
from neocloud.server.metering.records import meter_running
from neocloud.server.scheduler import Binding, ResourceRequest, Unschedulable
from neocloud.server.services import events, placement
from neocloud.server.services.lifecycle import (
    DEFAULT_REASON,
    ENUMS,
    IllegalTransition,
    StaleStatus,
    allowed,
    lock_row,
    set_status,
    subject,
)

__all__ = [
    "IllegalTransition",
    "NodeVerdict",
    "ReconcilerThread",
    "StaleStatus",
    "Waiting",
    "backend_of",
    "backoff_s",
    "free_port",
    "free_port_on",
    "gpu_milli_of",
    "lock_for_placement",
    "lock_row",
    "meter",
    "node_lost",
    "now",
    "place",
    "reconcile_each",
    "reconcile_locked",
    "release_ended",
    "set_status",
    "set_statuses",
    "start_process",
    "start_processes",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Base)


def now() -> datetime:
    return datetime.now(UTC)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_on(backend: Backend, node: Node) -> int:
    """A TCP port free right now on ``node`` (where a workload will listen on it).

    A backend that runs other machines (Ray) is asked for one there
    (``backend.free_port(node_name=, address=)``); otherwise the port is taken from
    ``node.address`` on this machine (any local port when that address is not this
    machine's, e.g. a simulated node).

    Raises:
        OSError: the backend could not reach the node.
    """
    ask = getattr(backend, "free_port", None)
    if ask is not None:
        return int(ask(node_name=node.name, address=node.address))
    try:
        return free_port(node.address)
    except OSError:
        return free_port()


def backoff_s(restarts: int, *, base: float, cap: float) -> float:
    """Delay before restart number ``restarts`` (1-based): ``base × 2^(restarts-1)``, capped."""
    return min(cap, base * (2 ** max(0, restarts - 1)))


# -- the loop -------------------------------------------------------------------------


def reconcile_locked(db: Database, kind: str, obj_id: str, step: Callable[[str], None]) -> None:
    """Run ``step(obj_id)`` while holding the lock named ``kind:obj_id`` across every
    process on the database (see ``Database.try_lock``); another copy busy with the same
    object is skipped, never raced."""
    with db.try_lock(f"{kind}:{obj_id}") as mine:
        if mine:
            step(obj_id)


def reconcile_each(
    db: Database, kind: str, ids: Iterable[str], step: Callable[[str], None]
) -> None:
    """:func:`reconcile_locked` for each id in order; an exception is logged and the loop
    goes on with the next object (a :class:`StaleStatus`, a race lost to a user's call,
    quietly: the next pass decides again from the newer state)."""
    for obj_id in ids:
        try:
            reconcile_locked(db, kind, obj_id, step)
        except StaleStatus as e:
            log.debug("reconciling %s %s: %s; next pass", kind, obj_id, e)
        except Exception:
            log.exception("reconciling %s %s failed", kind, obj_id)


class ReconcilerThread:
    """Runs ``steps`` one after the other every ``interval_s`` seconds in one daemon
    thread named ``name``, or at once when :meth:`wake` is called (after an API write);
    ``on_wake`` callbacks are called by :meth:`wake` too (the deployment reconciler's
    changed-first path: it acts on a change in the middle of a long pass).

    The control plane runs two: ``neocloud-reconciler`` (nodes, deployments, jobs, pods:
    placement never waits for anything else) and ``neocloud-metering`` (the gateway's
    usage flush and the metering loop, on their own period). A step's exception is
    logged and the loop goes on; :attr:`passes` counts the finished passes."""

    def __init__(self, steps: list[Callable[[], object]], interval_s: float, *,
                 name: str = "neocloud-reconciler",
                 on_wake: Sequence[Callable[[], None]] = ()):
        self.steps = steps
        self.interval_s = interval_s
        self.name = name
        self.on_wake = list(on_wake)
        self.passes = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        for callback in self.on_wake:
            callback()
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the step running now (waits up to ``timeout_s`` seconds)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for step in self.steps:
                if self._stop.is_set():
                    return
                try:
                    step()
                except Exception:
                    log.exception("%s: step failed", self.name)
            self.passes += 1
            self._wake.wait(self.interval_s)
            self._wake.clear()


# -- statuses -------------------------------------------------------------------------


def set_statuses(
    s: Session,
    rows: Sequence[Any],
    status: Any,
    *,
    reason: str | None = None,
    messages: Sequence[str] | None = None,
    warning: bool = False,
) -> int:
    """:func:`set_status` for several rows of one table: each row moves to ``status``
    only along the allowed transitions and only if its status is still the one read,
    with the event naming the new status (``messages[i]`` for ``rows[i]``, default
    ``"<old> -> <new>"``), in one ``UPDATE ... WHERE id IN (...) AND status = <read>``
    per status read instead of one per row. Rows already in ``status`` are left alone.
    Returns how many changed.

    Raises:
        ValueError: rows of several tables, or ``messages`` of another length.
        IllegalTransition: a change not in the transitions table (nothing written).
        StaleStatus: a row's status in the database is no longer the one read; the
            transaction must roll back (some rows of the batch may have been updated).
    """
    if messages is not None and len(messages) != len(rows):
        raise ValueError(f"{len(messages)} messages for {len(rows)} rows")
    if not rows:
        return 0
    model = type(rows[0])
    if any(type(r) is not model for r in rows):
        raise ValueError("set_statuses takes rows of one table")
    enum = ENUMS[model]
    new = enum(status)
    by_old: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        old = r.status
        if old == new:
            continue
        if not allowed(enum, old, new):
            raise IllegalTransition(f"{model.__name__} {r.id}: {old} -> {new} is not allowed")
        by_old.setdefault(str(old), []).append(i)
    table: Any = model.__table__  # type: ignore[attr-defined]
    for old, idx in by_old.items():
        ids = [rows[i].id for i in idx]
        if len(set(ids)) != len(ids):
            raise ValueError("set_statuses takes each row once")
        done = s.execute(update(table).where(table.c.id.in_(ids), table.c.status == old)
                         .values(status=new.value))
        if done.rowcount != len(ids):  # type: ignore[attr-defined]
            raise StaleStatus(f"{len(ids) - done.rowcount} of {len(ids)} "  # type: ignore[attr-defined]
                              f"{model.__name__} rows are no longer {old}")
        for i in idx:
            row = rows[i]
            set_committed_value(row, "status", new.value)
            kind, name, workspace_id = subject(s, row)
            events.record(s, workspace_id=workspace_id, kind=kind, name=name,
                          object_id=row.id,
                          reason=reason or DEFAULT_REASON.get(new.value, new.value.title()),
                          message=(messages[i] if messages is not None
                                   else f"{old} -> {new.value}"),
                          warning=warning, status=new.value)
    return sum(len(idx) for idx in by_old.values())


# -- placement ------------------------------------------------------------------------


def lock_for_placement(s: Session, model: type[M], row_id: str) -> M | None:
    """Take the placement lock, then the row lock of the workload about to be placed
    (that order, always), and return the newest row (``None`` if it is gone). The caller
    checks that the row is still wanted, then calls :func:`place` in the same
    transaction."""
    placement.lock_placement(s)
    return lock_row(s, model, row_id)


@dataclass(frozen=True)
class Waiting:
    """No place now: ``reason`` says why (for ``pending_reason`` / ``reason``), ``code``
    is its stable code (the scheduler's); ``preempting`` when lower-priority work was
    asked to stop to make room."""

    reason: str
    preempting: bool = False
    code: ReasonCode = ReasonCode.WAITING_FOR_CAPACITY


def place(
    s: Session,
    *,
    kind: str,
    waiter: Any,
    workspace_id: str,
    requests: Sequence[ResourceRequest],
    priority: int,
    preemptible: bool,
    preempted_by: str,
    owners: Callable[[list[Binding]], list[str]],
) -> list[Binding] | Waiting:
    """Admission, placement, preemption and allocation of one workload (or a gang).

    Call after :func:`lock_for_placement` found ``waiter`` (the row that waits: a replica,
    a job, a pod) still wanted, in the same transaction. On room for every request,
    ``owners(bindings)`` returns the owner id of each binding (a job creates its worker
    rows there) and one allocation per binding is written; returns the bindings. Without
    room, returns :class:`Waiting`: either the scheduler's reason, or, when stopping
    lower-priority preemptible work makes room, those victims are asked to stop
    (reason ``"preempted by <preempted_by>"``) and ``waiter.preempting_at`` is set, so
    that lower-priority work does not take the room being freed.
    """
    result = placement.schedule(s, workspace_id=workspace_id, requests=list(requests),
                                priority=priority)
    if isinstance(result, placement.Preempt):
        placement.preempt(s, victims=result.victims, reason=f"preempted by {preempted_by}")
        if waiter.preempting_at is None:
            waiter.preempting_at = now()
        return Waiting(f"{placement.PREEMPTING}{len(result.victims)} lower-priority "
                       f"workload(s) to make room: {result.reason}", preempting=True,
                       code=ReasonCode.PREEMPTING)
    if isinstance(result, Unschedulable):
        waiter.preempting_at = None
        return Waiting(result.reason, code=result.code)
    waiter.preempting_at = None
    ids = owners(result)
    for b, owner_id in zip(result, ids, strict=True):
        placement.bind(s, binding=b, workspace_id=workspace_id, kind=kind, owner_id=owner_id,
                       priority=priority, preemptible=preemptible)
    return result


# -- processes ------------------------------------------------------------------------


def backend_of(backends: dict[str, Backend], s: Session, node_id: str | None
               ) -> tuple[Backend, Node] | None:
    """The backend that runs the work of node ``node_id``, with the node row; ``None``
    when there is no node id, the node is gone, or its backend is not configured."""
    return backend_for(backends, s.get(Node, node_id) if node_id else None,
                       lambda n: n.backend)


def gpu_milli_of(s: Session, owner_id: str) -> int:
    """Milli-GPU that ``owner_id``'s allocation holds on each of its GPUs (1000: whole
    GPUs; also when it holds none, or no allocation: the :class:`WorkloadSpec` default)."""
    alloc = s.scalars(select(Allocation).where(Allocation.owner_id == owner_id)).first()
    return (alloc.gpu_milli or 1000) if alloc is not None and alloc.gpu_indices else 1000


def meter(s: Session, row: Any, *, period_s: float, final: bool, kind: str, name: str,
          shape_name: str | None) -> None:
    """Record the running time of a workload row (replica, job worker, pod) since its
    last record, every ``period_s`` seconds or at once when ``final`` (it stops); the
    price comes from shape ``shape_name`` (see :func:`~neocloud.server.metering.records.
    meter_running`)."""
    meter_running(s, row, period_s=period_s, final=final, workspace_id=row.workspace_id,
                  kind=kind, object_id=row.id, name=name,
                  shape=s.get(Shape, shape_name) if shape_name else None)


def node_lost(backend: Backend, handle: dict[str, Any]) -> bool:
    """Whether the node that ran ``handle``'s process is gone from the backend (a backend
    that lists its live nodes, ``alive_node_ids()``, e.g. Ray; never on others)."""
    alive = getattr(backend, "alive_node_ids", None)
    node_id = handle.get("node_id")
    if alive is None or not node_id:
        return False
    try:
        return node_id not in alive()
    except Exception:  # the backend cannot tell now: not lost
        log.debug("cannot list the %s backend's nodes", backend.name, exc_info=True)
        return False


NODE_VERDICT_WAIT_S = 30.0
"""Seconds a process that reads as ended without an exit code, on a backend that lists its
live nodes (Ray), waits for its node's verdict before its end is recorded: Ray marks a node
dead about 14 s after its raylet dies (its health-check period and threshold), with room
for a loaded machine."""


class NodeVerdict:
    """Whether to wait for a node's verdict before calling a process's end a crash.

    On a backend that lists its live nodes (Ray), a process whose node died can read as
    ended, with no exit code, some seconds before the backend reports the node dead
    (Ray: about 14 s after its raylet stops answering). Deciding then would record a
    crash (and restart on the dying node) instead of the node's loss; so such an end waits
    up to ``wait_s`` seconds (kept in memory: a control-plane restart only restarts the
    wait). On other backends, and for an end with an exit code, nothing waits.
    """

    def __init__(self, wait_s: float = NODE_VERDICT_WAIT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.wait_s = wait_s
        self.clock = clock
        self._since: dict[str, float] = {}

    def pending(self, backend: Backend, owner_id: str, exit_code: int | None) -> bool:
        """``True`` while the end of ``owner_id``'s process (``exit_code`` ``None``:
        unknown) should wait for its node's verdict."""
        if exit_code is not None or getattr(backend, "alive_node_ids", None) is None:
            self._since.pop(owner_id, None)
            return False
        first = self._since.setdefault(owner_id, self.clock())
        if self.clock() - first < self.wait_s:
            return True
        self._since.pop(owner_id, None)
        return False

    def forget(self, owner_id: str) -> None:
        """The process of ``owner_id`` runs (again), or its end was decided."""
        self._since.pop(owner_id, None)


def release_ended(backend: Backend, handle: dict[str, Any], *, grace_s: float) -> None:
    """Stop the process of ``handle`` that ended (or whose node is gone), so that its
    backend frees what it still holds for it (Ray keeps an ended workload's GPUs in its
    accounting until ``stop``). Idempotent; a backend error is logged, not raised."""
    if not handle:
        return
    try:
        backend.stop(handle, grace_s=grace_s)
    except Exception:
        log.warning("releasing an ended process on the %s backend failed", backend.name,
                    exc_info=True)


def start_process(
    db: Database,
    backend: Backend,
    spec: WorkloadSpec,
    *,
    record: Callable[[Session, dict[str, Any]], bool],
    grace_s: float,
) -> dict[str, Any]:
    """Start ``spec``'s process (or adopt the one already running for its workload),
    then record it: ``record(s, handle)`` writes the handle in a transaction that locks
    the workload's row and returns whether the workload is still wanted. When it is not
    (a stop or delete arrived while the start was in flight), the process is stopped at
    once, ``grace_s`` seconds of grace; the workload's own stop path then finds the
    handle and writes the end. Returns the handle.

    Raises:
        OSError, ValueError: the backend could not start the process.
    """
    wid = spec.workload_id
    handles, errors = start_processes(
        db, [(backend, spec)], grace_s=grace_s,
        record=lambda s, started: {wid} if record(s, started[wid]) else set())
    if wid in errors:
        raise errors[wid]
    return handles[wid]


def start_processes(
    db: Database,
    starts: Sequence[tuple[Backend, WorkloadSpec]],
    *,
    record: Callable[[Session, dict[str, dict[str, Any]]], set[str]],
    grace_s: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, Exception]]:
    """:func:`start_process` for several workloads: each process is started (or adopted)
    in turn, then every handle is recorded in one transaction: ``record(s, handles)``
    (workload id -> handle) writes them under the rows' locks and returns the ids of the
    workloads still wanted; the processes of the others are stopped at once (``grace_s``
    seconds of grace), as are all of them if ``record`` raises. Returns the handles and,
    apart, the start that failed of each workload (``OSError``, ``ValueError``: not
    started, not recorded)."""
    handles: dict[str, dict[str, Any]] = {}
    errors: dict[str, Exception] = {}
    for backend, spec in starts:
        try:
            handles[spec.workload_id] = start_or_adopt(backend, spec)
        except (OSError, ValueError) as e:
            errors[spec.workload_id] = e
    wanted: set[str] = set()
    try:
        if handles:
            with db.session() as s:
                wanted = record(s, handles)
    finally:
        for backend, spec in starts:
            handle = handles.get(spec.workload_id)
            if handle is not None and spec.workload_id not in wanted:
                backend.stop(handle, grace_s=grace_s)
    return handles, errors
