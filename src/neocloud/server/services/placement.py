"""Placement against the database: admission, the choice of a node under the placement
lock, and the allocation rows that bind work to nodes.

The scheduler itself (``server.scheduler``) is pure; ``services.inventory`` reads nodes
and allocations into its snapshot types and keeps them indexed between placements; this
module chooses from that inventory and writes the answer back as :class:`Allocation`
rows. On PostgreSQL one transaction-scoped advisory lock serialises placements across
control-plane copies, so two copies never bind the same free GPU; SQLite serialises
writers on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import delete, select, text, union_all
from sqlalchemy import literal as sa_literal
from sqlalchemy.orm import Session

from neocloud.errors import BudgetExceeded
from neocloud.models.deployments import ReasonCode
from neocloud.server.db.tables import Allocation, Node, Quota, Shape
from neocloud.server.scheduler import (
    Binding,
    NodeSnapshot,
    ResourceRequest,
    RunningWork,
    Unschedulable,
    Usage,
    check_quota,
    narrow_to_quota,
    place,
    place_gang,
    place_on,
    select_victims,
)
from neocloud.server.scheduler import Quota as SchedQuota
from neocloud.server.services import budgets, inventory
from neocloud.server.services.inventory import Inventory

#: Called to preempt one workload: ``handler(session, owner_id, reason)``; registered per
#: allocation kind (``replica``, ``job``, ``pod``) by the reconciler of that kind. The
#: handler writes the workload's new state (e.g. ``stopping``); its reconciler stops it.
PreemptHandler = Callable[[Session, str, str], None]
PREEMPT_HANDLERS: dict[str, PreemptHandler] = {}


#: Start of the pending reason of work that preempted others and waits for them to stop
#: (for people; the state itself is the ``preempting_at`` column of replicas, jobs and
#: pods). While such work waits, work of lower priority is not placed, so that it cannot
#: take the room being freed (the idea of Kubernetes' nominated pods, without naming a node).
PREEMPTING = "preempting "


def preempting_priority(s: Session) -> tuple[int, str] | None:
    """Highest priority among waiting work (replicas, jobs, pods) that preempted others
    and waits for them to stop (``preempting_at`` set), with its name."""
    from neocloud.server.db.tables import Deployment, Job, Pod, Replica

    # one statement (this runs before every placement); waiters are few
    rows = s.execute(union_all(
        select(Deployment.priority, Deployment.name)
        .join(Replica, Replica.deployment_id == Deployment.id)
        .where(Replica.status == "pending", Replica.preempting_at.is_not(None)),
        select(Job.priority, Job.name)
        .where(Job.status == "queued", Job.preempting_at.is_not(None)),
        select(sa_literal(0), Pod.name)
        .where(Pod.status == "queued", Pod.preempting_at.is_not(None)),
    )).all()
    found = [(int(r[0]), str(r[1])) for r in rows if r is not None]
    return max(found) if found else None


#: The owner column of an allocation, per allocation kind.
OWNER_COLUMNS: dict[str, str] = {"replica": "replica_id", "job": "job_worker_id",
                                 "pod": "pod_id"}


@dataclass(frozen=True)
class Preempt:
    """No room now, but stopping ``victims`` (``(kind, owner_id)`` pairs) makes room."""

    victims: tuple[tuple[str, str], ...]
    reason: str

#: Key of the PostgreSQL advisory lock held while placing (an arbitrary constant).
PLACEMENT_LOCK_KEY = 0x6E656F63


def lock_placement(s: Session) -> None:
    """Serialise placement across control-plane copies for the rest of the transaction
    (taken once per transaction: the lock is held until it ends)."""
    held = _held(s)
    if held.locked:
        return
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PLACEMENT_LOCK_KEY})
    held.locked = True


@dataclass
class _Held:
    """What one transaction holding the placement lock already read, so that placing
    several workloads in it (the pending replicas of a deployment) reads each thing once.

    Valid until the transaction ends. While it holds the placement lock no other
    transaction places or preempts, so no other writer takes room on a node read here or
    starts preempting; what others may write meanwhile only frees room or removes
    waiters, which leaves these reads conservative. The budget and the quota are read
    once, at the transaction's first placement of the workspace: as if every placement
    of the transaction had happened at that instant (a spend or quota committed a few
    milliseconds later applies from the next transaction on). The transaction's own
    binds reach the kept inventory at once (:func:`bind`), its releases mark their node
    for a re-read, and its preemptions drop the cached "no one is preempting".
    """

    tx: object
    locked: bool = False
    within_budget: set[str] = field(default_factory=set)
    """Workspaces whose budget was checked in this transaction."""
    quotas: dict[str, SchedQuota | None] = field(default_factory=dict)
    no_preempting: bool = False
    """No waiting work was preempting when this transaction looked."""
    checked: set[str] = field(default_factory=set)
    """Policies whose kept inventory was checked for staleness in this transaction."""
    verified: dict[str, set[str]] = field(default_factory=dict)
    """Per policy, node ids read again in this transaction (their row and allocations)."""
    versions: dict[str, int] = field(default_factory=dict)
    """Per policy, the :attr:`Inventory.version` after this transaction's last read."""
    nodes: dict[str, Node] = field(default_factory=dict)
    """The node rows read in this transaction, kept (the session holds its rows weakly:
    :func:`bind` finds a node's GPU types there without reading it again)."""
    deferred: bool = False
    """Allocations are written at the next flush instead of one by one (:func:`defer_binds`)."""


