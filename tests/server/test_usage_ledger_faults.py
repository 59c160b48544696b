"""The request ledger under hostile counts and a database that hangs (both databases).

Found by a fault-hunting pass:

- a token count past the column's range (a deployment's own replica writes the
  ``"usage"`` its answer carries, and its ``/usage`` answer) failed the ledger's whole
  batch on SQLite (``OverflowError`` from 2**63 is no data error, so the batch was not
  retried one write at a time and every other request in it was refused with 503), and
  on PostgreSQL (past 2**31) the end of the request was never stored; a negative one was
  billed as a credit;
- a ``/usage`` answer that is JSON but not an object (``[]``) raised out of the
  recovery, and no orphan after it was recovered at any flush;
- a database that hangs (a lock held on ``request_usage``) held every gateway request
  forever instead of refusing it, and the ledger's queue grew with every request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, text

from neocloud.gateway.types import RequestRecord
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import RequestUsage
from neocloud.server.metering import ledger as ledger_mod
from neocloud.server.metering import recovery
from neocloud.server.metering.ledger import MAX_TOKENS, LedgerState
from neocloud.server.metering.tokens import UsageBuffer
from tests.server.helpers import Cloud
from tests.server.test_usage_ledger import StubReplica, _gated, _serve
from tests.server.test_usage_ledger import buffer as buffer  # noqa: F401  # a fixture
from tests.server.test_usage_ledger import replica as replica  # noqa: F401  # a fixture
from tests.server.usage_helpers import billed_tokens


def _rec(rid: str) -> RequestRecord:
    return RequestRecord(workspace_id="ws", token_id="t", deployment_id="d", replica_id=None,
                         path="/v1/chat/completions", status=0, latency_s=0.0,
                         prompt_tokens=0, completion_tokens=0, started_at=time.time(),
                         request_id=rid)


def _rows(db: Database) -> dict[str, tuple[str, int, int]]:
    with db.session() as s:
        return {r.id: (r.state, r.prompt_tokens, r.completion_tokens)
                for r in s.scalars(select(RequestUsage))}


@pytest.mark.parametrize("count", [2**31, 2**63, 10**30])
def test_a_token_count_past_the_columns_range_fails_no_other_request(
        buffer: UsageBuffer, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    ledger = buffer.ledger
    ledger.submit(_rec("big"), LedgerState.open, insert_row=True).result(10)
    gate = _gated(ledger, monkeypatch, hold_s=20.0)
    first = ledger.submit(_rec("first"), LedgerState.open, insert_row=True)
    other = ledger.submit(_rec("other"), LedgerState.open, insert_row=True)
    # a replica's answer carried "usage": {"prompt_tokens": <count>, ...}
    big = ledger.submit(replace(_rec("big"), status=200, prompt_tokens=count,
                                completion_tokens=count), LedgerState.closed,
                        insert_row=False)
    gate.set()
    # before (SQLite, 2**63 and up): OverflowError failed all three; (PostgreSQL, 2**31
    # and up) "integer out of range" failed the end of "big"
    for f in (first, other, big):
        f.result(10)
    assert _rows(ledger.db) == {"first": ("open", 0, 0), "other": ("open", 0, 0),
                                "big": ("closed", MAX_TOKENS, MAX_TOKENS)}
    assert buffer.flush() == 1
    assert billed_tokens(ledger.db, "d") == (MAX_TOKENS, MAX_TOKENS, 1, 0)


def test_a_negative_token_count_is_billed_as_none(buffer: UsageBuffer) -> None:
    rec = _rec("neg")
    asyncio.run(buffer.opened(rec))
    asyncio.run(buffer.ended(replace(rec, status=200, prompt_tokens=-10**6,
                                     completion_tokens=-5), final=True))
    assert buffer.flush() == 1
    assert billed_tokens(buffer.db, "d") == (0, 0, 1, 0)  # before: -1000000 and -5


class _Replica(BaseHTTPRequestHandler):
    """Answers ``GET /usage?id=<body>`` with the JSON text ``<body>`` itself."""

    def do_GET(self) -> None:  # noqa: N802  # the name http.server calls
        body = parse_qs(urlsplit(self.path).query)["id"][0].encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def echo_replica() -> Iterator[str]:
    """A replica whose ``/usage`` answers the JSON it is asked for (as its ``id``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("answer", "count"), [
    ("[]", None), ('"x"', None), ("7", None),
    ('{"finished": true, "prompt_tokens": true, "completion_tokens": 1}', None),
    ('{"finished": true, "prompt_tokens": -9, "completion_tokens": 3}',
     recovery.Count(0, 3)),
    ('{"finished": true, "prompt_tokens": 1e400, "completion_tokens": 3}', None),
    ('{"finished": true, "prompt_tokens": 99999999999999999999999, "completion_tokens": 3}',
     recovery.Count(MAX_TOKENS, 3)),
])
def test_a_replicas_odd_usage_answer_is_no_count_and_raises_nothing(
        echo_replica: str, answer: str, count: recovery.Count | None) -> None:
    # before: "[]" raised AttributeError out of recover_orphans (every flush, so no
    # orphan after it was ever recovered), -9 was billed as a credit, and a count past
    # the column's range failed the recovery's update at every flush
    assert recovery.ask_replica(echo_replica, answer) == count


