"""Events and usage of the caller's workspace."""

from __future__ import annotations

from fastapi import APIRouter, Query

from neocloud.models import Bill, EventOut, Page, QueueItem
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import events
from neocloud.server.services.quotas import queue as queue_items
from neocloud.server.services.usage import bill

router = APIRouter(tags=["activity"])


@router.get("/events", response_model=Page[EventOut])
def list_events(
    caller: CallerDep,
    s: SessionDep,
    kind: str | None = None,
    name: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> Page[EventOut]:
    rows = events.list_events(s, workspace_id=caller.workspace_id, kind=kind, name=name,
                              limit=limit)
    return Page(data=[EventOut.model_validate(e) for e in rows])


@router.get("/usage", response_model=Bill)
def usage(caller: CallerDep, s: SessionDep) -> Bill:
    return bill(s, workspace_id=caller.workspace_id, workspace_name=caller.workspace_name)


@router.get("/queue", response_model=Page[QueueItem])
def queue(caller: CallerDep, s: SessionDep, all_workspaces: bool = False) -> Page[QueueItem]:
    """Work waiting for resources, with the reason; operators may ask for every workspace."""
    if all_workspaces:
        caller.require_operator()
    items = queue_items(s, workspace_id=None if all_workspaces else caller.workspace_id)
    return Page(data=items)