_HELD_KEY = "neocloud.placement.held"


def _held(s: Session) -> _Held:
    """The record of the transaction ``s`` runs now (a new one for a new transaction)."""
    tx = s.get_transaction()
    if tx is None:
        s.connection()  # begins the transaction the record belongs to
        tx = s.get_transaction()
    held = s.info.get(_HELD_KEY)
    if not isinstance(held, _Held) or held.tx is not tx:
        held = _Held(tx=tx)
        s.info[_HELD_KEY] = held
    return held


def request_for_shape(shape: Shape) -> ResourceRequest:
    """The scheduler request of one workload of ``shape``."""
    return ResourceRequest(
        cpu_milli=shape.cpu_milli,
        memory_mib=shape.memory_mib,
        gpu_count=shape.gpu_count,
        gpu_milli=shape.gpu_milli if not shape.gpu_count else 0,
        gpu_types=(shape.gpu_type,) if shape.gpu_type else (),
    )


VERIFY_TRIES = 3
"""Choices checked against the database before the inventory is rebuilt."""


def _place_one(s: Session, request: ResourceRequest, policy: str
               ) -> Binding | tuple[Unschedulable, dict[str, str], list[NodeSnapshot]]:
    """Place one request on the kept inventory (see :class:`Inventory`); the binding
    names the node by id. Without room, the verdict on a rebuilt inventory, with the node
    names by id and the snapshot read for it (for preemption). Call under the placement
    lock."""
    inv = inventory.inventory(s, policy)
    held = _held(s)
    verified = held.verified.setdefault(policy, set())
    with inv.lock:
        if held.versions.get(policy) != inv.version:
            verified.clear()  # another transaction read into the index meanwhile
        try:
            return _choose(s, inv, held, verified, request, policy)
        finally:
            held.versions[policy] = inv.version


def _reread(s: Session, inv: Inventory, held: _Held, node_id: str) -> None:
    """Have ``inv`` read node ``node_id`` again, its row kept for the transaction."""
    node = inv.reread(s, node_id)
    if node is not None:
        held.nodes[node_id] = node


def _choose(s: Session, inv: Inventory, held: _Held, verified: set[str],
            request: ResourceRequest, policy: str
            ) -> Binding | tuple[Unschedulable, dict[str, str], list[NodeSnapshot]]:
    """:func:`_place_one` under the inventory's lock; ``verified``: the nodes this
    transaction read again and may trust."""
    exact: tuple[dict[str, str], list[NodeSnapshot]] | None = None
    if inv.index is None or time.monotonic() - inv.built_at > inventory.REBUILD_S or (
            policy not in held.checked and inv.stale(s)):
        exact = inv.rebuild(s)
        verified.update(inv.names)  # every node read just now
    held.checked.add(policy)
    for attempt in range(VERIFY_TRIES + 1):
        assert inv.index is not None and inv.chooser is not None
        for node_id in list(inv.dirty):
            _reread(s, inv, held, node_id)
            verified.add(node_id)
        inv.dirty.clear()
        one = place_on(inv.index, request, inv.chooser)
        if isinstance(one, Unschedulable):
            if exact is not None:
                return one, exact[0], exact[1]
            exact = inv.rebuild(s)
            verified.update(inv.names)
            continue
        inv.index.release(one)  # taken for good when bound (bind())
        node_id = inv.ids[one.node_id]
        if exact is None:
            # read again under the lock, once per transaction: what this transaction
            # binds there reaches the index at once (bind())
            if node_id not in verified:
                _reread(s, inv, held, node_id)
                verified.add(node_id)
            if not inv.index.can_take(one, request):
                if attempt + 1 >= VERIFY_TRIES:
                    exact = inv.rebuild(s)
                    verified.update(inv.names)
                continue
        return replace(one, node_id=node_id)
    raise AssertionError("unreachable: the last try runs on a rebuilt inventory")


