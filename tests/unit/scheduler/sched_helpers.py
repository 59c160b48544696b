"""Hand-made inventories for scheduler tests."""

from __future__ import annotations

from neocloud.server.scheduler import GpuSlot, NodeSnapshot


def node(
    node_id: str,
    gpus: int = 8,
    gpu_type: str = "A100",
    *,
    free: list[int] | None = None,
    cpu: int = 64_000,
    cpu_free: int | None = None,
    mem: int = 256 * 1024,
    mem_free: int | None = None,
    labels: dict[str, str] | None = None,
    status: str = "ready",
    pool: str | None = None,
) -> NodeSnapshot:
    free = free if free is not None else [1000] * gpus
    return NodeSnapshot(
        id=node_id,
        cpu_milli_total=cpu,
        cpu_milli_free=cpu if cpu_free is None else cpu_free,
        memory_mib_total=mem,
        memory_mib_free=mem if mem_free is None else mem_free,
        gpus=[GpuSlot(i, gpu_type if gpus else "", 80 * 1024, f) for i, f in enumerate(free)],
        labels=dict(labels or {}),
        pool=pool,
        status=status,
    )
