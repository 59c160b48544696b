"""Placement against the database: an inventory snapshot for the pure scheduler, and the
allocation rows that bind work to nodes.

The scheduler itself (``server.scheduler``) is pure; this module reads nodes and
allocations into its snapshot types and writes its answer back as :class:`Allocation`
rows. On PostgreSQL one transaction-scoped advisory lock serialises placements across
control-plane copies, so two copies never bind the same free GPU; SQLite serialises
writers on its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from neocloud.server.db.tables import Allocation, Node, Shape
from neocloud.server.scheduler import (
    Binding,
    GpuSlot,
    NodeSnapshot,
    ResourceRequest,
    Unschedulable,
    place,
)

#: Key of the PostgreSQL advisory lock held while placing (an arbitrary constant).
PLACEMENT_LOCK_KEY = 0x6E656F63


def lock_placement(s: Session) -> None:
    """Serialise placement across control-plane copies for the rest of the transaction."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PLACEMENT_LOCK_KEY})


def request_for_shape(shape: Shape) -> ResourceRequest:
    """The scheduler request of one workload of ``shape``."""
    return ResourceRequest(
        cpu_milli=shape.cpu_milli,
        memory_mib=shape.memory_mib,
        gpu_count=shape.gpu_count,
        gpu_milli=shape.gpu_milli if not shape.gpu_count else 0,
        gpu_types=(shape.gpu_type,) if shape.gpu_type else (),
    )


def snapshot(s: Session, *, nodes: Iterable[Node] | None = None) -> list[NodeSnapshot]:
    """Every node with its free CPU, memory and per-GPU free milli-GPU, from allocations."""
    node_rows = list(nodes) if nodes is not None else list(s.scalars(select(Node)))
    allocs = s.scalars(select(Allocation)).all()
    by_node: dict[str, list[Allocation]] = {}
    for a in allocs:
        by_node.setdefault(a.node_id, []).append(a)
    snaps = []
    for n in node_rows:
        mine = by_node.get(n.id, [])
        used: dict[int, int] = {}
        for a in mine:
            for i in a.gpu_indices:
                used[i] = used.get(i, 0) + a.gpu_milli
        snaps.append(
            NodeSnapshot(
                id=n.id,
                cpu_milli_total=n.cpu_milli,
                cpu_milli_free=n.cpu_milli - sum(a.cpu_milli for a in mine),
                memory_mib_total=n.memory_mib,
                memory_mib_free=n.memory_mib - sum(a.memory_mib for a in mine),
                gpus=[
                    GpuSlot(index=g["index"], type=g["type"], memory_mib=g["memory_mib"],
                            free_milli=max(0, 1000 - used.get(g["index"], 0)))
                    for g in n.gpus
                ],
                labels=dict(n.labels or {}),
                pool=n.pool,
                status=n.status,
            )
        )
    return snaps


def try_place(
    s: Session, *, request: ResourceRequest, policy: str = "default"
) -> Binding | Unschedulable:
    """Place one request on the current inventory (call after :func:`lock_placement`)."""
    return place(snapshot(s), request, policy=policy)


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
    """Write the allocation of ``binding`` for the workload ``owner_id``."""
    alloc = Allocation(
        workspace_id=workspace_id, kind=kind, owner_id=owner_id, node_id=binding.node_id,
        gpu_indices=list(binding.gpu_indices),
        gpu_milli=binding.gpu_milli if binding.gpu_indices else 0,
        gpu_type=gpu_type, cpu_milli=binding.cpu_milli, memory_mib=binding.memory_mib,
        priority=priority, preemptible=preemptible,
    )
    s.add(alloc)
    s.flush()
    return alloc


def release(s: Session, *, owner_id: str) -> None:
    """Free whatever ``owner_id`` holds (no-op when it holds nothing)."""
    s.execute(delete(Allocation).where(Allocation.owner_id == owner_id))
