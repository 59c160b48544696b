"""Workspace quotas (set by operators) and the queue of work waiting for room."""

from __future__ import annotations

from fastapi import APIRouter

from neocloud.errors import NotFound
from neocloud.models import Page, QueueItem, QuotaOut, QuotaSet, Role
from neocloud.server.db.tables import Workspace
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.errors_http import error_responses
from neocloud.server.services import quotas as svc
from neocloud.server.services.workspaces import get_workspace

router = APIRouter(tags=["quotas"])


@router.put("/workspaces/{name}/quota", response_model=QuotaOut)
def set_quota(name: str, body: QuotaSet, caller: CallerDep, s: SessionDep) -> QuotaOut:
    caller.require_operator()
    ws = get_workspace(s, name=name)
    svc.set_quota(s, workspace=ws, spec=body)
    return svc.quota_out(s, workspace=ws)


@router.get("/workspaces/{name}/quota", response_model=QuotaOut)
def get_workspace_quota(name: str, caller: CallerDep, s: SessionDep) -> QuotaOut:
    if name != caller.workspace_name and not (caller.operator and caller.role is Role.admin):
        # Same answer whether or not the workspace exists: names are not probed this way.
        raise NotFound(f"workspace {name!r} not found", param="name")
    return svc.quota_out(s, workspace=get_workspace(s, name=name))


@router.get("/quota", response_model=QuotaOut)
def get_quota(caller: CallerDep, s: SessionDep) -> QuotaOut:
    ws = s.get(Workspace, caller.workspace_id)
    assert ws is not None
    return svc.quota_out(s, workspace=ws)


@router.get("/queue", response_model=Page[QueueItem], responses=error_responses(403))
def queue(caller: CallerDep, s: SessionDep, all_workspaces: bool = False) -> Page[QueueItem]:
    """Work waiting for resources, with the reason; operators may ask for every workspace."""
    if all_workspaces:
        caller.require_operator()
    items = svc.queue(s, workspace_id=None if all_workspaces else caller.workspace_id)
    return Page(data=items)
