"""``client.workspaces`` and ``client.tokens``: tenants and their API keys."""

from __future__ import annotations

from urllib.parse import quote

from neocloud.models import (
    Role,
    TokenCreate,
    TokenCreated,
    TokenOut,
    WorkspaceCreate,
    WorkspaceOut,
)
from neocloud.sdk._http import HttpApi, build

TokenList = list[TokenOut]
WorkspaceList = list[WorkspaceOut]


def _tokens_path(workspace: str | None) -> str:
    """``/tokens`` of the caller's workspace, or ``/workspaces/{name}/tokens``."""
    return "/tokens" if workspace is None else f"/workspaces/{quote(workspace, safe='')}/tokens"


class Workspaces:
    """Workspaces (tenants). Listing shows the caller's own workspace, or every workspace
    for an operator; creating needs an operator token."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def list(self) -> WorkspaceList:
        return self._api.get_list(WorkspaceOut, "/workspaces")

    def create(self, name: str) -> WorkspaceOut:
        """Create a workspace. Raises ``PermissionDenied`` (not an operator),
        ``AlreadyExists``, ``ValidationFailed``."""
        body = build(WorkspaceCreate, name=name)
        return self._api.send_model("POST", WorkspaceOut, "/workspaces", body)


class Tokens:
    """API tokens of the caller's workspace (admins), or of another one (operators)."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def list(self, *, workspace: str | None = None) -> TokenList:
        """Tokens of the caller's workspace, or of ``workspace`` (operators); secrets are
        never listed, only ``prefix``.

        Raises:
            PermissionDenied: ``workspace`` is given and the caller is not an operator admin.
            NotFound: no such workspace.
        """
        return self._api.get_list(TokenOut, _tokens_path(workspace))

    def create(
        self, name: str, role: Role | str = Role.member, *, workspace: str | None = None
    ) -> TokenCreated:
        """Create a token; ``TokenCreated.token`` is the secret, returned this once.

        Args:
            name: token name, unique in its workspace.
            role: ``admin``, ``member`` or ``viewer``.
            workspace: create it in this workspace instead of the caller's (operators).

        Raises:
            PermissionDenied: the caller is not an admin (or not an operator for
                ``workspace``).
            AlreadyExists, ValidationFailed, NotFound (no such workspace).
        """
        body = build(TokenCreate, name=name, role=role)
        return self._api.send_model("POST", TokenCreated, _tokens_path(workspace), body)

    def delete(self, name: str, *, workspace: str | None = None) -> None:
        """Revoke a token of the caller's workspace (admins), or of ``workspace``
        (operators); the gateway refuses it at once.

        Raises:
            PermissionDenied: the caller is not an admin (or not an operator for
                ``workspace``).
            NotFound: no such token (or no such workspace).
            Conflict: the last admin token of an operator workspace
                (``last_operator_admin_token``); nothing is revoked.
        """
        self._api.request("DELETE", f"{_tokens_path(workspace)}/{quote(name, safe='')}")
