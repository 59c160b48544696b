"""Utilization of the fleet: what is allocated out of what the nodes offer."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models.utilization import PoolUtilization, Utilization
from neocloud.server.db.tables import Allocation, Node


def utilization(s: Session) -> Utilization:
    """Totals per (pool, GPU type) over ``ready`` and ``cordoned`` nodes; GPU amounts in
    GPUs (fractional shares as fractions), CPU in millicores, memory in MiB."""
    nodes = {n.id: n for n in s.scalars(select(Node))
             if n.status in ("ready", "cordoned", "draining")}
    rows: dict[tuple[str, str], PoolUtilization] = {}

    def row(pool: str | None, gpu_type: str) -> PoolUtilization:
        key = (pool or "-", gpu_type)
        if key not in rows:
            rows[key] = PoolUtilization(pool=key[0], gpu_type=gpu_type)
        return rows[key]

    for n in nodes.values():
        types = {g["type"] for g in n.gpus} or {"-"}
        r = row(n.pool, sorted(types)[0])
        r.nodes += 1
        r.gpus += len(n.gpus)
        r.cpu_milli += n.cpu_milli
        r.memory_mib += n.memory_mib
    for a in s.scalars(select(Allocation)):
        n = nodes.get(a.node_id)
        if n is None:
            continue
        types = {g["type"] for g in n.gpus} or {"-"}
        r = row(n.pool, sorted(types)[0])
        r.allocated_gpus += a.gpu_milli * len(a.gpu_indices) / 1000
        r.allocated_cpu_milli += a.cpu_milli
        r.allocated_memory_mib += a.memory_mib
    out = sorted(rows.values(), key=lambda r: (r.pool, r.gpu_type))
    gpus = sum(r.gpus for r in out)
    used = sum(r.allocated_gpus for r in out)
    return Utilization(pools=out, gpus=gpus, allocated_gpus=used,
                       gpu_allocation_pct=100.0 * used / gpus if gpus else 0.0)