def quota_of(s: Session, workspace_id: str) -> SchedQuota | None:
    """The scheduler's view of a workspace quota, or ``None`` when it has none."""
    row = s.get(Quota, workspace_id)
    if row is None:
        return None
    return SchedQuota(gpus_by_type={k: int(v) for k, v in (row.gpus or {}).items()},
                      gpus_total=row.gpus_total, cpu_milli=row.cpu_milli,
                      memory_mib=row.memory_mib)


def usage_of(s: Session, workspace_id: str) -> Usage:
    """What the workspace holds now, from its allocations (GPU shares per GPU type)."""
    by_type: dict[str, int] = {}
    cpu = mem = 0
    for a in s.scalars(select(Allocation).where(Allocation.workspace_id == workspace_id)):
        cpu += a.cpu_milli
        mem += a.memory_mib
        if a.gpu_indices:
            t = a.gpu_type or "?"
            by_type[t] = by_type.get(t, 0) + a.gpu_milli * len(a.gpu_indices)
    return Usage(gpu_milli_by_type=by_type, cpu_milli=cpu, memory_mib=mem)


def _running_work(s: Session, names: dict[str, str]) -> list[RunningWork]:
    """Allocations grouped per workload, bound to node *names* (``names``: id -> name)."""
    groups: dict[tuple[str, str], list[Allocation]] = {}
    for a in s.scalars(select(Allocation)):
        groups.setdefault((a.kind, a.owner_id), []).append(a)
    out = []
    for (kind, owner), allocs in groups.items():
        out.append(RunningWork(
            id=f"{kind}:{owner}", priority=allocs[0].priority,
            preemptible=allocs[0].preemptible,
            bindings=tuple(Binding(node_id=names.get(a.node_id, a.node_id),
                                   gpu_indices=tuple(a.gpu_indices),
                                   gpu_milli=(a.gpu_milli or 1000) if a.gpu_indices else 0,
                                   cpu_milli=a.cpu_milli, memory_mib=a.memory_mib)
                           for a in allocs),
        ))
    return out


def schedule(
    s: Session,
    *,
    workspace_id: str,
    requests: Sequence[ResourceRequest],
    priority: int = 0,
    policy: str = "default",
) -> list[Binding] | Unschedulable | Preempt:
    """Admission, then placement, then preemption, for one workload or a gang.

    Takes the placement lock. Order: the workspace budget (a hard stop refuses), the
    workspace quota (a reason naming the limit);
    then a place for every request at once (``place_gang``: all or nothing); failing
    that, the lowest-priority preemptible work whose stopping makes room
    (:class:`Preempt`); else the scheduler's reason.
    """
    lock_placement(s)
    held = _held(s)
    if workspace_id not in held.within_budget:
        try:
            # A hard-stopped budget refuses placement under the same lock as the quota
            # check, so work queued before the spend crossed 100 % is not placed after it.
            budgets.require_within_budget(s, workspace_id=workspace_id)
        except BudgetExceeded as e:
            return Unschedulable(e.message)
        held.within_budget.add(workspace_id)
    reqs = list(requests)
    waiting = None if held.no_preempting else preempting_priority(s)
    held.no_preempting = waiting is None
    if waiting is not None and waiting[0] > priority:
        return Unschedulable(f"waiting: {waiting[1]} (priority {waiting[0]}) is preempting "
                             "work to make room")
    if workspace_id not in held.quotas:
        held.quotas[workspace_id] = quota_of(s, workspace_id)
    quota = held.quotas[workspace_id]
    if quota is not None and reqs:
        used = usage_of(s, workspace_id)
        reason = check_quota(quota, used, reqs[0], count=len(reqs))
        if reason:
            return Unschedulable(reason, code=ReasonCode.QUOTA_EXCEEDED)
        narrowed = narrow_to_quota(quota, used, reqs[0], count=len(reqs))
        if narrowed is not None and narrowed != reqs[0]:
            reqs = [replace(r, gpu_types=narrowed.gpu_types,
                            gpu_types_excluded=narrowed.gpu_types_excluded) for r in reqs]
    result: list[Binding] | Unschedulable
    if len(reqs) == 1 and inventory.deterministic(policy):
        # one request, a deterministic policy: on the inventory kept between placements
        one = _place_one(s, reqs[0], policy)
        if isinstance(one, Binding):
            return [one]
        result, names, nodes = one
    else:
        node_rows = list(s.scalars(select(Node)))
        held.nodes.update((n.id, n) for n in node_rows)  # read under the placement lock
        names = {n.id: n.name for n in node_rows}
        nodes = inventory.snapshot(s, nodes=node_rows)
        if len(reqs) == 1:
            single = place(nodes, reqs[0], policy=policy)
            result = [single] if isinstance(single, Binding) else single
        else:
            result = place_gang(nodes, reqs, policy=policy)
        if not isinstance(result, Unschedulable):
            ids = {n.name: n.id for n in node_rows}
            return [replace(b, node_id=ids[b.node_id]) for b in result]
    running = _running_work(s, names)
    victims = select_victims(nodes, running, reqs, priority, policy=policy)
    if isinstance(victims, list) and victims:
        pairs = tuple((v.split(":", 1)[0], v.split(":", 1)[1]) for v in victims)
        return Preempt(victims=pairs, reason=result.reason)
    return result


