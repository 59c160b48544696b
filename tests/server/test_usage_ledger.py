"""The request ledger: a request's usage is in the database before its answer is sent, a
control plane that dies loses none (its successor bills what it left, and counts what it
left unfinished from the replica), nothing is billed twice, and failed requests are not
billed as served ones (both databases).

Found: the gateway's usage sink held records in memory about a second before writing
them, so a ``kill -9`` in that second lost them, and a request cut by the kill was never
counted; ``requests`` of the usage records counted 4xx/5xx answers as served requests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
from sqlalchemy import func, select

from neocloud.asgi import read_body, send_json
from neocloud.cli.usage import COLUMNS, bill_row
from neocloud.gateway.types import RequestRecord
from neocloud.models.usage import Bill
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Node, Replica, RequestUsage, Workspace
from neocloud.server.metering import ledger as ledger_mod
from neocloud.server.metering import recovery, tokens
from neocloud.server.metering.ledger import (
    PATH_CHARS,
    LedgerState,
    RequestLedger,
    row_values,
    stored_path,
)
from neocloud.server.metering.tokens import UsageBuffer
from tests.conftest import LiveServer, free_port
from tests.server.helpers import Cloud
from tests.server.usage_helpers import billed_tokens


class StubReplica:
    """A replica on a real port: ``/v1/embeddings`` (4 prompt tokens, 400 for the input
    ``"bad"``), ``/fail`` (500), ``/stream`` (an event stream: 3 + 6 tokens), and
    ``GET /usage?id=`` from :attr:`counts`."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, Any]] = {}
        self.hits: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive, 1 << 20)
        path = scope["path"]
        self.hits.append(path)
        status, out = 200, {}
        if path == "/usage":
            q = parse_qs(scope["query_string"].decode())
            found = self.counts.get(q.get("id", [""])[0])
            status, out = (200, found) if found is not None else (404, {"error": "no"})
        elif path == "/v1/embeddings":
            req = json.loads(body)
            if req["input"] == "bad":
                status, out = 400, {"error": {"message": "bad input"}}
            else:
                out = {"object": "list", "data": [{"embedding": [0.0], "index": 0}],
                       "usage": {"prompt_tokens": 4, "total_tokens": 4}}
        elif path == "/fail":
            status, out = 500, {"error": {"message": "replica failed"}}
        elif path == "/stream":  # an event stream whose last event carries the usage
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for event in (b'data: {"text": "a"}\n\n',
                          b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 6}}\n\n',
                          b"data: [DONE]\n\n"):
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await send_json(send, status, json.dumps(out).encode())


@pytest.fixture
def replica() -> Iterator[tuple[StubReplica, int]]:
    stub = StubReplica()
    srv = LiveServer(stub, free_port()).start()
    try:
        yield stub, srv.port
    finally:
        srv.stop()


def _serve(cloud: Cloud, port: int, name: str = "emb") -> tuple[str, str, str]:
    """A deployment ``name`` whose one ready replica is the stub on ``port``; returns
    ``(workspace id, deployment id, replica id)``."""
    r = cloud.api("POST", "/deployments", json={"name": name, "service": "embeddings",
                                                 "shape": "cpu.small", "replicas": 0})
    assert r.status_code == 201, r.text
    dep = r.json()["id"]
    db = cloud.app.state.db
    with db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
        node = s.scalars(select(Node).where(Node.name == "stub-node")).first()
        if node is None:
            node = Node(name="stub-node", backend="local", address="127.0.0.1",
                        cpu_milli=8000, memory_mib=16384)
            s.add(node)
            s.flush()
        rep = Replica(deployment_id=dep, workspace_id=ws, generation=1, status="ready",
                      node_id=node.id, port=port)
        s.add(rep)
        s.flush()
        rep_id = rep.id
    cloud.app.state.routes.refresh()
    return ws, dep, rep_id


def _ledger(db: Database) -> list[RequestUsage]:
    with db.session() as s:
        rows = list(s.scalars(select(RequestUsage).order_by(RequestUsage.started_at)))
        s.expunge_all()
    return rows


