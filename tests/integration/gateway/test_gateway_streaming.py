"""Streams pass through unbuffered, and a client that leaves closes the replica request."""

from __future__ import annotations

import json
from typing import Any

import httpx


def test_stream_arrives_before_the_replica_finishes(cloud: Any) -> None:
    replica = cloud.replicas[0]  # "chat" routes to r1 only
    replica.gate.clear()
    with httpx.Client(base_url=cloud.url, timeout=15) as http, http.stream(
        "GET", "/endpoints/chat/gated", headers=cloud.auth()
    ) as resp:
        assert resp.status_code == 200
        pieces = resp.iter_raw()
        first = next(pieces)
        # The replica is now blocked until the gate opens: had the gateway buffered the
        # response, the first piece could only arrive after the gate timed out.
        assert first == b"first\n"
        stats = cloud.gateway.deployment_stats("d-chat")
        assert stats.in_flight == 1 and stats.replica_in_flight == {"rep-r1": 1}
        replica.gate.set()
        rest = b"".join(pieces)
    assert rest == b"second\n"


def test_client_disconnect_mid_stream_closes_the_replica_request(cloud: Any) -> None:
    replica = cloud.replicas[0]
    replica.disconnected.clear()
    with httpx.Client(base_url=cloud.url, timeout=15) as http, http.stream(
        "GET", "/endpoints/chat/endless", headers=cloud.auth()
    ) as resp:
        assert resp.status_code == 200
        assert next(resp.iter_raw()).startswith(b"data: tick 0")
    # Leaving the block closed the client connection; the replica must observe it.
    assert replica.disconnected.wait(5)
    rec = cloud.sink.wait_for(lambda r: r.deployment_id == "d-chat" and r.status == 499)
    assert rec.replica_id == "rep-r1"


def test_client_disconnect_before_response_closes_the_replica_request(cloud: Any) -> None:
    replica = cloud.replicas[0]
    replica.disconnected.clear()
    with httpx.Client(base_url=cloud.url, timeout=httpx.Timeout(10, read=0.3)) as http:
        try:
            http.post("/endpoints/chat/hang", headers=cloud.auth(), content=b"x")
        except httpx.ReadTimeout:
            pass
        else:
            raise AssertionError("the replica answered a request it should still be holding")
    assert replica.disconnected.wait(5)


def test_event_stream_cut_by_the_replica_ends_with_an_error_event(cloud: Any) -> None:
    """A replica that dies mid-event: the client gets the events so far, the open event
    closed, a final ``data: {"error": ...}`` event and a clean end (no protocol error)."""
    with httpx.Client(base_url=cloud.url, timeout=15) as http, http.stream(
        "GET", "/endpoints/chat/sse-cut", headers=cloud.auth()
    ) as resp:
        assert resp.status_code == 200
        body = resp.read()  # raises httpx.RemoteProtocolError on a bare reset
    events = [e for e in body.decode().split("\n\n") if e]
    assert events[0] == "data: one" and events[1] == "data: tw"
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "replica_stream_cut" and last["error"]["type"]
    assert len(events) == 3
    rec = cloud.sink.wait_for(lambda r: r.deployment_id == "d-chat" and r.status == 502)
    assert rec.replica_id == "rep-r1"
