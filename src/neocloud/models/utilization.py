"""Fleet utilization (for operators)."""

from __future__ import annotations

from neocloud.models.common import OutModel


class PoolUtilization(OutModel):
    """One node pool and GPU type: capacity and what is allocated now."""

    pool: str
    gpu_type: str
    nodes: int = 0
    gpus: int = 0
    allocated_gpus: float = 0.0
    cpu_milli: int = 0
    allocated_cpu_milli: int = 0
    memory_mib: int = 0
    allocated_memory_mib: int = 0


class Utilization(OutModel):
    pools: list[PoolUtilization]
    gpus: int
    allocated_gpus: float
    gpu_allocation_pct: float