def test_an_answered_request_is_stored_before_its_answer_and_billed_once_after_a_kill(
        cloud: Cloud, replica: tuple[StubReplica, int]) -> None:
    _stub, port = replica
    _ws, dep, rep_id = _serve(cloud, port)
    db = cloud.app.state.db
    r = cloud.client.post("/v1/embeddings", headers=cloud.h(),
                          json={"model": "emb", "input": "a cat"})
    assert r.status_code == 200, r.text
    # Answered: the request is in the database now, whatever happens to this process.
    rows = _ledger(db)
    assert [(x.state, x.status, x.prompt_tokens, x.replica_id) for x in rows] == [
        ("closed", 200, 4, rep_id)]
    # The process is killed before its flush: the next control plane bills the row...
    successor = UsageBuffer(db)
    assert successor.flush() == 1
    assert billed_tokens(db, dep) == (4, 0, 1, 0)
    # ... once: neither it nor the dead one's flush (had it run) bills it again.
    assert successor.flush() == 0
    assert cloud.app.state.usage.flush() == 0
    assert billed_tokens(db, dep) == (4, 0, 1, 0) and _ledger(db) == []


def test_a_relayed_stream_is_stored_with_its_usage_before_it_ends(
        cloud: Cloud, replica: tuple[StubReplica, int]) -> None:
    _stub, port = replica
    _ws, dep, _rep = _serve(cloud, port)
    with cloud.client.stream("POST", "/endpoints/emb/stream", headers=cloud.h(),
                             json={}) as r:
        assert r.status_code == 200
        body = b"".join(r.iter_bytes())
    assert body.endswith(b"data: [DONE]\n\n")
    rows = _ledger(cloud.app.state.db)
    assert [(x.state, x.status, x.prompt_tokens, x.completion_tokens) for x in rows] == [
        ("closed", 200, 3, 6)]
    assert UsageBuffer(cloud.app.state.db).flush() == 1
    assert billed_tokens(cloud.app.state.db, dep) == (3, 6, 1, 0)


def test_failed_requests_are_billed_apart_from_served_ones(
        cloud: Cloud, replica: tuple[StubReplica, int]) -> None:
    _stub, port = replica
    _ws, dep, _rep = _serve(cloud, port)
    h = cloud.h()
    assert cloud.client.post("/v1/embeddings", headers=h,
                             json={"model": "emb", "input": "ok"}).status_code == 200
    assert cloud.client.post("/v1/embeddings", headers=h,
                             json={"model": "emb", "input": "bad"}).status_code == 400
    assert cloud.client.post("/endpoints/emb/fail", headers=h, json={}).status_code == 500
    cloud.app.state.usage.flush()
    # before: requests == 3 (the 400 and the 500 counted as served)
    assert billed_tokens(cloud.app.state.db, dep) == (4, 0, 1, 2)
    r = cloud.api("GET", "/usage")
    assert r.status_code == 200, r.text
    [line] = [ln for ln in Bill.model_validate(r.json()).lines if ln.kind == "tokens"]
    # before: the API answer had no failed_requests
    assert (line.name, line.requests, line.failed_requests) == ("emb", 1, 2)
    row = bill_row(line)
    assert (row[COLUMNS.index("REQUESTS")], row[COLUMNS.index("FAILED")]) == (1, 2)


