"""A server joining the cloud: ``neocloud node join`` registers what it found."""

from __future__ import annotations

from pydantic import Field, field_validator

from neocloud.models.common import INT32_MAX, Name, OutModel, WireModel
from neocloud.models.inventory import GpuSpec


class NodeJoin(WireModel):
    """A Ray node that joins (operators only). CPU in millicores, memory in MiB.

    Joining again under the same name (the server restarted, so its Ray node has a new id)
    refreshes the node; a node that had lost its heartbeat is ready again. A name taken by
    a node of another backend is a conflict.
    """

    name: Name
    address: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:-]+$")
    """Address the control plane and the other nodes reach this server at."""
    ray_node_id: str = Field(pattern=r"^[0-9a-f]{16,64}$")
    """The Ray node id (hex) of this server in the Ray cluster."""
    cpu_milli: int = Field(ge=1, le=INT32_MAX)
    memory_mib: int = Field(ge=1, le=INT32_MAX)
    gpus: list[GpuSpec] = Field(default_factory=list, max_length=8)
    labels: dict[str, str] = Field(default_factory=dict)
    pool: Name | None = None
    price_per_hour_usd: float | None = Field(default=None, ge=0, le=1e6)
    """What the operator charges for the whole server per hour (USD); kept as the label
    ``neocloud.io/price-per-hour-usd``."""

    @field_validator("gpus")
    @classmethod
    def _one_gpu_type(cls, gpus: list[GpuSpec]) -> list[GpuSpec]:
        if len({g.type for g in gpus}) > 1:
            raise ValueError("a node has GPUs of one type only; register one node per type")
        return gpus


class SharedFolderCheck(OutModel):
    """What a joining server reads back to prove it shares the control plane's volumes
    folder: the file ``path`` must hold ``token`` there too. ``path`` is ``None`` when the
    cloud keeps no volume files in a folder (nothing to share)."""

    path: str | None
    token: str | None
