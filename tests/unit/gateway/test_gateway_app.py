"""The gateway app driven in-process (no sockets): lifespan, errors, wake failures, stats."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from neocloud.errors import QuotaExceeded
from neocloud.gateway import GatewaySettings, Principal, Route, create_gateway
from neocloud.gateway.static import StaticAuthenticator, StaticRouteTable
from neocloud.gateway.stats import DeploymentCounters

AUTH = StaticAuthenticator({"tok": Principal("t1", "ws", "viewer")})


async def call(app: Any, method: str, path: str, body: bytes = b"",
               token: str | None = "tok") -> tuple[int, dict[str, str], Any]:
    headers = [(b"content-length", str(len(body)).encode())]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
             "scheme": "http"}
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    await app(scope, receive, send)
    start = sent[0]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, json.loads(payload) if payload else None


def test_lifespan_and_websocket() -> None:
    async def main() -> None:
        gw = create_gateway(StaticRouteTable(), AUTH)
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        out: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return inbox.pop(0)

        async def send(msg: dict[str, Any]) -> None:
            out.append(msg)

        await gw({"type": "lifespan"}, receive, send)
        assert [m["type"] for m in out] == ["lifespan.startup.complete",
                                            "lifespan.shutdown.complete"]
        out.clear()
        await gw({"type": "websocket", "path": "/v1/x"}, receive, send)
        assert out == [{"type": "websocket.close", "code": 1008}]

    asyncio.run(main())


def test_wake_errors_reach_the_held_request_and_are_counted() -> None:
    async def refuse(route: Route) -> None:
        raise QuotaExceeded("workspace quota of 1 GPU is used up")

    async def main() -> None:
        routes = StaticRouteTable([Route("d1", "ws", "cold", (), can_wake=True)], on_wake=refuse)
        gw = create_gateway(routes, AUTH, settings=GatewaySettings(wake_poll_s=0.01))
        status, _, body = await call(gw, "POST", "/v1/embeddings",
                                     b'{"model": "cold", "input": "x"}')
        assert status == 429 and body["error"]["code"] == "quota_exceeded"
        stats = gw.deployment_stats("d1")
        assert stats is not None and stats.requests_total == 1 and stats.in_flight == 0
        assert stats.held == 0 and stats.errors_total == 0
        assert gw.stats().keys() == {"d1"}
        await gw.shutdown()

    asyncio.run(main())


def test_route_table_answers_are_cached_and_invalidated() -> None:
    class Counting(StaticRouteTable):
        resolves = 0

        async def resolve(self, workspace_id: str, name: str) -> Route | None:
            self.resolves += 1
            return await super().resolve(workspace_id, name)

    async def main() -> None:
        routes = Counting([Route("d1", "ws", "m", ())])
        gw = create_gateway(routes, AUTH, settings=GatewaySettings(route_cache_ttl_s=60))
        for _ in range(3):
            status, _, _ = await call(gw, "GET", "/v1/models/m")
            assert status == 200
        assert routes.resolves == 1
        gw.invalidate("ws")
        await call(gw, "GET", "/v1/models/m")
        assert routes.resolves == 2
        gw.invalidate()
        status, hdrs, body = await call(gw, "GET", "/v1/models/m", token="bad")
        assert status == 401 and hdrs["www-authenticate"] == "Bearer"
        gw.invalidate_tokens()

    asyncio.run(main())


def test_route_of_another_workspace_is_never_served() -> None:
    class Leaky(StaticRouteTable):
        async def resolve(self, workspace_id: str, name: str) -> Route | None:
            return Route("d9", "other", name, ())

    async def main() -> None:
        gw = create_gateway(Leaky(), AUTH)
        status, _, body = await call(gw, "POST", "/v1/embeddings", b'{"model": "x", "input": "hi"}')
        assert status == 404 and body["error"]["code"] == "model_not_found"

    asyncio.run(main())


def test_request_rate_window() -> None:
    c = DeploymentCounters("d", "ws", "n", window_s=10)
    for t in (100.0, 100.5, 101.0, 109.9):
        c.begin(t)
        c.end(200, 0.01)
    assert c.rate(109.9) == 0.4  # 4 requests in the last 10 s
    assert c.rate(110.5) == 0.2  # the ones at 100.x left the window
    assert c.rate(200.0) == 0.0
    c.begin(200.0)
    c.end(503, 2.0)
    assert c.errors == 1 and c.by_status == {200: 4, 503: 1}
