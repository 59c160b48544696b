"""Workspaces, their tokens and ``whoami``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from neocloud.models import (
    Page,
    Role,
    TokenCreate,
    TokenCreated,
    TokenOut,
    WhoAmI,
    WorkspaceCreate,
    WorkspaceOut,
)
from neocloud.server.db.tables import Token, Workspace
from neocloud.server.deps import CallerDep, GatewayDep, SessionDep
from neocloud.server.services import workspaces as svc

router = APIRouter(tags=["workspaces"])


def _created(tok: Token, secret: str, ws: Workspace) -> TokenCreated:
    return TokenCreated(**svc.token_out(tok, ws.name).model_dump(), token=secret)


@router.get("/whoami", response_model=WhoAmI)
def whoami(caller: CallerDep, s: SessionDep) -> WhoAmI:
    ws = s.get(Workspace, caller.workspace_id)
    tok = s.get(Token, caller.token_id)
    assert ws is not None and tok is not None
    return WhoAmI(workspace=WorkspaceOut.model_validate(ws), token=svc.token_out(tok, ws.name))


@router.get("/workspaces", response_model=Page[WorkspaceOut])
def list_workspaces(caller: CallerDep, s: SessionDep) -> Page[WorkspaceOut]:
    rows = svc.list_workspaces(s, caller=caller)
    return Page(data=[WorkspaceOut.model_validate(w) for w in rows])


@router.post("/workspaces", response_model=WorkspaceOut, status_code=201)
def create_workspace(body: WorkspaceCreate, caller: CallerDep, s: SessionDep) -> WorkspaceOut:
    caller.require_operator()
    return WorkspaceOut.model_validate(svc.create_workspace(s, name=body.name))


@router.post("/workspaces/{name}/tokens", response_model=TokenCreated, status_code=201)
def create_workspace_token(
    name: str, body: TokenCreate, caller: CallerDep, s: SessionDep
) -> TokenCreated:
    caller.require_operator()
    ws = svc.get_workspace(s, name=name)
    tok, secret = svc.create_token(s, workspace=ws, name=body.name, role=body.role)
    return _created(tok, secret, ws)


@router.get("/workspaces/{name}/tokens", response_model=Page[TokenOut])
def list_workspace_tokens(name: str, caller: CallerDep, s: SessionDep) -> Page[TokenOut]:
    """The tokens of any workspace (operators; secrets are never shown)."""
    caller.require_operator()
    ws = svc.get_workspace(s, name=name)
    return Page(data=[svc.token_out(t, ws.name) for t in svc.list_tokens(
        s, workspace_id=ws.id)])


@router.delete("/workspaces/{name}/tokens/{token}", status_code=204)
def delete_workspace_token(name: str, token: str, caller: CallerDep, s: SessionDep,
                           gateway: GatewayDep) -> Response:
    """Revoke a token of any workspace (operators).

    An operator creates the tokens of every workspace but could revoke none but its
    own: a leaked team token stayed valid until an admin of that team revoked it.
    """
    caller.require_operator()
    ws = svc.get_workspace(s, name=name)
    svc.delete_token(s, workspace_id=ws.id, name=token, param="token")
    s.commit()
    gateway.invalidate_tokens()  # the gateway refuses the token from now on
    return Response(status_code=204)


@router.get("/tokens", response_model=Page[TokenOut])
def list_tokens(caller: CallerDep, s: SessionDep) -> Page[TokenOut]:
    rows = svc.list_tokens(s, workspace_id=caller.workspace_id)
    return Page(data=[svc.token_out(t, caller.workspace_name) for t in rows])


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, caller: CallerDep, s: SessionDep) -> TokenCreated:
    caller.require(Role.admin)
    ws = s.get(Workspace, caller.workspace_id)
    assert ws is not None
    tok, secret = svc.create_token(s, workspace=ws, name=body.name, role=body.role)
    return _created(tok, secret, ws)


@router.delete("/tokens/{name}", status_code=204)
def delete_token(name: str, caller: CallerDep, s: SessionDep, gateway: GatewayDep) -> Response:
    caller.require(Role.admin)
    svc.delete_token(s, workspace_id=caller.workspace_id, name=name)
    s.commit()
    gateway.invalidate_tokens()  # the gateway refuses the token from now on
    return Response(status_code=204)
