"""Deleting one object of the API (a secret, volume, job, token, node, budget): the one way.

Invariant: **of concurrent deletes of one row, exactly one succeeds; every other one
raises** :class:`~neocloud.errors.NotFound` **(404) and changes nothing**, so exactly one
caller is told 204, exactly one ``Deleted`` event and one audit "success" are written,
and the side effects that follow a commit (removing a volume's files, a job's logs) run
once.

A delete that read the row and then deleted it did not hold that: the losers of the race
read the row before the winner committed, their ``DELETE`` then matched no row, which
SQLAlchemy only warns about (``SAWarning: DELETE ... expected to delete 1 row(s); 0 were
matched``), and they committed and answered 204 as well. Two steps prevent it:

1. :func:`lock_for_delete` locks the row and reads it again before anything is decided
   (:func:`~neocloud.server.services.lifecycle.lock_row`: ``SELECT ... FOR UPDATE`` on
   PostgreSQL, which waits for the winner's transaction and then finds no row; on SQLite a
   no-op ``UPDATE`` that takes the database write lock, one writer at a time, so the
   read that follows sees the winner's commit). The checks a delete makes (a volume still
   mounted, the last operator admin token) are thus made on the newest row, under the lock.
2. :func:`delete_locked` deletes it with a statement whose row count is checked: a delete
   that removed no row raises instead of reporting success (a guard for any path that
   did not lock first).
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import delete
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from neocloud.errors import NotFound
from neocloud.server.db.tables import Base
from neocloud.server.services.lifecycle import lock_row

M = TypeVar("M", bound=Base)


def _key(model: type[Base]) -> Any:
    """The mapped attribute of the model's one primary-key column (``Secret.id``)."""
    mapper = sa_inspect(model)
    (column,) = mapper.primary_key
    return getattr(model, mapper.get_property_by_column(column).key)


def lock_for_delete(s: Session, model: type[M], row: M | None, *, missing: str,
                    param: str = "name") -> M:
    """The newest version of ``row`` (as read by the caller, or ``None``), locked until the
    transaction ends.

    Raises:
        NotFound: ``row`` is ``None``, or it was deleted by a transaction that committed
            before this lock was granted (``missing`` is the message, ``param`` the field).
    """
    if row is not None:
        row = lock_row(s, model, getattr(row, _key(model).key))
    if row is None:
        raise NotFound(missing, param=param)
    return row


def delete_locked(s: Session, row: Base, *, missing: str, param: str = "name") -> None:
    """Delete ``row`` (locked by :func:`lock_for_delete`) in this transaction, confirming
    that the ``DELETE`` removed exactly that row; the object leaves the session.

    Raises:
        NotFound: no row was removed (another transaction deleted it first); the caller's
            transaction must roll back (``missing`` is the message, ``param`` the field).
    """
    model = type(row)
    key = _key(model)
    done = s.execute(delete(model).where(key == getattr(row, key.key))
                     .execution_options(synchronize_session="evaluate"))
    if getattr(done, "rowcount", 0) != 1:
        raise NotFound(missing, param=param)
