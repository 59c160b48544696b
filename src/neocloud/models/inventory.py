"""Nodes: the servers that run work."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, field_validator

from neocloud.models.common import INT32_MAX, Name, OutModel, ShapeName, WireModel


class NodeStatus(StrEnum):
    """``ready`` takes new work; ``cordoned`` keeps its work but takes none; ``draining``
    moves its work away; ``not_ready`` lost its heartbeat (its allocations are freed)."""

    ready = "ready"
    not_ready = "not_ready"
    cordoned = "cordoned"
    draining = "draining"


class GpuSpec(WireModel):
    """``count`` GPUs of one ``type`` (e.g. ``H100``), each with ``memory_mib`` MiB."""

    type: ShapeName
    count: int = Field(ge=1, le=64)
    memory_mib: int = Field(ge=0, le=INT32_MAX)


class NodeCreate(WireModel):
    """Register a node (operators only). CPU in millicores, memory in MiB."""

    name: Name
    cpu_milli: int = Field(ge=1, le=INT32_MAX)
    memory_mib: int = Field(ge=1, le=INT32_MAX)
    gpus: list[GpuSpec] = Field(default_factory=list, max_length=8)
    """One GPU type per node (as in a node pool); mixed types are refused."""
    labels: dict[str, str] = Field(default_factory=dict)
    pool: Name | None = None
    backend: str = Field(default="fake", pattern=r"^(local|ray|fake)$")

    @field_validator("gpus")
    @classmethod
    def _one_gpu_type(cls, gpus: list[GpuSpec]) -> list[GpuSpec]:
        if len({g.type for g in gpus}) > 1:
            raise ValueError("a node has GPUs of one type only; register one node per type")
        return gpus


class NodeUpdate(WireModel):
    status: NodeStatus | None = None
    labels: dict[str, str] | None = None


class GpuOut(OutModel):
    index: int
    type: str
    memory_mib: int
    allocated_milli: int = 0


class NodeOut(OutModel):
    id: str
    name: str
    status: NodeStatus
    backend: str
    pool: str | None
    cpu_milli: int
    memory_mib: int
    gpus: list[GpuOut]
    labels: dict[str, str]
    allocated_cpu_milli: int = 0
    allocated_memory_mib: int = 0
    heartbeat_at: datetime | None = None
    created_at: datetime
