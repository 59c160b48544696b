"""Nodes: registration, status and the capacity they have left."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, Conflict, NotFound, ValidationFailed
from neocloud.models import GpuOut, NodeCreate, NodeOut, NodeStatus, NodeUpdate
from neocloud.models.nodes_join import NodeJoin
from neocloud.server.backends.discovery import MachineInfo
from neocloud.server.db.tables import Allocation, Node
from neocloud.server.services import events, inventory, placement
from neocloud.server.services.lifecycle import StaleStatus, lock_row
from neocloud.server.services.removal import delete_locked, lock_for_delete
from neocloud.server.services.upsert import insert_unless_taken


def set_node_status(s: Session, node: Node, status: NodeStatus, *, reason: str,
                    message: str, warning: bool = False) -> bool:
    """Move ``node`` to ``status`` (any node status may follow any other), by
    compare-and-set on the status read, with an event naming the new status in the same
    transaction. Setting the status it has does nothing. Returns whether it changed.

    Raises:
        StaleStatus: the node's status in the database is no longer the one read.
    """
    new, old = NodeStatus(status).value, node.status
    if new == old:
        return False
    done = s.execute(update(Node).where(Node.id == node.id, Node.status == old)
                     .values(status=new).execution_options(synchronize_session=False))
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleStatus(f"node {node.name} is no longer {old}")
    s.expire(node, ["status"])
    inventory.node_changed(s, node.id)
    events.record(s, kind="node", name=node.name, object_id=node.id, reason=reason,
                  message=message, warning=warning, status=new)
    return True


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
    gpus: list[dict[str, Any]] = []
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


#: Node label with the Ray node id of a node that joined (Ray's own label name).
RAY_NODE_ID_LABEL = "ray.io/node-id"
#: Node label with the price per hour (USD) an operator gave at join.
PRICE_LABEL = "neocloud.io/price-per-hour-usd"


def join_node(s: Session, *, spec: NodeJoin) -> tuple[Node, bool]:
    """Register or refresh the Ray node ``spec.name``; returns it and whether it is new.

    A node that rejoins keeps its id, allocations, pool and status (``cordoned`` and
    ``draining`` stay); one that was ``not_ready`` is ``ready`` again. The node's row is
    locked first, so joins of one name, and a join and the node's removal, run one after
    the other: of two joins of a new name one registers it and the other rejoins it; a
    join that waited for the removal of its node registers it anew.

    Raises:
        Conflict: a node of another backend has that name.
    """
    node = _locked_by_name(s, spec.name)
    created = False
    if node is None:
        # A join racing another of the same name (the server retried) or the removal of
        # its node: the loser of the insert rejoins the winner's node instead of failing.
        created = insert_unless_taken(
            s, Node, key=["name"], name=spec.name, backend="ray",
            status=NodeStatus.ready.value, cpu_milli=spec.cpu_milli,
            memory_mib=spec.memory_mib)
        node = _locked_by_name(s, spec.name)
        if node is None:
            raise Conflict(f"node {spec.name!r} was removed while it joined; join again",
                           param="name")
    if node.backend != "ray":
        raise Conflict(f"node {spec.name!r} exists with the {node.backend} backend; "
                       "join under another name", param="name")
    gpus: list[dict[str, Any]] = []
    for g in spec.gpus:
        for _ in range(g.count):
            gpus.append({"index": len(gpus), "type": g.type, "memory_mib": g.memory_mib})
    labels = {**spec.labels, RAY_NODE_ID_LABEL: spec.ray_node_id}
    if spec.price_per_hour_usd is not None:
        labels[PRICE_LABEL] = f"{spec.price_per_hour_usd:g}"
    node.address, node.cpu_milli, node.memory_mib = spec.address, spec.cpu_milli, spec.memory_mib
    node.gpus, node.labels = gpus, labels
    if spec.pool is not None:
        node.pool = spec.pool
    node.heartbeat_at = datetime.now(UTC)
    s.flush()
    inventory.node_changed(s, node.id)  # its size may have changed: placement reads it again
    if node.status == NodeStatus.not_ready.value:
        set_node_status(s, node, NodeStatus.ready, reason="NodeReady",
                        message=f"node {spec.name}: not_ready -> ready (rejoined)")
    events.record(s, kind="node", name=spec.name, reason="Joined" if created else "Rejoined",
                  message=f"node {spec.name} joined at {spec.address} (Ray node "
                          f"{spec.ray_node_id[:12]}) with {len(gpus)} GPUs")
    return node, created


def _locked_by_name(s: Session, name: str) -> Node | None:
    """The newest row of node ``name``, locked until the transaction ends (``None`` when
    there is none, or it was removed before the lock was granted)."""
    node_id = s.scalars(select(Node.id).where(Node.name == name)).first()
    return lock_row(s, Node, node_id) if node_id is not None else None


def get_node(s: Session, *, name: str) -> Node:
    node = s.scalars(select(Node).where(Node.name == name)).first()
    if node is None:
        raise NotFound(f"node {name!r} not found", param="name")
    return node


def update_node(s: Session, *, name: str, spec: NodeUpdate) -> Node:
    """Change a node's status (``draining``: no new work; the node-health reconciler
    cordons it once its work has finished or moved) or labels (those a join set stay:
    :func:`_operator_labels`), under the node's row lock.

    Raises:
        NotFound: no such node.
        ValidationFailed: the labels change one a join set.
    """
    node = get_node(s, name=name)
    node = lock_row(s, Node, node.id) or node
    if spec.status is not None and spec.status.value != node.status:
        set_node_status(s, node, spec.status, reason="StatusChanged",
                        message=f"node {name}: {node.status} -> {spec.status.value}")
    if spec.labels is not None:
        node.labels = _operator_labels(node, spec.labels)
        inventory.node_changed(s, node.id)
    return node


#: Labels a join sets from what the server reported; new labels of an operator keep them.
JOIN_LABELS = (RAY_NODE_ID_LABEL, PRICE_LABEL)


def _operator_labels(node: Node, labels: dict[str, str]) -> dict[str, str]:
    """``labels`` as a node's new labels: the labels of :data:`JOIN_LABELS` it has stay
    (the node-health reconciler finds a joined node's loss by its Ray node id); naming one
    with another value, or one the node does not have, is refused.

    Raises:
        ValidationFailed: a label of :data:`JOIN_LABELS` given another value (param
            ``labels``).
    """
    have = dict(node.labels or {})
    for key in JOIN_LABELS:
        if key in labels and labels[key] != have.get(key):
            raise ValidationFailed(f"label {key!r} is set by `neocloud node join` and cannot "
                                   "be changed; join the node again instead", param="labels")
    return {**labels, **{k: have[k] for k in JOIN_LABELS if k in have}}


def delete_node(s: Session, *, name: str) -> None:
    """Remove a node that holds no allocation, under the placement lock (no placement
    can bind work to it meanwhile).

    Of concurrent removals of one node exactly one succeeds (:mod:`.removal`).

    Raises:
        NotFound: no such node, or another call removed it first.
        Conflict: allocations remain on it (drain it first).
    """
    node = get_node(s, name=name)
    placement.lock_placement(s)
    missing = f"node {name!r} not found"
    node = lock_for_delete(s, Node, node, missing=missing)
    busy = s.scalars(select(Allocation).where(Allocation.node_id == node.id)).all()
    if busy:
        raise Conflict(f"node {name!r} still holds {len(busy)} allocation(s); drain it "
                       "(neocloud node drain) and remove it once its work has moved or "
                       "finished", param="name")
    delete_locked(s, node, missing=missing)


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
