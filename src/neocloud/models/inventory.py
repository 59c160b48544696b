"""Nodes: the servers that run work."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from neocloud.models.common import Name, OutModel, ShapeName, WireModel


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
    memory_mib: int = Field(ge=0)


class NodeCreate(WireModel):
    """Register a node (operators only). CPU in millicores, memory in MiB."""

    name: Name
    cpu_milli: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    gpus: list[GpuSpec] = Field(default_factory=list, max_length=8)
    labels: dict[str, str] = Field(default_factory=dict)
    pool: Name | None = None
    backend: str = Field(default="fake", pattern=r"^(local|ray|fake)$")


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
