"""Standalone gateway copies: a static route table and token.

``python -m neocloud.gateway --port 8080 --route NAME=http://127.0.0.1:9001[,http://...]``
serves the gateway routes plus ``GET /metrics`` (Prometheus) and ``GET /health`` (no token).
Without ``--token`` a random token is generated and printed once on standard output.
``/metrics`` needs that token, as the control plane's needs an operator's: its series are
labelled by workspace and deployment; ``--public-metrics`` (or ``NEOCLOUD_PUBLIC_METRICS=1``,
the control plane's setting) serves it to anyone.
The HTTP server is :mod:`neocloud.gateway.server` on uvloop (``--server uvicorn`` for
uvicorn with httptools); ``--workers N`` runs N processes sharing the port
(``SO_REUSEPORT``), the kernel spreading connections across them.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import multiprocessing
import os
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from neocloud.asgi import Receive, Scope, Send, send_error
from neocloud.errors import Unauthenticated
from neocloud.gateway.app import Gateway, create_gateway
from neocloud.gateway.settings import GatewaySettings
from neocloud.gateway.static import StaticAuthenticator, StaticRouteTable, parse_route_spec
from neocloud.gateway.types import Principal

ENV_CONFIG = "NEOCLOUD_GATEWAY_RUNNER"
ENV_PUBLIC_METRICS = "NEOCLOUD_PUBLIC_METRICS"
"""The control plane's setting that serves ``/metrics`` without a token; read here too."""

_METRICS_HINT = ("send this gateway's token ('Authorization: Bearer <token>'), or start it "
                 f"with --public-metrics ({ENV_PUBLIC_METRICS}=1)")


class RunnerApp:
    """The gateway plus ``/metrics`` and ``/health``.

    Args:
        gateway: the gateway every other request goes to.
        metrics_token: the bearer token ``/metrics`` asks for (the gateway's own); ``None``
            serves it to anyone.
    """

    def __init__(self, gateway: Gateway, metrics_token: str | None = None) -> None:
        self.gateway = gateway
        self._metrics_token = None if metrics_token is None else metrics_token.encode()

    def _check_metrics_token(self, scope: Scope) -> None:
        """Let a ``/metrics`` request through only with the token (or when it is public).

        Raises:
            Unauthenticated: no bearer token (``missing_api_key``) or another one (401).
        """
        if self._metrics_token is None:
            return
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        if not token:
            raise Unauthenticated(f"/metrics needs a token: {_METRICS_HINT}",
                                  code="missing_api_key")
        if not hmac.compare_digest(token, self._metrics_token):
            raise Unauthenticated(f"invalid API token for /metrics: {_METRICS_HINT}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == "/metrics":
                try:
                    self._check_metrics_token(scope)
                except Unauthenticated as err:
                    await send_error(send, err, [(b"www-authenticate", b"Bearer")])
                    return
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
    """The runner app from ``{"routes": [spec...], "token": str, "settings": {...},
    "public_metrics": bool}``: ``/metrics`` needs ``token`` unless ``public_metrics``."""
    routes = StaticRouteTable(parse_route_spec(spec) for spec in config["routes"])
    principal = Principal(token_id="static", workspace_id="default", role="admin")
    auth = StaticAuthenticator({config["token"]: principal})
    settings = GatewaySettings(**config.get("settings", {}))
    metrics_token = None if config.get("public_metrics") else config["token"]
    return RunnerApp(create_gateway(routes, auth, None, settings), metrics_token)


def public_metrics_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """``NEOCLOUD_PUBLIC_METRICS`` read as the control plane reads it (a pydantic bool:
    ``1``/``0``, ``true``/``false``, ``yes``/``no``, ``on``/``off``); unset or empty is
    ``False``.

    Raises:
        ValueError: the variable is set to anything else.
    """
    value = (os.environ if environ is None else environ).get(ENV_PUBLIC_METRICS)
    if not value:
        return False
    try:
        return TypeAdapter(bool).validate_python(value)
    except ValidationError:
        raise ValueError(f"{ENV_PUBLIC_METRICS}={value!r} is not a boolean (use 1 or 0)"
                         ) from None


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
    parser.add_argument("--public-metrics", action="store_true",
                        help="serve /metrics without the token (its series name the "
                             f"deployments; also {ENV_PUBLIC_METRICS}=1)")
    args = parser.parse_args(argv)
    try:
        for spec in args.route:
            parse_route_spec(spec)
        public_metrics = args.public_metrics or public_metrics_from_env()
    except ValueError as exc:
        parser.error(str(exc))
    token = args.token
    if not token:
        token = "nc-" + secrets.token_urlsafe(24)
        print(f"gateway token: {token}", flush=True)
    settings: dict[str, Any] = {"balancer": args.balancer, "max_body_bytes": args.max_body_bytes}
    if args.rate_limit is not None:
        settings["rate_limit_per_s"] = args.rate_limit
    config = {"routes": args.route, "token": token, "settings": settings,
              "public_metrics": public_metrics}
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
