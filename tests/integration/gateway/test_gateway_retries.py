"""Which failed requests the gateway retries on another replica."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from neocloud.gateway import GatewaySettings, Route, Upstream
from neocloud.gateway.static import StaticRouteTable


class _Breaker(socketserver.BaseRequestHandler):
    """Reads the request, then closes the connection without answering."""

    def handle(self) -> None:
        self.request.settimeout(5)
        try:
            self.request.recv(65536)
        except OSError:
            pass
        self.server.hits += 1  # type: ignore[attr-defined]
        self.request.shutdown(socket.SHUT_RDWR)


@pytest.fixture()
def breaker() -> Iterator[Any]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Breaker)
    server.daemon_threads = True
    server.hits = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_retry_only_what_is_safe_to_repeat(cloud: Any, make_gateway: Any, breaker: Any) -> None:
    bad = Upstream("rep-breaker", f"http://127.0.0.1:{breaker.server_address[1]}")
    good = Upstream("rep-good", cloud.replica_servers[0].url)
    routes = StaticRouteTable([
        Route("d-emb", "ws-a", "emb", (bad, good)),
        Route("d-own", "ws-a", "own", (bad, good)),
        Route("d-broken", "ws-a", "broken", (bad,)),
    ])
    _, server = make_gateway(routes, settings=GatewaySettings(max_attempts=3))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        # inference routes compute and change nothing: retried elsewhere, all succeed
        for _ in range(12):
            resp = http.post("/v1/embeddings", headers=cloud.auth(),
                             json={"model": "emb", "input": "x"})
            assert resp.status_code == 200
        # idempotent methods on a deployment's own path: retried too
        for _ in range(6):
            assert http.get("/endpoints/own/who", headers=cloud.auth()).status_code == 200
        hits = breaker.hits
        assert hits > 0  # the breaking replica really was tried
        # a POST to a deployment's own path may have had effects: 502, not repeated
        resp = http.post("/endpoints/broken/charge", headers=cloud.auth(), content=b"{}")
        assert resp.status_code == 502
        assert resp.json()["error"]["type"] == "upstream_error"
        assert breaker.hits == hits + 1
