"""Secrets of the caller's workspace (values are write-only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from neocloud.models import Page, Role
from neocloud.models.common import SECRET_NAME_PATTERN
from neocloud.models.secrets import SecretOut, SecretSet
from neocloud.server.deps import CallerDep, SecretBoxDep, SessionDep
from neocloud.server.services import secrets as svc

router = APIRouter(tags=["secrets"])

#: A secret name in a path (checked by the service: 400 naming ``name``).
SecretPath = Annotated[str, Path(description="Secret name.",
                                 json_schema_extra={"pattern": SECRET_NAME_PATTERN})]


@router.put("/secrets/{name}", response_model=SecretOut,
            responses={201: {"model": SecretOut, "description": "Created"}})
def set_secret(name: SecretPath, body: SecretSet, caller: CallerDep, s: SessionDep,
               box: SecretBoxDep, response: Response) -> SecretOut:
    """Create or replace a secret; answers 201 when new, 200 when replaced. The value is
    never returned."""
    caller.require(Role.member)
    row, created = svc.set_secret(s, workspace_id=caller.workspace_id, name=name,
                                  value=body.value, box=box)
    response.status_code = 201 if created else 200
    return svc.secret_out(row)


@router.get("/secrets", response_model=Page[SecretOut])
def list_secrets(caller: CallerDep, s: SessionDep) -> Page[SecretOut]:
    return Page(data=[svc.secret_out(r) for r in svc.list_secrets(
        s, workspace_id=caller.workspace_id)])


@router.get("/secrets/{name}", response_model=SecretOut)
def get_secret(name: SecretPath, caller: CallerDep, s: SessionDep) -> SecretOut:
    return svc.secret_out(svc.get_secret(s, workspace_id=caller.workspace_id, name=name))


@router.delete("/secrets/{name}", status_code=204)
def delete_secret(name: SecretPath, caller: CallerDep, s: SessionDep) -> Response:
    caller.require(Role.member)
    svc.delete_secret(s, workspace_id=caller.workspace_id, name=name)
    return Response(status_code=204)