def preempt(s: Session, *, victims: Iterable[tuple[str, str]], reason: str) -> int:
    """Ask each victim's reconciler to stop it; returns how many had a handler."""
    _held(s).no_preempting = False  # the caller's waiter now preempts
    n = 0
    for kind, owner in victims:
        handler = PREEMPT_HANDLERS.get(kind)
        if handler is not None:
            handler(s, owner, reason)
            n += 1
    return n


def bind(
    s: Session,
    *,
    binding: Binding,
    workspace_id: str,
    kind: str,
    owner_id: str,
    gpu_type: str | None = None,
    priority: int = 0,
    preemptible: bool = False,
) -> Allocation:
    """Write the allocation of ``binding`` for the workload ``owner_id`` of ``kind``
    (``replica``, ``job`` for a job worker, ``pod``), owned in the schema: the allocation
    is deleted with its owner's row.

    Call it through :func:`neocloud.server.reconcilers.core.place`, which re-checks in the
    same transaction, under the owner's row lock, that the owner is still wanted.
    ``gpu_type`` defaults to the type of the first bound GPU on its node.

    Raises:
        ValueError: ``kind`` is not an allocation kind.
    """
    if kind not in OWNER_COLUMNS:
        raise ValueError(f"unknown allocation kind {kind!r}")
    held = _held(s)
    if gpu_type is None and binding.gpu_indices:
        gpu_type = _gpu_types_of(s, held, binding.node_id).get(binding.gpu_indices[0])
    alloc = Allocation(
        workspace_id=workspace_id, kind=kind, owner_id=owner_id, node_id=binding.node_id,
        gpu_indices=list(binding.gpu_indices),
        gpu_milli=binding.gpu_milli if binding.gpu_indices else 0,
        gpu_type=gpu_type, cpu_milli=binding.cpu_milli, memory_mib=binding.memory_mib,
        priority=priority, preemptible=preemptible,
        **{OWNER_COLUMNS[kind]: owner_id},
    )
    s.add(alloc)
    if not held.deferred:
        s.flush()
    for inv in inventory.kept(s):  # the kept inventories take it at once
        with inv.lock:
            name = inv.names.get(binding.node_id)
            try:
                if inv.index is None or name is None:
                    raise ValueError("node not in this inventory")
                inv.index.apply(replace(binding, node_id=name))
            except ValueError:
                inv.dirty.add(binding.node_id)
    return alloc


def _gpu_types_of(s: Session, held: _Held, node_id: str) -> dict[int, str]:
    """GPU device index -> GPU type of node ``node_id`` as it is now: from its row when
    this transaction read it under the placement lock, else from a kept inventory that has
    nothing to read again about it, else from the database. (A node that joined again
    with another GPU model is marked for a re-read in the inventories; their types of it
    are stale until then.)"""
    node = held.nodes.get(node_id)
    if node is None:
        for inv in inventory.kept(s):
            with inv.lock:
                if node_id in inv.gpu_types and node_id not in inv.dirty:
                    return inv.gpu_types[node_id]
        node = s.get(Node, node_id)
    return {g["index"]: g["type"] for g in (node.gpus if node else [])}


def nodes_read(s: Session, ids: Iterable[str]) -> dict[str, Node]:
    """The node rows among ``ids`` that the placement of ``s``'s transaction read under
    the placement lock (the nodes it chose, read again before binding), by id; the
    others are missing."""
    held = _held(s)
    return {i: held.nodes[i] for i in ids if i in held.nodes}


def defer_binds(s: Session) -> None:
    """Have :func:`bind` add the allocations of the rest of ``s``'s transaction to the
    session without writing each at once: they are written together at the next flush
    (the next query or the commit). For callers whose owner rows are already in the
    database (the replicas of a deployment); the kept inventories take each allocation at
    once either way, and a node read again is flushed first."""
    _held(s).deferred = True


def release(s: Session, *, owner_id: str) -> None:
    """Free whatever ``owner_id`` holds (no-op when it holds nothing); the kept
    inventories read its node again before their next choice."""
    freed = s.execute(delete(Allocation).where(Allocation.owner_id == owner_id)
                      .returning(Allocation.node_id)).scalars().all()
    for node_id in freed:
        inventory.node_changed(s, node_id)
