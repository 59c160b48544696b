"""Inserts that a concurrent insert of the same unique key does not turn into an error.

A service that checks "no row of that name" and then inserts loses to a call that
inserted the same name between the two: its flush raises ``IntegrityError`` (answered
409). Where the second call should simply use the winner's row (create-or-replace,
create-when-missing), :func:`insert_unless_taken` asks the database to do nothing on that
conflict instead (``INSERT ... ON CONFLICT DO NOTHING``, on SQLite and PostgreSQL): the
insert waits for the winner's commit, then reports that the row was taken.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session


def insert_unless_taken(s: Session, table: Any, *, key: list[str], **values: Any) -> bool:
    """Insert one row of the ORM class ``table`` unless a row with the same ``key``
    columns (a unique constraint) exists; returns whether this call inserted it.

    Column defaults (ids, timestamps) apply as for any insert. The row is not loaded into
    the session: select it afterwards (the winner's row when this returns ``False``).
    """
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = (insert(table).values(**values).on_conflict_do_nothing(index_elements=key)
            .returning(table.id))
    return s.execute(stmt).first() is not None