def test_a_hung_database_refuses_a_request_and_drops_its_late_row(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(db_url)
    usage = UsageBuffer(db, wait_s=0.3)
    try:
        asyncio.run(usage.opened(_rec("served")))
        gate = _gated(usage.ledger, monkeypatch, hold_s=20.0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):  # before: waited for as long as the lock held
            asyncio.run(usage.opened(_rec("refused")))
        with pytest.raises(TimeoutError):  # the end stays queued
            asyncio.run(usage.ended(replace(_rec("served"), status=200, prompt_tokens=4),
                                    final=True))
        assert time.monotonic() - t0 < 5
        gate.set()
        assert usage.ledger.drain(10)
        # the refused request's row, committed after its refusal, is gone: nothing to bill
        assert _rows(db) == {"served": ("closed", 4, 0)}
        assert usage.flush() == 1 and billed_tokens(db, "d") == (4, 0, 1, 0)
    finally:
        usage.close()
        db.dispose()


def test_a_lock_held_on_the_ledger_table_refuses_requests_in_time(db_url: str) -> None:
    db = Database(db_url)
    if not db.is_postgres:
        db.dispose()
        pytest.skip("a table lock is PostgreSQL's")
    usage = UsageBuffer(db, wait_s=0.5)
    holder = db.engine.connect()
    try:
        holder.execute(text("LOCK TABLE request_usage IN ACCESS EXCLUSIVE MODE"))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            asyncio.run(usage.opened(_rec("locked")))
        assert time.monotonic() - t0 < 5
        holder.rollback()
        assert usage.ledger.drain(10)
        assert _rows(db) == {}
    finally:
        holder.close()
        usage.close()
        db.dispose()


def test_a_ledger_far_behind_refuses_new_requests_at_once(
        buffer: UsageBuffer, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = buffer.ledger
    monkeypatch.setattr(ledger_mod, "MAX_QUEUE", 3)
    gate = _gated(ledger, monkeypatch, hold_s=20.0)
    first = ledger.submit(_rec("first"), LedgerState.open, insert_row=True)
    deadline = time.monotonic() + 10
    while ledger._queue and time.monotonic() < deadline:  # the writer holds it
        time.sleep(0.01)
    waiting = [ledger.submit(_rec(f"w{i}"), LedgerState.open, insert_row=True)
               for i in range(3)]
    # before: queued without bound while the database hung
    with pytest.raises(RuntimeError, match="behind"):
        asyncio.run(buffer.opened(_rec("refused")))
    end = ledger.submit(replace(_rec("first"), status=200), LedgerState.closed,
                        insert_row=False)  # an end is still queued
    gate.set()
    for f in (first, *waiting, end):
        f.result(10)
    assert set(_rows(ledger.db)) == {"first", "w0", "w1", "w2"}


def test_the_gateway_refuses_a_request_in_time_while_the_ledger_table_is_locked(
        cloud: Cloud, replica: tuple[StubReplica, int]) -> None:  # noqa: F811
    db = cloud.app.state.db
    if not db.is_postgres:
        pytest.skip("a table lock is PostgreSQL's")
    stub, port = replica
    _serve(cloud, port)
    cloud.app.state.usage.wait_s = 0.5
    holder = db.engine.connect()
    try:
        holder.execute(text("LOCK TABLE request_usage IN ACCESS EXCLUSIVE MODE"))
        t0 = time.monotonic()
        r = cloud.client.post("/v1/embeddings", headers=cloud.h(),
                              json={"model": "emb", "input": "a cat"})
        # before: the request waited for as long as the lock was held
        assert r.status_code == 503 and r.json()["error"]["code"] == "usage_unavailable"
        assert time.monotonic() - t0 < 5 and "/v1/embeddings" not in stub.hits
    finally:
        holder.rollback()
        holder.close()
    assert cloud.app.state.usage.ledger.drain(10)
    r = cloud.client.post("/v1/embeddings", headers=cloud.h(),
                          json={"model": "emb", "input": "a cat"})
    assert r.status_code == 200
    assert [row[0] for row in _rows(db).values()] == ["closed"]  # the refused one: gone
