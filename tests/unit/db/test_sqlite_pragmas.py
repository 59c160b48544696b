"""The settings every SQLite connection of the control plane runs with (``db/engine.py``)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from neocloud.server.db.engine import Database


def test_every_connection_is_wal_full_sync_with_foreign_keys(tmp_path: Path) -> None:
    """``synchronous`` is set, not left to the build: some SQLite builds default a WAL
    database to NORMAL (1), which can lose the last commits of the usage ledger when the
    machine loses power."""
    d = Database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with d.engine.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        d.dispose()
