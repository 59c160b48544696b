"""The inventory of nodes placement chooses from: snapshots of every node's free CPU,
memory and GPU shares for the pure scheduler, and the index of them each process keeps
between placements (:class:`Inventory`), read again where the database may have moved.

``services.placement`` chooses and binds under the placement lock; this module only reads
nodes and allocations (it writes nothing).
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from neocloud.server.db.tables import Allocation, Node
from neocloud.server.scheduler import ClusterIndex, GpuSlot, NodeSnapshot, Policy, make_policy


def snapshot(s: Session, *, nodes: Iterable[Node] | None = None) -> list[NodeSnapshot]:
    """Every node with its free CPU, memory and per-GPU free milli-GPU, from allocations.

    Nodes are identified by *name* in the snapshot (the scheduler's reasons name them);
    :func:`placement.schedule` maps its answer back to node ids.
    """
    node_rows = list(nodes) if nodes is not None else list(s.scalars(select(Node)))
    return _snapshots(node_rows, s.scalars(select(Allocation)).all())


@dataclass
class _Used:
    """What the allocations of one node hold: CPU millicores, memory MiB, and milli-GPU
    per GPU device index."""

    cpu_milli: int = 0
    memory_mib: int = 0
    gpu_milli: dict[int, int] = field(default_factory=dict)

    def add_gpus(self, indices: Iterable[int], milli: int) -> None:
        for i in indices:
            self.gpu_milli[i] = self.gpu_milli.get(i, 0) + milli


def _used_by_node(allocs: Iterable[Any]) -> dict[str, _Used]:
    """What ``allocs`` (allocation rows, or rows of their ``node_id``, ``cpu_milli``,
    ``memory_mib``, ``gpu_indices`` and ``gpu_milli`` columns) hold per node id."""
    out: dict[str, _Used] = {}
    for a in allocs:
        used = out.get(a.node_id)
        if used is None:
            used = out[a.node_id] = _Used()
        used.cpu_milli += a.cpu_milli
        used.memory_mib += a.memory_mib
        used.add_gpus(a.gpu_indices, a.gpu_milli)
    return out


def _snapshots(node_rows: Sequence[Any], allocs: Iterable[Any]) -> list[NodeSnapshot]:
    """The snapshot of ``node_rows`` given every allocation held on them."""
    return _snapshots_of(node_rows, _used_by_node(allocs))


def _snapshots_of(node_rows: Sequence[Any], used: dict[str, _Used]) -> list[NodeSnapshot]:
    """The snapshot of ``node_rows`` (node rows, or rows of the columns of
    :data:`_NODE_COLUMNS`) given what is held on each (node id -> :class:`_Used`)."""
    snaps = []
    nothing = _Used()
    for n in node_rows:
        mine = used.get(n.id, nothing)
        snaps.append(
            NodeSnapshot(
                id=n.name,  # names, so the scheduler's reasons read well
                cpu_milli_total=n.cpu_milli,
                cpu_milli_free=n.cpu_milli - mine.cpu_milli,
                memory_mib_total=n.memory_mib,
                memory_mib_free=n.memory_mib - mine.memory_mib,
                gpus=[
                    GpuSlot(index=g["index"], type=g["type"], memory_mib=g["memory_mib"],
                            free_milli=max(0, 1000 - mine.gpu_milli.get(g["index"], 0)))
                    for g in n.gpus
                ],
                labels=dict(n.labels or {}),
                pool=n.pool,
                status=n.status,
            )
        )
    return snaps


_NODE_COLUMNS = (Node.id, Node.name, Node.cpu_milli, Node.memory_mib, Node.gpus, Node.labels,
                 Node.pool, Node.status)
"""What a snapshot needs of a node (the rebuild reads these, not whole rows)."""


def _read_inventory(s: Session) -> tuple[list[Any], dict[str, _Used]]:
    """Every node (its :data:`_NODE_COLUMNS`) and what is held on each, in three
    statements whose size does not grow with the CPU-only allocations: the CPU and
    memory held are summed per node by the database, and only the allocations that hold
    GPU shares are read, their node, GPU indices and share."""
    nodes = list(s.execute(select(*_NODE_COLUMNS)))
    used: dict[str, _Used] = {}
    for node_id, cpu, mem in s.execute(
            select(Allocation.node_id, func.sum(Allocation.cpu_milli),
                   func.sum(Allocation.memory_mib)).group_by(Allocation.node_id)):
        used[node_id] = _Used(cpu_milli=int(cpu or 0), memory_mib=int(mem or 0))
    for node_id, indices, milli in s.execute(
            select(Allocation.node_id, Allocation.gpu_indices, Allocation.gpu_milli)
            .where(Allocation.gpu_milli > 0)):
        used.setdefault(node_id, _Used()).add_gpus(indices, milli)
    return nodes, used


# -- the inventory kept between placements ---------------------------------------------

REBUILD_S = 60.0
"""Longest time a process places from its kept inventory before reading every node and
allocation again (seconds). Between rebuilds, room freed outside this process (another
control-plane copy, a cascade delete) is not seen yet: placement is then conservative,
never wrong (see :class:`Inventory`), and any "no room" verdict rebuilds first. A
rebuild reads and indexes every node (about 0.5 s at 5,000 nodes on a loaded machine,
under the placement lock): every 10 s it took a tenth of a rollout's placement time."""

FINGERPRINT_S = 1.0
"""Longest time between two looks at the node count and newest node (seconds). Every
placement transaction looked (one statement each, a tenth of a deployment's placement
on a loaded machine); a node added meanwhile is seen at the next look or at once by a
"no room" verdict (which rebuilds), a node removed when a choice names it (its re-read
finds it gone)."""

@dataclass
class Inventory:
    """The scheduler's index of every node, kept in memory between placements (one per
    database engine and policy), so that placing one workload costs a choice on the
    index and two indexed reads instead of reading every node and allocation.

    Safety does not rest on it being current: under the placement lock, the node a choice
    names is read again from the database (its row and its allocations) and the choice
    stands only if it fits there; otherwise that node is brought in line and the choice
    is made again. The inventory can only be behind on room *freed* elsewhere (another
    copy's releases, cascade deletes, a rolled-back placement), which makes it
    conservative: it is rebuilt from the database every :data:`REBUILD_S` seconds, when
    the node count or newest node changes, and before any answer "no room" (so an
    unschedulable verdict and preemption always use the full, current inventory).
    Releases and node changes made in this process mark their node for a re-read at the
    next placement.
    """

    policy: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    index: ClusterIndex | None = None
    chooser: Policy | None = None
    ids: dict[str, str] = field(default_factory=dict)
    """Node name -> node id (the index names nodes by name)."""
    names: dict[str, str] = field(default_factory=dict)
    gpu_types: dict[str, dict[int, str]] = field(default_factory=dict)
    """Node id -> GPU device index -> GPU type (what ``placement.bind`` writes)."""
    built_at: float = 0.0
    fingerprint: tuple[int, datetime | None] | None = None
    checked_at: float = 0.0
    """When the node fingerprint was last compared (``time.monotonic()``)."""
    dirty: set[str] = field(default_factory=set)
    """Ids of nodes to read again before the next choice."""
    rebuilds: int = 0
    version: int = 0
    """Counts the reads from the database (rebuilds and node re-reads): a transaction
    that saw another transaction read into the index trusts none of its own earlier
    re-reads (that read could not see what it had bound and not committed yet)."""

    def rebuild(self, s: Session) -> tuple[dict[str, str], list[NodeSnapshot]]:
        """Read every node and what its allocations hold (:func:`_read_inventory`);
        returns the node names by id and the snapshot."""
        if s.new:
            s.flush()  # allocations bound but not written yet are read with the rest
        rows, used = _read_inventory(s)
        snaps = _snapshots_of(rows, used)
        self.index = ClusterIndex(snaps)
        self.chooser = make_policy(self.policy)
        self.ids = {n.name: n.id for n in rows}
        self.names = {n.id: n.name for n in rows}
        self.gpu_types = {n.id: {g["index"]: g["type"] for g in n.gpus} for n in rows}
        self.fingerprint = _node_fingerprint(s)
        self.built_at = self.checked_at = time.monotonic()
        self.dirty.clear()
        self.rebuilds += 1
        self.version += 1
        return dict(self.names), snaps

    def reread(self, s: Session, node_id: str) -> Node | None:
        """Bring node ``node_id`` in line with the database (a node gone is made
        unschedulable until the next rebuild); returns its row, ``None`` when gone."""
        assert self.index is not None
        if s.new:
            s.flush()  # allocations bound but not written yet are read with the node
        node = s.scalars(select(Node).where(Node.id == node_id)
                         .execution_options(populate_existing=True)).first()
        name = self.names.get(node_id)
        if node is None:
            if name is not None and name in self.index.pos:
                self.index.set_status(name, "gone")
            return None
        if name is not None and name != node.name:  # renamed: never, but stay exact
            self.index.set_status(name, "gone")
        allocs = s.execute(select(Allocation.node_id, Allocation.cpu_milli,
                                  Allocation.memory_mib, Allocation.gpu_indices,
                                  Allocation.gpu_milli)
                           .where(Allocation.node_id == node_id)).all()
        self.index.reset_node(_snapshots([node], allocs)[0])
        self.version += 1
        self.ids[node.name], self.names[node_id] = node_id, node.name
        self.gpu_types[node_id] = {g["index"]: g["type"] for g in node.gpus}
        return node

    def stale(self, s: Session) -> bool:
        """Whether to rebuild before the next choice: never built, older than
        :data:`REBUILD_S`, or nodes added or removed (the node count or newest node
        changed; looked at most every :data:`FINGERPRINT_S` seconds)."""
        if self.index is None or time.monotonic() - self.built_at > REBUILD_S:
            return True
        if time.monotonic() - self.checked_at < FINGERPRINT_S:
            return False
        self.checked_at = time.monotonic()
        return _node_fingerprint(s) != self.fingerprint


@functools.cache
def deterministic(policy: str) -> bool:
    """Whether ``policy`` breaks ties by node order (its choices depend only on the
    inventory, so one policy object may be kept with the inventory)."""
    return make_policy(policy).tie_break == "first"


def _node_fingerprint(s: Session) -> tuple[int, datetime | None]:
    """Count of nodes and the newest one's creation time: changes when one is added or
    removed."""
    row = s.execute(select(func.count(Node.id), func.max(Node.created_at))).one()
    return int(row[0]), row[1]


_INVENTORIES: weakref.WeakKeyDictionary[Engine, dict[str, Inventory]] = \
    weakref.WeakKeyDictionary()
_INVENTORIES_LOCK = threading.Lock()


def _engine_of(s: Session) -> Engine:
    bind = s.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def inventory(s: Session, policy: str = "default") -> Inventory:
    """The inventory this process keeps for ``s``'s database and ``policy``."""
    with _INVENTORIES_LOCK:
        per = _INVENTORIES.setdefault(_engine_of(s), {})
        inv = per.get(policy)
        if inv is None:
            inv = per[policy] = Inventory(policy=policy)
        return inv


def kept(s: Session) -> list[Inventory]:
    """Every inventory this process keeps for ``s``'s database (one per policy)."""
    with _INVENTORIES_LOCK:
        return list(_INVENTORIES.get(_engine_of(s), {}).values())


def node_changed(s: Session, node_id: str) -> None:
    """Have every kept inventory read node ``node_id`` again before its next choice
    (call after changing a node's status, labels or allocations)."""
    for inv in kept(s):
        with inv.lock:
            inv.dirty.add(node_id)
