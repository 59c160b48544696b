"""A database whose write lock another process holds: the API answers 503
``database_busy`` with ``Retry-After`` (it was a 500 ``internal_error``), stores nothing of
the refused request, and reads go on (the token's ``last_used_at`` touch is skipped)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from neocloud.server.db import sqlite_writers
from neocloud.server.errors_http import database_busy
from tests.server.helpers import Cloud, open_cloud


@pytest.fixture
def busy_cloud(tmp_path: Path, sqlite_url: str,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cloud, str]]:
    """A cloud on a SQLite file with a busy timeout of 0.3 s (30 s in production)."""
    monkeypatch.setattr(sqlite_writers, "BUSY_TIMEOUT_S", 0.3)
    c, client = open_cloud(tmp_path / "home", sqlite_url)
    try:
        yield c, sqlite_url.split("///", 1)[1]
    finally:
        client.__exit__(None, None, None)


def _hold_write_lock(path: str) -> sqlite3.Connection:
    """Another process's writer: a plain connection (no writer queue) in ``BEGIN
    IMMEDIATE``."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_write_while_another_process_holds_the_lock_is_a_503(
        busy_cloud: tuple[Cloud, str]) -> None:
    cloud, path = busy_cloud
    other = _hold_write_lock(path)
    try:
        r = cloud.api("POST", "/workspaces", json={"name": "team-a"})
    finally:
        other.rollback()
        other.close()
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"].isdigit()
    err = r.json()["error"]
    assert err["code"] == "database_busy" and "busy" in err["message"]
    # nothing half-written, and the same request goes through once the lock is free
    assert cloud.api("GET", "/workspaces/team-a").status_code == 404
    assert cloud.api("POST", "/workspaces", json={"name": "team-a"}).status_code == 201


def test_a_read_is_not_failed_by_its_last_used_touch(busy_cloud: tuple[Cloud, str]) -> None:
    """The bootstrap token was never used: the first call writes ``last_used_at``. With
    the lock held by another process that write is skipped, not the read."""
    cloud, path = busy_cloud
    other = _hold_write_lock(path)
    try:
        r = cloud.api("GET", "/deployments")
    finally:
        other.rollback()
        other.close()
    assert r.status_code == 200, r.text
    tokens = cloud.api("GET", "/workspaces/default/tokens").json()
    tokens = tokens["data"] if isinstance(tokens, dict) else tokens
    assert tokens[0]["last_used_at"] is not None  # written by the call after the lock


@pytest.mark.parametrize(("orig", "busy"), [
    (sqlite3.OperationalError("database is locked"), True),
    (sqlite3.OperationalError("database is locked: waited 30.0 s for this process's "
                              "SQLite writer queue"), True),
    (SimpleNamespace(sqlstate="40001"), True),   # serialization_failure
    (SimpleNamespace(sqlstate="40P01"), True),   # deadlock_detected
    (SimpleNamespace(sqlstate="55P03"), True),   # lock_not_available (lock_timeout)
    (SimpleNamespace(sqlstate="53100"), False),  # disk_full: a 507
    (sqlite3.OperationalError("no such table: tokens"), False),
])
def test_which_operational_errors_are_busy(orig: object, busy: bool) -> None:
    err = database_busy(OperationalError("UPDATE", {}, orig))  # type: ignore[arg-type]
    assert (err is not None) is busy
    if err is not None:
        assert err.status == 503 and err.code == "database_busy"


def test_a_busy_refusal_writes_no_audit_entry(busy_cloud: tuple[Cloud, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Its entry would wait the busy timeout again before the answer went out."""
    from neocloud.server import audit_http

    recorded: list[object] = []
    real = audit_http.audit.record
    monkeypatch.setattr(audit_http.audit, "record",
                        lambda db, call, **kw: recorded.append(call) or real(db, call, **kw))
    cloud, path = busy_cloud
    other = _hold_write_lock(path)
    try:
        r = cloud.api("POST", "/workspaces", json={"name": "team-a"})
    finally:
        other.rollback()
        other.close()
    assert r.status_code == 503 and not recorded
    assert cloud.api("POST", "/workspaces", json={"name": "team-a"}).status_code == 201
    assert len(recorded) == 1
