"""Per-token rate limiting and holding requests while a scaled-to-zero deployment wakes."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import httpx

from neocloud.gateway import GatewaySettings, Route, Upstream
from neocloud.gateway.static import StaticRouteTable


def test_rate_limit_is_per_token_429(cloud: Any, make_gateway: Any) -> None:
    routes = StaticRouteTable([
        Route("d-echo", "ws-a", "echo", (Upstream("r", cloud.replica_servers[0].url),)),
        Route("d-echo-b", "ws-b", "echo", (Upstream("r", cloud.replica_servers[0].url),)),
    ])
    # a refill so slow that no token comes back during the test: burst 3, then 429
    _, server = make_gateway(routes, settings=GatewaySettings(rate_limit_per_s=0.001,
                                                              rate_limit_burst=3))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        statuses = [http.get("/endpoints/echo/x", headers=cloud.auth()).status_code
                    for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        resp = http.get("/endpoints/echo/x", headers=cloud.auth())
        err = resp.json()["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "rate_limited"
        assert int(resp.headers["retry-after"]) >= 1
        # another token has its own bucket
        assert http.get("/endpoints/echo/x", headers=cloud.auth(cloud.token_b)).status_code == 200


def test_scaled_to_zero_deployment_is_woken_and_requests_held(
    cloud: Any, make_gateway: Any, list_sink: Any
) -> None:
    replica = Upstream("rep-late", cloud.replica_servers[1].url)
    cold = Route("d-sleepy", "ws-a", "sleepy", (), can_wake=True)

    async def on_wake(route: Route) -> None:
        # the "control plane" starts a replica; it becomes ready a little later
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, routes.set_route, Route("d-sleepy", "ws-a", "sleepy", (replica,)))

    routes = StaticRouteTable([cold], on_wake=on_wake)
    gw, server = make_gateway(routes, list_sink, GatewaySettings(wake_poll_s=0.05))

    def call(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            return http.get("/endpoints/sleepy/who", headers=cloud.auth())

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(call, range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert {r.json()["replica"] for r in responses} == {"r2"}
    assert routes.wake_calls == 1  # concurrent held requests share one wake-up
    assert gw.deployment_stats("d-sleepy").held == 0


def test_wake_that_never_finishes_is_503(cloud: Any, make_gateway: Any) -> None:
    routes = StaticRouteTable([Route("d-stuck", "ws-a", "stuck", (), can_wake=True)])
    _, server = make_gateway(routes, settings=GatewaySettings(wake_timeout_s=0.3,
                                                              wake_poll_s=0.05))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        resp = http.post("/endpoints/stuck/x", headers=cloud.auth(), content=b"{}")
    assert resp.status_code == 503
    err = resp.json()["error"]
    assert err["code"] == "deployment_starting" and "stuck" in err["message"]
    assert routes.wake_calls == 1
