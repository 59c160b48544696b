"""Workspace quotas and the queue of waiting work."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from neocloud.models.common import Amount, OutModel, WireModel


class QuotaSet(WireModel):
    """Limits of a workspace (operators set them); ``None`` or a missing key = no limit.

    ``gpus`` maps a GPU type (``H100``) to whole GPUs; the key ``"*"`` limits each type
    not listed. ``gpus_total`` limits all GPU types together. CPU in millicores, memory in
    MiB.
    """

    gpus: dict[str, Amount] = Field(default_factory=dict)
    gpus_total: Amount | None = None
    cpu_milli: Amount | None = None
    memory_mib: Amount | None = None


class QuotaOut(OutModel):
    workspace: str
    gpus: dict[str, int]
    gpus_total: int | None
    cpu_milli: int | None
    memory_mib: int | None
    used_gpus: dict[str, float]
    """GPUs held now, per type (fractional shares as fractions)."""
    used_cpu_milli: int
    used_memory_mib: int


class QueueItem(OutModel):
    """One workload waiting for resources, and why."""

    kind: str
    """``replica``, ``job`` or ``pod``."""
    name: str
    id: str
    priority: int
    reason: str | None
    since: datetime
    workspace: str = ""
