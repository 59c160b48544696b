"""Pydantic wire models shared by the server, the SDK and the CLI (no database, no HTTP)."""

from __future__ import annotations

from neocloud.models.common import Page, Role
from neocloud.models.deployments import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentStatus,
    DeploymentUpdate,
    ReplicaOut,
    ReplicaStatus,
)
from neocloud.models.events import EventOut
from neocloud.models.inventory import GpuOut, GpuSpec, NodeCreate, NodeOut, NodeStatus, NodeUpdate
from neocloud.models.quotas import QueueItem, QuotaOut, QuotaSet
from neocloud.models.shapes import ShapeCreate, ShapeOut
from neocloud.models.usage import Bill, BillLine
from neocloud.models.workspaces import (
    TokenCreate,
    TokenCreated,
    TokenOut,
    WhoAmI,
    WorkspaceCreate,
    WorkspaceOut,
)

__all__ = [
    "Bill",
    "BillLine",
    "DeploymentCreate",
    "DeploymentOut",
    "DeploymentStatus",
    "DeploymentUpdate",
    "EventOut",
    "GpuOut",
    "GpuSpec",
    "NodeCreate",
    "NodeOut",
    "NodeStatus",
    "NodeUpdate",
    "Page",
    "QueueItem",
    "QuotaOut",
    "QuotaSet",
    "ReplicaOut",
    "ReplicaStatus",
    "Role",
    "ShapeCreate",
    "ShapeOut",
    "TokenCreate",
    "TokenCreated",
    "TokenOut",
    "WhoAmI",
    "WorkspaceCreate",
    "WorkspaceOut",
]
