"""Nodes: registration, status and the capacity they have left."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, Conflict, NotFound
from neocloud.models import GpuOut, NodeCreate, NodeOut, NodeStatus, NodeUpdate
from neocloud.server.backends.discovery import MachineInfo
from neocloud.server.db.tables import Allocation, Node
from neocloud.server.services import events


def register_local(s: Session, *, machine: MachineInfo, backend: str) -> Node:
    """Insert or refresh the node of this machine (same name keeps the same id)."""
    node = s.scalars(select(Node).where(Node.name == machine.name)).first()
    now = datetime.now(UTC)
    if node is None:
        node = Node(name=machine.name, backend=backend, status=NodeStatus.ready.value)
        s.add(node)
        events.record(s, kind="node", name=machine.name, reason="Registered",
                      message=f"node {machine.name} registered ({backend} backend)")
    node.backend = backend
    node.cpu_milli = machine.cpu_milli
    node.memory_mib = machine.memory_mib
    node.gpus = machine.gpus
    node.address = "127.0.0.1"
    node.heartbeat_at = now
    if node.status == NodeStatus.not_ready.value:
        node.status = NodeStatus.ready.value
    s.flush()
    return node


def create_node(s: Session, *, spec: NodeCreate) -> Node:
    """Register a node by hand (simulated ``fake`` nodes, or a server another backend runs)."""
    if s.scalars(select(Node).where(Node.name == spec.name)).first():
        raise AlreadyExists(f"node {spec.name!r} already exists", param="name")
    gpus = []
    for g in spec.gpus:
        for _ in range(g.count):
            gpus.append({"index": len(gpus), "type": g.type, "memory_mib": g.memory_mib})
    node = Node(
        name=spec.name, backend=spec.backend, pool=spec.pool, cpu_milli=spec.cpu_milli,
        memory_mib=spec.memory_mib, gpus=gpus, labels=spec.labels,
        status=NodeStatus.ready.value, heartbeat_at=datetime.now(UTC),
    )
    s.add(node)
    s.flush()
    events.record(s, kind="node", name=spec.name, reason="Registered",
                  message=f"node {spec.name} registered with {len(gpus)} GPUs")
    return node


def get_node(s: Session, *, name: str) -> Node:
    node = s.scalars(select(Node).where(Node.name == name)).first()
    if node is None:
        raise NotFound(f"node {name!r} not found", param="name")
    return node


def update_node(s: Session, *, name: str, spec: NodeUpdate) -> Node:
    node = get_node(s, name=name)
    if spec.status is not None and spec.status.value != node.status:
        events.record(s, kind="node", name=name, reason="StatusChanged",
                      message=f"node {name}: {node.status} -> {spec.status.value}")
        node.status = spec.status.value
    if spec.labels is not None:
        node.labels = spec.labels
    return node


def delete_node(s: Session, *, name: str) -> None:
    node = get_node(s, name=name)
    busy = s.scalars(select(Allocation).where(Allocation.node_id == node.id)).first()
    if busy is not None:
        raise Conflict(f"node {name!r} still runs work; cordon it and move its work first")
    s.delete(node)


def list_nodes(s: Session) -> list[Node]:
    return list(s.scalars(select(Node).order_by(Node.name)))


def node_out(s: Session, node: Node) -> NodeOut:
    """The node with what is allocated on it now."""
    rows = s.scalars(select(Allocation).where(Allocation.node_id == node.id)).all()
    per_gpu: dict[int, int] = {}
    for r in rows:
        for i in r.gpu_indices:
            per_gpu[i] = per_gpu.get(i, 0) + (r.gpu_milli or 1000)
    return NodeOut(
        id=node.id, name=node.name, status=NodeStatus(node.status), backend=node.backend,
        pool=node.pool, cpu_milli=node.cpu_milli, memory_mib=node.memory_mib,
        gpus=[GpuOut(index=g["index"], type=g["type"], memory_mib=g["memory_mib"],
                     allocated_milli=per_gpu.get(g["index"], 0)) for g in node.gpus],
        labels=node.labels, allocated_cpu_milli=sum(r.cpu_milli for r in rows),
        allocated_memory_mib=sum(r.memory_mib for r in rows),
        heartbeat_at=node.heartbeat_at, created_at=node.created_at,
    )
