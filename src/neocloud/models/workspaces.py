"""Workspaces (tenants) and API tokens."""

from __future__ import annotations

from datetime import datetime

from neocloud.models.common import Name, OutModel, Role, WireModel


class WorkspaceCreate(WireModel):
    """Create a workspace (operators only)."""

    name: Name


class WorkspaceOut(OutModel):
    id: str
    name: str
    operator: bool
    created_at: datetime


class TokenCreate(WireModel):
    """Create an API token in the caller's workspace (admins only)."""

    name: Name
    role: Role = Role.member


class TokenOut(OutModel):
    id: str
    name: str
    role: Role
    workspace: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None


class TokenCreated(TokenOut):
    """A new token; ``token`` is the secret, shown once and stored only as a hash."""

    token: str


class WhoAmI(OutModel):
    workspace: WorkspaceOut
    token: TokenOut
