"""Deployments, their events and logs."""

from __future__ import annotations

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from neocloud.models import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentUpdate,
    EventOut,
    Page,
    Role,
)
from neocloud.models.deployments import DryRunOut, RevisionOut
from neocloud.models.secrets import mask_env
from neocloud.server.deps import CallerDep, SecretBoxDep, SessionDep, StateDep
from neocloud.server.errors_http import BUDGET_SPENT
from neocloud.server.services import deployments as svc
from neocloud.server.services import events
from neocloud.server.services import logs as log_svc

router = APIRouter(tags=["deployments"])


@router.post("/deployments", response_model=DeploymentOut, status_code=201,
             responses={200: {"model": DryRunOut,
                              "description": "dry_run: where one replica would go"},
                        **BUDGET_SPENT})
def create_deployment(
    body: DeploymentCreate, caller: CallerDep, s: SessionDep,
    dry_run: bool = Query(False, description="Check and place nothing: say whether a "
                                             "replica fits, and why not."),
) -> DeploymentOut | JSONResponse:
    caller.require(Role.member)
    if dry_run:
        out = svc.dry_run(s, workspace_id=caller.workspace_id, spec=body)
        s.rollback()  # stores nothing (and releases the placement lock)
        return JSONResponse(out.model_dump(mode="json"), status_code=200)
    dep = svc.create_deployment(s, workspace_id=caller.workspace_id, spec=body)
    return svc.deployment_out(s, dep)


@router.get("/deployments", response_model=Page[DeploymentOut])
def list_deployments(caller: CallerDep, s: SessionDep) -> Page[DeploymentOut]:
    rows = svc.list_deployments(s, workspace_id=caller.workspace_id)
    return Page(data=[svc.deployment_out(s, d) for d in rows])


@router.get("/deployments/{name}", response_model=DeploymentOut)
def get_deployment(name: str, caller: CallerDep, s: SessionDep, response: Response
                   ) -> DeploymentOut:
    """The deployment; its ``ETag`` is the revision (``"3"``), for ``If-Match``."""
    dep = svc.get_deployment(s, workspace_id=caller.workspace_id, name=name)
    response.headers["ETag"] = f'"{dep.revision}"'
    return svc.deployment_out(s, dep)


@router.patch("/deployments/{name}", response_model=DeploymentOut, responses=BUDGET_SPENT)
def update_deployment(
    name: str, body: DeploymentUpdate, caller: CallerDep, s: SessionDep, response: Response,
    if_match: str | None = Header(None, alias="If-Match", json_schema_extra={
        # A header is a string or absent, never null.
        "anyOf": [{"type": "string", "pattern": r'^\s*(\*|(W/)?"?[0-9]+"?)\s*$'}]}),
) -> DeploymentOut:
    """Change the deployment. With ``If-Match: "<revision>"`` (or the ``revision`` field)
    the change applies only to that revision: another current one is a 409."""
    caller.require(Role.member)
    dep = svc.update_deployment(s, workspace_id=caller.workspace_id, name=name, spec=body,
                                if_match=svc.parse_if_match(if_match))
    response.headers["ETag"] = f'"{dep.revision}"'
    return svc.deployment_out(s, dep)


@router.get("/deployments/{name}/revisions", response_model=Page[RevisionOut])
def deployment_revisions(name: str, caller: CallerDep, s: SessionDep) -> Page[RevisionOut]:
    """Every revision of the deployment, oldest first; the last one is ``active``."""
    rows = svc.list_revisions(s, workspace_id=caller.workspace_id, name=name)
    last = rows[-1].revision if rows else None
    return Page(data=[RevisionOut(
        revision=r.revision, generation=r.generation, message=r.message,
        spec={**r.spec, "env": mask_env(dict(r.spec.get("env") or {}))},
        created_at=r.created_at, active=r.revision == last) for r in rows])


@router.delete("/deployments/{name}", status_code=204)
def delete_deployment(name: str, caller: CallerDep, s: SessionDep) -> Response:
    caller.require(Role.member)
    svc.delete_deployment(s, workspace_id=caller.workspace_id, name=name)
    return Response(status_code=204)


@router.get("/deployments/{name}/events", response_model=Page[EventOut])
def deployment_events(
    name: str, caller: CallerDep, s: SessionDep, limit: int = Query(100, ge=1, le=1000)
) -> Page[EventOut]:
    dep = svc.get_deployment(s, workspace_id=caller.workspace_id, name=name)
    rows = events.list_events(s, workspace_id=caller.workspace_id, kind="deployment", name=name,
                              object_ids=svc.event_object_ids(s, dep), limit=limit)
    return Page(data=[EventOut.model_validate(e) for e in rows])


@router.get("/deployments/{name}/logs", response_class=PlainTextResponse)
def deployment_logs(
    name: str,
    caller: CallerDep,
    s: SessionDep,
    state: StateDep,
    box: SecretBoxDep,
    tail: int | None = Query(None, ge=0, le=100_000),
    replica: str | None = None,
) -> PlainTextResponse:
    """The replicas' output; secret values the deployment references are shown as ``***``."""
    return PlainTextResponse(log_svc.deployment_logs(
        s, backends=state.backends, box=box, workspace_id=caller.workspace_id, name=name,
        tail=tail, replica=replica))
