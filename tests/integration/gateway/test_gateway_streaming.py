"""Streams pass through unbuffered, and a client that leaves closes the replica request."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from tests.integration.gateway.conftest import TOKEN_A

from neocloud.gateway import Route, Upstream
from neocloud.gateway.static import StaticRouteTable


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


def test_client_that_closes_after_done_keeps_the_stream_status(
    serve_app: Any, make_gateway: Any, list_sink: Any,
) -> None:
    """Before: OpenAI's client closes the connection as soon as it has read
    ``data: [DONE]``; when the replica's end of body came later, the finished stream was
    recorded as 499 (client gone) instead of 200."""

    async def lingering(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "more_body": True,
                    "body": b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": True})
        await asyncio.sleep(1.0)  # the end of the body comes late
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    replica = serve_app(lingering)
    routes = StaticRouteTable([Route("d-linger", "ws-a", "linger",
                                     (Upstream("rep-l", replica.url),))])
    _, gateway = make_gateway(routes, list_sink)
    with httpx.Client(base_url=gateway.url, timeout=15) as http, http.stream(
        "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {TOKEN_A}"},
        json={"model": "linger", "messages": [{"role": "user", "content": "x"}],
              "stream": True},
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line == "data: [DONE]":
                break  # and close, as the OpenAI client does
    rec = list_sink.wait_for(lambda r: r.deployment_id == "d-linger")
    assert rec.status == 200