def test_a_request_the_ledger_cannot_take_is_refused_and_not_forwarded(
        cloud: Cloud, replica: tuple[StubReplica, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    stub, port = replica
    _serve(cloud, port)

    writes: list[LedgerState] = []

    async def down(_rec: RequestRecord, state: LedgerState, **_k: Any) -> None:
        writes.append(state)
        raise ConnectionError("database down")

    monkeypatch.setattr(cloud.app.state.usage.ledger, "write", down)
    r = cloud.client.post("/v1/embeddings", headers=cloud.h(),
                          json={"model": "emb", "input": "a cat"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "usage_unavailable"
    assert "/v1/embeddings" not in stub.hits
    time.sleep(0.3)  # the end of a request is stored off its path
    # before: the end of the refused request was written too (to a row that is not
    # there), and kept to be tried again at every touch while the database was down
    assert writes == [LedgerState.open]


def _row(db: Database, rid: str, dep: str, ws: str, state: LedgerState, *,
         owner: str = "dead-gateway", replica_id: str | None = None, status: int = 0,
         tokens: tuple[int, int] = (0, 0), seen_at: float | None = None) -> None:
    rec = RequestRecord(workspace_id=ws, token_id="tok", deployment_id=dep,
                        replica_id=replica_id, path="/v1/chat/completions", status=status,
                        latency_s=0.5, prompt_tokens=tokens[0], completion_tokens=tokens[1],
                        started_at=time.time() - 10, request_id=rid)
    values = row_values(rec, state, owner, time.time() - 5 if seen_at is None else seen_at)
    with db.session() as s:
        s.add(RequestUsage(**values))


def test_requests_a_dead_gateway_left_unfinished_are_counted_from_the_replica_once(
        cloud: Cloud, replica: tuple[StubReplica, int]) -> None:
    stub, port = replica
    ws, dep, rep_id = _serve(cloud, port)
    _ws, lonely, _r = _serve(cloud, free_port(), name="lonely")  # its replica is gone
    db = cloud.app.state.db
    stub.counts["cut"] = {"prompt_tokens": 7, "completion_tokens": 11, "finished": True}
    stub.counts["late"] = {"prompt_tokens": 2, "completion_tokens": 9, "finished": True}
    stub.counts["running"] = {"prompt_tokens": 3, "completion_tokens": 1, "finished": False}
    _row(db, "cut", dep, ws, LedgerState.open)  # a stream cut by the kill
    _row(db, "never", dep, ws, LedgerState.open)  # the replica never saw it
    _row(db, "late", dep, ws, LedgerState.counting, replica_id=rep_id, status=200,
         tokens=(2, 0))  # answered; the replica's count had not come back
    _row(db, "running", dep, ws, LedgerState.open)  # still generating on the replica
    _row(db, "unreachable", lonely, ws, LedgerState.open)
    # a live gateway's, touched all along (a touch an hour ahead: the test may take more
    # than stale_s on a loaded machine, and an untouched row would then be an orphan)
    _row(db, "alive", dep, ws, LedgerState.open, seen_at=time.time() + 3600)
    usage = UsageBuffer(db, stale_s=1.0)
    assert usage.flush() == 3
    # cut: the replica's count, a failed request; never: nothing, failed; late: the
    # replica's count, served
    assert billed_tokens(db, dep) == (7 + 2, 11 + 9, 1, 2)
    assert sorted(r.id for r in _ledger(db)) == ["alive", "running", "unreachable"]
    assert usage.flush() == 0 and billed_tokens(db, dep) == (9, 20, 1, 2)  # counted once
    stub.counts["running"]["finished"] = True
    assert usage.flush() == 1
    assert billed_tokens(db, dep) == (12, 21, 1, 3)
    # a row whose replica cannot be asked is closed as is once the wait is over
    assert UsageBuffer(db, stale_s=1.0, give_up_s=0.0).flush() == 1
    assert billed_tokens(db, lonely) == (0, 0, 0, 1)
    assert [r.id for r in _ledger(db)] == ["alive"]  # its gateway still touches it


def test_recovery_by_two_flushes_at_once_closes_each_row_once(
        cloud: Cloud, replica: tuple[StubReplica, int]) -> None:
    stub, port = replica
    ws, dep, _rep = _serve(cloud, port)
    db = cloud.app.state.db
    stub.counts["cut"] = {"prompt_tokens": 5, "completion_tokens": 5, "finished": True}
    _row(db, "cut", dep, ws, LedgerState.open)
    first = UsageBuffer(db, stale_s=1.0)
    calls: list[str] = []

    def ask_then_race(url: str, meter_id: str) -> recovery.Count | recovery.Unknown | None:
        calls.append(meter_id)
        if len(calls) == 1:  # another copy recovers and bills the row meanwhile
            assert UsageBuffer(db, stale_s=1.0).flush() == 1
        return recovery.ask_replica(url, meter_id)

    first.ask = ask_then_race
    assert first.flush() == 0
    assert billed_tokens(db, dep) == (5, 5, 0, 1) and _ledger(db) == []


def test_two_flushes_at_once_bill_each_closed_row_once(
        cloud: Cloud, replica: tuple[StubReplica, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _stub, port = replica
    ws, dep, rep_id = _serve(cloud, port)
    db = cloud.app.state.db
    _row(db, "done", dep, ws, LedgerState.closed, replica_id=rep_id, status=200,
         tokens=(5, 1))
    real = tokens.write_tokens
    raced: list[int] = []

    def other_copy_first(s: Any, batch: list[RequestRecord], now: Any) -> Any:
        if not raced:  # another control plane bills the same rows meanwhile
            monkeypatch.setattr(tokens, "write_tokens", real)
            raced.append(tokens.bill_closed(db, now))
        return real(s, batch, now)

    monkeypatch.setattr(tokens, "write_tokens", other_copy_first)
    with pytest.raises(Exception):  # noqa: B017  # BilledTwice, or SQLite's stale snapshot
        tokens.bill_closed(db, datetime.now(UTC))
    assert raced == [1]
    assert billed_tokens(db, dep) == (5, 1, 1, 0) and _ledger(db) == []


@pytest.fixture
def buffer(db_url: str) -> Iterator[UsageBuffer]:
    """A usage sink of its own on the test's database (its ledger touches every 5 s)."""
    db = Database(db_url)
    usage = UsageBuffer(db)
    try:
        yield usage
    finally:
        usage.close()
        db.dispose()


@pytest.fixture
def ledger(buffer: UsageBuffer) -> RequestLedger:
    """The request ledger of :func:`buffer`."""
    return buffer.ledger


def _rec(rid: str, path: str = "/v1/x", started_at: float | None = None) -> RequestRecord:
    return RequestRecord(workspace_id="ws", token_id="t", deployment_id="d", replica_id=None,
                         path=path, status=0, latency_s=0.0, prompt_tokens=0,
                         completion_tokens=0,
                         started_at=time.time() if started_at is None else started_at,
                         request_id=rid)


def _states(db: Database) -> dict[str, str]:
    with db.session() as s:
        return dict(s.execute(select(RequestUsage.id, RequestUsage.state)).all())


def test_group_commit_stores_every_concurrent_write(ledger: RequestLedger) -> None:
    recs = [_rec(f"r{i}", started_at=float(i)) for i in range(200)]

    async def many() -> None:
        await asyncio.gather(*(ledger.write(r, LedgerState.open, insert_row=True)
                               for r in recs))
        await asyncio.gather(*(ledger.write(r, LedgerState.closed, insert_row=False)
                               for r in recs[:50]))

    asyncio.run(many())
    with ledger.db.session() as s:
        states = dict(s.execute(select(RequestUsage.state, func.count())
                                .group_by(RequestUsage.state)).all())
    assert states == {"open": 150, "closed": 50}


def _gated(ledger: RequestLedger, monkeypatch: pytest.MonkeyPatch,
           hold_s: float = 10.0) -> threading.Event:
    """Hold the ledger's writer in its next commit until the event is set (at most
    ``hold_s`` seconds), so what is submitted meanwhile is committed as one batch."""
    gate = threading.Event()
    real = ledger._commit

    def held(batch: list[Any]) -> None:
        gate.wait(hold_s)
        real(batch)

    monkeypatch.setattr(ledger, "_commit", held)
    return gate


def test_one_bad_write_of_a_batch_fails_only_its_own_request(
        ledger: RequestLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.submit(_rec("dup"), LedgerState.open, insert_row=True).result(10)
    gate = _gated(ledger, monkeypatch)
    first = ledger.submit(_rec("first"), LedgerState.open, insert_row=True)
    rest = {rid: ledger.submit(_rec(rid), LedgerState.open, insert_row=True)
            for rid in ("a", "dup", "b", "c")}  # one batch; "dup" is stored already
    gate.set()
    first.result(10)
    # before: the duplicate failed the whole batch, and a, b and c with it
    for rid in ("a", "b", "c"):
        rest[rid].result(10)
    with pytest.raises(Exception):  # noqa: B017  # the driver's integrity error
        rest["dup"].result(10)
    assert _states(ledger.db) == dict.fromkeys(("dup", "first", "a", "b", "c"), "open")


def test_a_path_with_a_nul_is_stored_and_fails_no_other_write(
        ledger: RequestLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _gated(ledger, monkeypatch)
    first = ledger.submit(_rec("first"), LedgerState.open, insert_row=True)
    nul = ledger.submit(_rec("nul", "/endpoints/e/a\x00b"), LedgerState.open,
                        insert_row=True)  # a client's /endpoints/e/a%00b
    other = ledger.submit(_rec("other"), LedgerState.open, insert_row=True)
    gate.set()
    # before, on PostgreSQL (no NUL in text): the batch failed, the other write too
    for f in (first, nul, other):
        f.result(10)
    with ledger.db.session() as s:
        path = s.scalars(select(RequestUsage.path).where(RequestUsage.id == "nul")).one()
    assert path == "/endpoints/e/a\ufffdb"
    assert stored_path("/" + "x" * 600) == "/" + "x" * (PATH_CHARS - 1)


def _end_write_fails_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the ledger's first batch with an update fail (a database down for a moment);
    the list gets that batch's size."""
    real = ledger_mod._execute
    failures: list[int] = []

    def down_once(conn: Any, batch: list[Any]) -> None:
        if any(not w.insert for w in batch) and not failures:
            failures.append(len(batch))
            raise ConnectionError("database down for a moment")
        real(conn, batch)

    monkeypatch.setattr(ledger_mod, "_execute", down_once)
    return failures


def _open_then_fail_to_end(usage: UsageBuffer) -> None:
    rec = _rec("r1")
    asyncio.run(usage.opened(rec))
    with pytest.raises(ConnectionError):
        asyncio.run(usage.ended(replace(rec, status=200, prompt_tokens=3, latency_s=0.1),
                                final=True))


def test_a_failed_end_write_is_tried_again_at_the_next_touch(
        buffer: UsageBuffer, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer.ledger.touch_s = 0.05
    failures = _end_write_fails_once(monkeypatch)
    _open_then_fail_to_end(buffer)
    # before: the row stayed open, touched by its live owner, so never recovered
    deadline = time.monotonic() + 10
    while _states(buffer.db).get("r1") != "closed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures == [1] and _states(buffer.db) == {"r1": "closed"}
    assert buffer.flush() == 1
    assert billed_tokens(buffer.db, "d") == (3, 0, 1, 0)


def test_closing_the_ledger_tries_its_failed_end_writes_a_last_time(
        buffer: UsageBuffer, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = _end_write_fails_once(monkeypatch)  # no touch comes in this test
    _open_then_fail_to_end(buffer)
    buffer.close()  # a clean shutdown
    # before: the retried write was dropped, the row left open for a successor
    assert failures == [1] and _states(buffer.db) == {"r1": "closed"}


def test_neocloud_usage_prints_failed_requests_apart(cli_db: Any) -> None:
    assert cli_db("deploy", "emb", "-s", "embeddings", "--no-wait").exit_code == 0
    usage: UsageBuffer = cli_db.app.state.usage
    with cli_db.app.state.db.session() as s:
        dep, ws = s.execute(select(Deployment.id, Deployment.workspace_id)
                            .where(Deployment.name == "emb")).one()
    for i, status in enumerate((200, 200, 400, 499, 500)):
        usage.record(RequestRecord(
            workspace_id=ws, token_id="tok", deployment_id=dep, replica_id=None,
            path="/v1/embeddings", status=status, latency_s=0.1, prompt_tokens=2,
            completion_tokens=0, started_at=time.time(), request_id=f"cli-{i}"))
    assert usage.flush() == 5
    out = cli_db("usage")
    assert out.exit_code == 0, out.stderr
    header = next(ln.split() for ln in out.stdout.splitlines() if ln.startswith("KIND"))
    row = next(ln.split() for ln in out.stdout.splitlines() if ln.startswith("tokens"))
    assert header[5:8] == ["REQUESTS", "FAILED", "TOKENS"]
    # before: one REQUESTS column, 5 (every request counted as served)
    assert row[:2] == ["tokens", "emb"] and row[-4:-1] == ["2", "3", "10"]
