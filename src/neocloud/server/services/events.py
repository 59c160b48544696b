"""Events: the record of what happened to a resource and why."""

from __future__ import annotations

from collections.abc import Collection

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
    status: str | None = None,
) -> Event | None:
    """Add an event in the session (committed with the caller's transaction).

    ``status`` names the status the object entered (status events, written by
    ``services.lifecycle.set_status``). With ``dedupe`` the event is skipped when the
    newest event of the same object already has the same reason and message (so a
    reconciler retrying every second does not flood).
    """
    if dedupe:
        last = s.scalars(
            select(Event)
            .where(Event.kind == kind, Event.name == name, Event.workspace_id == workspace_id,
                   *((Event.object_id == object_id,) if object_id else ()))
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
        status=status,
    )
    s.add(ev)
    return ev


def list_events(
    s: Session,
    *,
    workspace_id: str,
    kind: str | None = None,
    name: str | None = None,
    object_ids: Collection[str] | None = None,
    limit: int = 100,
) -> list[Event]:
    """Newest-last events of a workspace, at most ``limit``; with ``object_ids`` only those
    of these objects (a deployment and its replicas: not those of an earlier deployment
    of the same name)."""
    q = select(Event).where(Event.workspace_id == workspace_id)
    if object_ids is not None:
        q = q.where(Event.object_id.in_(list(object_ids)))
    if kind:
        q = q.where(Event.kind == kind)
    if name:
        q = q.where(Event.name == name)
    rows = list(s.scalars(q.order_by(Event.id.desc()).limit(limit)))
    rows.reverse()
    return rows
