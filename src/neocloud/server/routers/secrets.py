"""Secrets of the caller's workspace (values are write-only)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from neocloud.models import Page, Role
from neocloud.models.secrets import SecretOut, SecretSet
from neocloud.server.crypto import SecretBox
from neocloud.server.deps import CallerDep, SessionDep, StateDep
from neocloud.server.services import secrets as svc
from neocloud.server.state import AppState

router = APIRouter(tags=["secrets"])


def secret_box(state: AppState) -> SecretBox:
    box: SecretBox = state.extras["secret_box"]
    return box


@router.put("/secrets/{name}", response_model=SecretOut,
            responses={201: {"model": SecretOut, "description": "Created"}})
def set_secret(name: str, body: SecretSet, caller: CallerDep, s: SessionDep, state: StateDep,
               response: Response) -> SecretOut:
    """Create or replace a secret; answers 201 when new, 200 when replaced. The value is
    never returned."""
    caller.require(Role.member)
    row, created = svc.set_secret(s, workspace_id=caller.workspace_id, name=name,
                                  value=body.value, box=secret_box(state))
    response.status_code = 201 if created else 200
    return svc.secret_out(row)


@router.get("/secrets", response_model=Page[SecretOut])
def list_secrets(caller: CallerDep, s: SessionDep) -> Page[SecretOut]:
    return Page(data=[svc.secret_out(r) for r in svc.list_secrets(
        s, workspace_id=caller.workspace_id)])


@router.get("/secrets/{name}", response_model=SecretOut)
def get_secret(name: str, caller: CallerDep, s: SessionDep) -> SecretOut:
    return svc.secret_out(svc.get_secret(s, workspace_id=caller.workspace_id, name=name))


@router.delete("/secrets/{name}", status_code=204)
def delete_secret(name: str, caller: CallerDep, s: SessionDep) -> Response:
    caller.require(Role.member)
    svc.delete_secret(s, workspace_id=caller.workspace_id, name=name)
    return Response(status_code=204)
