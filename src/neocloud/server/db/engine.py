"""Engine, sessions and migrations."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from neocloud.server.datafolder import FILE_MODE, make_private_dirs, open_private
from neocloud.server.db import sqlite_writers

MIGRATIONS = Path(__file__).parent / "migrations"

POOL_RECYCLE_S = 1800
"""Seconds a pooled PostgreSQL connection is used before it is replaced."""


def _private_sqlite_file(path: Path) -> None:
    """Create the SQLite database file with mode ``0600`` before SQLite opens it (and force
    that mode on an existing one and its ``-wal``/``-shm`` files). SQLite gives the
    ``-wal`` and ``-shm`` files it creates the mode of the database file, so all three stay
    readable by the owner only."""
    make_private_dirs(path.parent)
    os.close(open_private(path, os.O_RDWR))
    for side in ("-wal", "-shm", "-journal"):
        extra = path.with_name(path.name + side)
        if extra.exists():
            os.chmod(extra, FILE_MODE)


def _sqlite_file(url: str) -> str | None:
    """The database of a SQLite ``url`` when it is a file (a path, or a ``file:`` URI not
    in memory); ``None`` for an in-memory database (one per connection: no writer waits
    for another)."""
    path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
    if not path or path == ":memory:" or (path.startswith("file:") and "memory" in url):
        return None
    return path


def make_engine(url: str, *, queue_writers: bool = True) -> Engine:
    """Create the engine for ``url``; SQLite gets WAL, foreign keys, a busy timeout, its
    files mode ``0600`` (see :mod:`neocloud.server.datafolder`) and, for a file, this
    process's queue of writers for that file (:mod:`.sqlite_writers`: the writers of the
    process take SQLite's write lock in turn instead of polling it). ``queue_writers=False``
    leaves SQLite's busy handler alone (the fleet benchmark's baseline)."""
    if url.startswith("sqlite"):
        path = _sqlite_file(url)
        connect_args: dict[str, Any] = {"check_same_thread": False,
                                        "timeout": sqlite_writers.BUSY_TIMEOUT_S}
        if path is not None and not path.startswith("file:"):
            _private_sqlite_file(Path(path))
        if path is not None and queue_writers:
            connect_args["factory"] = sqlite_writers.connection_factory(
                sqlite_writers.queue_for(path))
        engine = create_engine(url, connect_args=connect_args)
        busy_ms = int(sqlite_writers.BUSY_TIMEOUT_S * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns, so a machine that loses power
            # keeps every usage row the gateway was told is stored (metering/ledger.py).
            # Some SQLite builds default WAL databases to NORMAL, which can lose the
            # last commits then (a kill -9 of the process loses none under either).
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        return engine
    # No ping before each checkout (``pool_pre_ping``): it is one more round trip on
    # every transaction, about one per replica placed (benchmarks/fleet/README.md). A
    # connection the server dropped is found on its first use instead: that statement
    # fails (a reconciler step is tried again at its next pass, an API call answers an
    # error once) and the pool replaces every connection older than the failure.
    # ``pool_recycle`` retires connections before idle timeouts on the way can drop them.
    return create_engine(url, pool_size=10, max_overflow=20, pool_recycle=POOL_RECYCLE_S)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """The engine and a session factory; ``with db.session() as s:`` commits on success."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        s = self._factory()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    @contextmanager
    def try_lock(self, key: str) -> Iterator[bool]:
        """Try to take a lock named ``key`` across every process using this database.

        On PostgreSQL a session-level advisory lock, held on its own connection until the
        block ends (``False`` when another process holds it). On SQLite, a single-host
        database, always ``True``: one control plane runs the reconcilers there.
        """
        if not self.is_postgres:
            yield True
            return
        k = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
        with self.engine.connect() as conn:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": k}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": k})
                    conn.commit()

    def dispose(self) -> None:
        self.engine.dispose()
