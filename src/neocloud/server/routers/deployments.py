"""Deployments, their events and logs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from neocloud.errors import NotFound
from neocloud.models import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentUpdate,
    EventOut,
    Page,
    Role,
)
from neocloud.server.backends.base import tail_file
from neocloud.server.db.tables import Replica
from neocloud.server.deps import CallerDep, SessionDep, StateDep
from neocloud.server.services import deployments as svc
from neocloud.server.services import events
from neocloud.server.services import secrets as secret_svc

router = APIRouter(tags=["deployments"])


@router.post("/deployments", response_model=DeploymentOut, status_code=201)
def create_deployment(
    body: DeploymentCreate, caller: CallerDep, s: SessionDep, state: StateDep
) -> DeploymentOut:
    caller.require(Role.member)
    dep = svc.create_deployment(s, workspace_id=caller.workspace_id, spec=body)
    out = svc.deployment_out(s, dep)
    state.commit_and_wake(s)
    return out


@router.get("/deployments", response_model=Page[DeploymentOut])
def list_deployments(caller: CallerDep, s: SessionDep) -> Page[DeploymentOut]:
    rows = svc.list_deployments(s, workspace_id=caller.workspace_id)
    return Page(data=[svc.deployment_out(s, d) for d in rows])


@router.get("/deployments/{name}", response_model=DeploymentOut)
def get_deployment(name: str, caller: CallerDep, s: SessionDep) -> DeploymentOut:
    return svc.deployment_out(s, svc.get_deployment(s, workspace_id=caller.workspace_id, name=name))


@router.patch("/deployments/{name}", response_model=DeploymentOut)
def update_deployment(
    name: str, body: DeploymentUpdate, caller: CallerDep, s: SessionDep, state: StateDep
) -> DeploymentOut:
    caller.require(Role.member)
    dep = svc.update_deployment(s, workspace_id=caller.workspace_id, name=name, spec=body)
    out = svc.deployment_out(s, dep)
    state.commit_and_wake(s)
    return out


@router.delete("/deployments/{name}", status_code=204)
def delete_deployment(name: str, caller: CallerDep, s: SessionDep, state: StateDep) -> Response:
    caller.require(Role.member)
    svc.delete_deployment(s, workspace_id=caller.workspace_id, name=name)
    state.commit_and_wake(s)
    return Response(status_code=204)


@router.get("/deployments/{name}/events", response_model=Page[EventOut])
def deployment_events(
    name: str, caller: CallerDep, s: SessionDep, limit: int = Query(100, ge=1, le=1000)
) -> Page[EventOut]:
    svc.get_deployment(s, workspace_id=caller.workspace_id, name=name)
    rows = events.list_events(s, workspace_id=caller.workspace_id, kind="deployment", name=name,
                              limit=limit)
    return Page(data=[EventOut.model_validate(e) for e in rows])


@router.get("/deployments/{name}/logs", response_class=PlainTextResponse)
def deployment_logs(
    name: str,
    caller: CallerDep,
    s: SessionDep,
    state: StateDep,
    tail: int | None = Query(None, ge=0, le=100_000),
    replica: str | None = None,
) -> PlainTextResponse:
    """The replicas' output; secret values the deployment references are shown as ``***``."""
    dep = svc.get_deployment(s, workspace_id=caller.workspace_id, name=name)
    values = secret_svc.values_of(s, workspace_id=dep.workspace_id, refs=dict(dep.secrets or {}),
                                  box=state.extras.get("secret_box"))
    reps = list(s.scalars(
        select(Replica).where(Replica.deployment_id == dep.id).order_by(Replica.created_at)
    ))
    if replica is not None:
        reps = [r for r in reps if r.id == replica or r.id.startswith(replica)]
        if not reps:
            raise NotFound(f"replica {replica!r} of deployment {name!r} not found",
                           param="replica")
    reps = [r for r in reps if r.handle.get("log_path")]
    if len(reps) == 1:
        return PlainTextResponse(secret_svc.redact(tail_file(_path(reps[0]), tail), values))
    parts = [f"==> replica {r.id} <==\n{tail_file(_path(r), tail)}" for r in reps]
    return PlainTextResponse(secret_svc.redact("\n".join(parts), values))


def _path(r: Replica) -> Path:
    return Path(r.handle["log_path"])
