"""Events of the caller's workspace: what happened to its resources and why."""

from __future__ import annotations

from fastapi import APIRouter, Query

from neocloud.models import EventOut, Page
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import events

router = APIRouter(tags=["events"])


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
