"""Deployments (long-running model services) and their replicas."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from neocloud.models.common import Name, OutModel, ProcessText, ShapeName, WireModel

#: A service reference: ``embeddings``, ``chat``, ``package.module:Class`` or ``file.py:Class``.
ServiceRef = str


class DeploymentStatus(StrEnum):
    pending = "pending"
    """Accepted; no replica is ready yet (see ``pending_reason``)."""
    ready = "ready"
    """Every desired replica is ready."""
    degraded = "degraded"
    """Some, not all, desired replicas are ready."""
    scaled_to_zero = "scaled_to_zero"
    failed = "failed"
    deleting = "deleting"


class ReplicaStatus(StrEnum):
    pending = "pending"
    """Waiting for a node (see ``message``)."""
    starting = "starting"
    """Process started; waiting for ``/ready``."""
    ready = "ready"
    failed = "failed"
    """Crashed; restarted after a back-off."""
    stopping = "stopping"
    stopped = "stopped"

    @property
    def live(self) -> bool:
        return self in (ReplicaStatus.starting, ReplicaStatus.ready)


class DeploymentCreate(WireModel):
    """Create a deployment.

    ``service`` is ``embeddings``, ``chat``, ``package.module:Class`` or ``file.py:Class``;
    ``model`` optionally picks the model of a built-in service (``hf:<org>/<name>`` or a
    local folder). The deployment answers to its ``name`` in the OpenAI ``model`` field.
    """

    name: Name
    service: str = Field(min_length=1, max_length=512)
    model: str | None = Field(default=None, max_length=512)
    shape: ShapeName = "cpu.small"
    replicas: int = Field(default=1, ge=0, le=64)
    env: dict[str, ProcessText] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    """Environment variable -> name of a secret of the workspace (injected at start)."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """Larger is more important; work of higher priority may preempt lower-priority,
    preemptible work when no node has room."""
    preemptible: bool = False
    """Whether higher-priority work may stop these replicas to take their place."""


class DeploymentUpdate(WireModel):
    """Change a deployment; fields left out keep their value. A change of ``service``,
    ``model``, ``shape`` or ``env`` rolls the replicas to a new generation."""

    service: str | None = Field(default=None, min_length=1, max_length=512)
    model: str | None = Field(default=None, max_length=512)
    shape: ShapeName | None = None
    replicas: int | None = Field(default=None, ge=0, le=64)
    env: dict[str, ProcessText] | None = None
    secrets: dict[str, str] | None = None
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    preemptible: bool | None = None


class ReplicaOut(OutModel):
    id: str
    status: ReplicaStatus
    generation: int
    node: str | None
    gpu_indices: list[int]
    port: int | None
    pid: int | None
    restarts: int
    message: str | None
    created_at: datetime
    ready_at: datetime | None


class DeploymentOut(OutModel):
    id: str
    name: str
    service: str
    model: str | None
    shape: str
    replicas: int
    ready_replicas: int
    status: DeploymentStatus
    pending_reason: str | None
    generation: int
    env: dict[str, str]
    secrets: dict[str, str] = Field(default_factory=dict)
    """Environment variable -> secret name (never the value)."""
    priority: int = 0
    preemptible: bool = False
    endpoint: str
    """Gateway path of the deployment's own routes, e.g. ``/endpoints/minilm/``."""
    created_at: datetime
    updated_at: datetime
    replica_list: list[ReplicaOut] = Field(default_factory=list)
