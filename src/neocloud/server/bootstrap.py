"""Start of a cloud: the operator workspace and its admin token.

A restart on the same data folder reuses the admin token that ``neocloud up`` saved in the
folder's CLI config while that token still works (an admin of the operator workspace); a
new one is created only when there is none saved, or it was revoked or changed role (a
restart used to create ``admin-<n+1>`` each time, all of them valid).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import select

from neocloud.models import Role
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Workspace
from neocloud.server.services import workspaces as ws_svc

DEFAULT_WORKSPACE = "default"


class TokenChoice(enum.StrEnum):
    """What :func:`bootstrap` did about the admin token."""

    reused = "reused"
    """``known_token`` still works: no new token."""
    created = "created"
    """No ``known_token`` was given: a new token."""
    replaced = "replaced"
    """``known_token`` no longer works (revoked, another workspace or role): a new token."""


@dataclass(frozen=True)
class Bootstrap:
    workspace: str
    token: str | None
    """The new admin token's secret, or ``None`` when ``known_token`` was still valid."""
    token_name: str = ""
    """The name of the admin token in use (new or reused)."""
    choice: TokenChoice = TokenChoice.created


def bootstrap(db: Database, *, known_token: str | None = None) -> Bootstrap:
    """Create the ``default`` operator workspace if missing, and an admin token unless
    ``known_token`` (for example the one in the CLI config) still authenticates there.
    """
    with db.session() as s:
        ws = s.scalars(select(Workspace).where(Workspace.name == DEFAULT_WORKSPACE)).first()
        if ws is None:
            ws = ws_svc.create_workspace(s, name=DEFAULT_WORKSPACE, operator=True)
        choice = TokenChoice.created
        if known_token:
            caller = ws_svc.authenticate(s, secret=known_token)
            if caller is not None and caller.workspace_id == ws.id and caller.role is Role.admin:
                return Bootstrap(workspace=ws.name, token=None, token_name=caller.token_name,
                                 choice=TokenChoice.reused)
            choice = TokenChoice.replaced
        n = len(ws_svc.list_tokens(s, workspace_id=ws.id)) + 1
        name = f"admin-{n}"
        while any(t.name == name for t in ws_svc.list_tokens(s, workspace_id=ws.id)):
            n += 1
            name = f"admin-{n}"
        _tok, secret = ws_svc.create_token(s, workspace=ws, name=name, role=Role.admin)
        return Bootstrap(workspace=ws.name, token=secret, token_name=name, choice=choice)
