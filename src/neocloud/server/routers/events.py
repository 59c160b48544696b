"""Events of the caller's workspace: what happened to its resources and why."""

from __future__ import annotations

from fastapi import APIRouter, Query

from neocloud.models import EventOut, Page
from neocloud.models.events import EventKind
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import events

router = APIRouter(tags=["events"])


@router.get("/events", response_model=Page[EventOut])
def list_events(
    caller: CallerDep,
    s: SessionDep,
    kind: EventKind | None = Query(None, description="Only events of this kind of resource "
                                   "(another kind is a 422 naming ``query.kind``)."),
    name: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> Page[EventOut]:
    """The workspace's events, oldest first; the newest ``limit`` of them."""
    rows = events.list_events(s, workspace_id=caller.workspace_id,
                              kind=kind.value if kind else None, name=name, limit=limit)
    return Page(data=[EventOut.model_validate(e) for e in rows])
