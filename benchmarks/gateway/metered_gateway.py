"""A gateway configured as inside the control plane, for benchmarks: metered.

Unlike the standalone copy (``python -m neocloud.gateway``, no usage sink), this one has
a usage sink that keeps the records in memory (the control plane's sink,
:class:`neocloud.server.metering.tokens.UsageBuffer`, also writes each request to the
database on its path: ``benchmarks/metering/request_path.py`` measures that),
an authenticator answered from a worker thread as the database one is (its answers cached
by the gateway for ``--auth-ttl-s``, each look-up taking ``--auth-delay-ms``), the control
plane's gateway settings (no route cache: the route table is
in memory), and uvicorn as the HTTP server (``--server neocloud`` for the gateway's own).
So every streamed chat request is scanned for its usage object and, when it carries none,
the replica is asked for its count after the response.

``GET /bench/usage`` answers ``{"records", "completion_tokens", "statuses",
"token_lookups"}`` over every
request record taken so far (to check that each request was metered once).

Run: python benchmarks/gateway/metered_gateway.py --port P --route echo=http://127.0.0.1:Q
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from neocloud.asgi import Receive, Scope, Send, send_json
from neocloud.gateway import GatewaySettings, Principal, create_gateway
from neocloud.gateway.static import StaticRouteTable, parse_route_spec
from neocloud.gateway.types import RequestRecord

TOKEN = "bench-token"


class MemorySink:
    """A usage sink that keeps every record in memory (the control plane's sink
    without its database writes; ``benchmarks/metering/`` measures those)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def record(self, rec: RequestRecord) -> None:
        self.records.append(rec)


class ThreadAuthenticator:
    """Looks tokens up on a worker thread, as the database authenticator does, taking
    ``delay_s`` there (a database round trip)."""

    def __init__(self, tokens: dict[str, Principal], delay_s: float = 0.0) -> None:
        self._tokens = tokens
        self._delay_s = delay_s
        self.lookups = 0

    def _lookup(self, token: str) -> Principal | None:
        self.lookups += 1
        if self._delay_s:
            time.sleep(self._delay_s)
        return self._tokens.get(token)

    async def authenticate(self, token: str) -> Principal | None:
        return await asyncio.to_thread(self._lookup, token)


def build(routes: list[str], auth_delay_s: float = 0.0, auth_ttl_s: float = 5.0) -> Any:
    """The ASGI app: the metered gateway plus ``/health`` and ``/bench/usage``."""
    principal = Principal(token_id="bench", workspace_id="default", role="admin")
    usage = MemorySink()  # no database here
    auth = ThreadAuthenticator({TOKEN: principal}, auth_delay_s)
    gateway = create_gateway(
        StaticRouteTable(parse_route_spec(r) for r in routes), auth, usage,
        GatewaySettings(auth_cache_ttl_s=auth_ttl_s, route_cache_ttl_s=0.0),
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/health":
            await send_json(send, 200, b'{"status":"ok"}')
            return
        if scope["type"] == "http" and scope["path"] == "/bench/usage":
            recs = list(usage.records)
            statuses: dict[str, int] = {}
            for r in recs:
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            await send_json(send, 200, json.dumps({
                "records": len(recs), "statuses": statuses, "token_lookups": auth.lookups,
                "completion_tokens": sum(r.completion_tokens for r in recs)}).encode())
            return
        await gateway(scope, receive, send)

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--route", action="append", required=True)
    ap.add_argument("--server", choices=["uvicorn", "neocloud"], default="uvicorn")
    ap.add_argument("--auth-delay-ms", type=float, default=0.0,
                    help="time each token look-up takes (a database round trip)")
    ap.add_argument("--auth-ttl-s", type=float, default=5.0,
                    help="the gateway's token cache TTL (the control plane's default: 5)")
    args = ap.parse_args()
    app = build(args.route, args.auth_delay_ms / 1e3,
                args.auth_ttl_s)
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
        return
    import uvloop

    from neocloud.gateway.server import serve

    uvloop.run(serve(app, args.host, args.port))


if __name__ == "__main__":
    main()
