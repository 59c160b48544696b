"""Standalone gateway copies: a static route table and token.

``python -m neocloud.gateway --port 8080 --route NAME=http://127.0.0.1:9001[,http://...]``
serves the gateway routes plus ``GET /metrics`` (Prometheus, no token) and ``GET /health``.
Without ``--token`` a random token is generated and printed once on standard output.
The HTTP server is :mod:`neocloud.gateway.server` on uvloop (``--server uvicorn`` for
uvicorn with httptools); ``--workers N`` runs N processes sharing the port
(``SO_REUSEPORT``), the kernel spreading connections across them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Any

from neocloud.asgi import Receive, Scope, Send
from neocloud.gateway.app import Gateway, create_gateway
from neocloud.gateway.settings import GatewaySettings
from neocloud.gateway.static import StaticAuthenticator, StaticRouteTable, parse_route_spec
from neocloud.gateway.types import Principal

ENV_CONFIG = "NEOCLOUD_GATEWAY_RUNNER"


class RunnerApp:
    """The gateway plus ``/metrics`` and ``/health``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == "/metrics":
                body = self.gateway.metrics_text()
                ctype = b"text/plain; version=0.0.4; charset=utf-8"
                await _send_plain(send, body, ctype)
                return
            if path == "/health":
                await _send_plain(send, b'{"status":"ok"}', b"application/json")
                return
        await self.gateway(scope, receive, send)


async def _send_plain(send: Send, body: bytes, ctype: bytes) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(config: dict[str, Any]) -> RunnerApp:
    """The runner app from ``{"routes": [spec...], "token": str, "settings": {...}}``."""
    routes = StaticRouteTable(parse_route_spec(spec) for spec in config["routes"])
    principal = Principal(token_id="static", workspace_id="default", role="admin")
    auth = StaticAuthenticator({config["token"]: principal})
    settings = GatewaySettings(**config.get("settings", {}))
    return RunnerApp(create_gateway(routes, auth, None, settings))


def app_from_env() -> RunnerApp:
    """Factory for uvicorn workers: the config comes as JSON in ``NEOCLOUD_GATEWAY_RUNNER``."""
    return build_app(json.loads(os.environ[ENV_CONFIG]))


def _run_uvicorn(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "neocloud.gateway.runner:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level="warning",
    )


def _run_worker(config: dict[str, Any], host: str, port: int, reuse_port: bool) -> None:
    from neocloud.gateway.server import serve

    coro = serve(build_app(config), host, port, reuse_port=reuse_port)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard] on Linux
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _run_workers(config: dict[str, Any], host: str, port: int, workers: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run_worker, args=(config, host, port, True), daemon=True)
             for _ in range(workers)]
    for p in procs:
        p.start()

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neocloud.gateway",
        description="Run a neocloud gateway with a static route table and one token.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--route", action="append", default=[], metavar="NAME=URL[,URL...]",
        help="a deployment name and its replica base URLs (repeatable)",
    )
    parser.add_argument("--token", help="the accepted bearer token (default: generate one)")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--server", choices=["neocloud", "uvicorn"], default="neocloud",
                        help="HTTP server implementation (default: neocloud)")
    parser.add_argument("--balancer", default="p2c", choices=["p2c", "least", "round_robin",
                                                                "random"])
    parser.add_argument("--rate-limit", type=float, default=None,
                        help="requests per second per token (default: off)")
    parser.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    args = parser.parse_args(argv)
    try:
        for spec in args.route:
            parse_route_spec(spec)
    except ValueError as exc:
        parser.error(str(exc))
    token = args.token
    if not token:
        token = "nc-" + secrets.token_urlsafe(24)
        print(f"gateway token: {token}", flush=True)
    settings: dict[str, Any] = {"balancer": args.balancer, "max_body_bytes": args.max_body_bytes}
    if args.rate_limit is not None:
        settings["rate_limit_per_s"] = args.rate_limit
    config = {"routes": args.route, "token": token, "settings": settings}
    os.environ[ENV_CONFIG] = json.dumps(config)

    if args.server == "uvicorn":
        _run_uvicorn(args.host, args.port, args.workers)
    elif args.workers == 1:
        _run_worker(config, args.host, args.port, False)
    else:
        _run_workers(config, args.host, args.port, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
