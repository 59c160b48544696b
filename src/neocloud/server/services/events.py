"""Events: the record of what happened to a resource and why."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.server.db.tables import Event


def record(
    s: Session,
    *,
    kind: str,
    name: str,
    reason: str,
    message: str,
    workspace_id: str | None = None,
    object_id: str | None = None,
    warning: bool = False,
    dedupe: bool = False,
) -> Event | None:
    """Add an event in the session (committed with the caller's transaction).

    With ``dedupe`` the event is skipped when the newest event of the same object already
    has the same reason and message (so a reconciler retrying every second does not flood).
    """
    if dedupe:
        last = s.scalars(
            select(Event)
            .where(Event.kind == kind, Event.name == name, Event.workspace_id == workspace_id)
            .order_by(Event.id.desc())
            .limit(1)
        ).first()
        if last is not None and last.reason == reason and last.message == message:
            return None
    ev = Event(
        workspace_id=workspace_id,
        kind=kind,
        name=name,
        object_id=object_id,
        type="warning" if warning else "normal",
        reason=reason,
        message=message,
    )
    s.add(ev)
    return ev


def list_events(
    s: Session,
    *,
    workspace_id: str,
    kind: str | None = None,
    name: str | None = None,
    limit: int = 100,
) -> list[Event]:
    """Newest-last events of a workspace, at most ``limit``."""
    q = select(Event).where(Event.workspace_id == workspace_id)
    if kind:
        q = q.where(Event.kind == kind)
    if name:
        q = q.where(Event.name == name)
    rows = list(s.scalars(q.order_by(Event.id.desc()).limit(limit)))
    rows.reverse()
    return rows
