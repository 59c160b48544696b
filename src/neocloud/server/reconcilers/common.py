"""What every reconciler does the same way: one object at a time, under a lock that every
control-plane copy shares, one failure never stopping the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Base

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Base)


def reconcile_locked(db: Database, kind: str, obj_id: str, step: Callable[[str], None]) -> None:
    """Run ``step(obj_id)`` while holding the lock named ``kind:obj_id`` across every
    process on the database (see ``Database.try_lock``); another copy busy with the same
    object is skipped, never raced."""
    with db.try_lock(f"{kind}:{obj_id}") as mine:
        if mine:
            step(obj_id)


def reconcile_each(
    db: Database, kind: str, ids: Iterable[str], step: Callable[[str], None]
) -> None:
    """:func:`reconcile_locked` for each id in order; an exception is logged and the loop
    goes on with the next object."""
    for obj_id in ids:
        try:
            reconcile_locked(db, kind, obj_id, step)
        except Exception:
            log.exception("reconciling %s %s failed", kind, obj_id)


def lock_row(s: Session, model: type[M], row_id: str) -> M | None:
    """The row ``row_id`` of ``model``, row-locked on PostgreSQL (``SKIP LOCKED``: ``None``
    when another transaction holds it)."""
    q = select(model).where(model.id == row_id)  # type: ignore[attr-defined]
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return s.scalars(q).first()
