"""Who is calling: the workspace and role behind a token."""

from __future__ import annotations

from dataclasses import dataclass

from neocloud.errors import PermissionDenied
from neocloud.models import Role

_RANK = {Role.viewer: 0, Role.member: 1, Role.admin: 2}


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of an API route."""

    token_id: str
    token_name: str
    workspace_id: str
    workspace_name: str
    role: Role
    operator: bool
    """Admin of an operator workspace: may manage nodes, shapes, workspaces and quotas."""

    def require(self, role: Role) -> None:
        """Raise :class:`PermissionDenied` unless the caller's role is at least ``role``."""
        if _RANK[self.role] < _RANK[role]:
            raise PermissionDenied(
                f"this action needs the {role.value} role; the token has {self.role.value}"
            )

    def require_operator(self) -> None:
        """Raise :class:`PermissionDenied` unless the caller is an operator admin."""
        if not (self.operator and self.role is Role.admin):
            raise PermissionDenied(
                "this action is for operators (an admin token of an operator workspace)"
            )
