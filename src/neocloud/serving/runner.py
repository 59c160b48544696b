"""Run a service as a replica process: uvicorn (httptools parser, uvloop event loop) around
the lean ASGI app of :mod:`neocloud.serving.app`.

SIGTERM / SIGINT: ``/ready`` turns 503 at once, the listening socket closes, in-flight
requests get up to the grace period (``NEOCLOUD_GRACE_PERIOD_S``, default 30 seconds) to
finish, then ``teardown()`` runs and the process exits 0. A failing ``setup()`` makes the
process exit 1. Logs go to stderr.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from types import FrameType
from typing import Any

import uvicorn

from neocloud.serving.app import ServingApp, build_app
from neocloud.serving.loader import BUILTINS

log = logging.getLogger("neocloud.serving")

DEFAULT_GRACE_PERIOD_S = 30.0
_ENV_SERVICE = "NEOCLOUD_SERVE_SERVICE"
_ENV_NAME = "NEOCLOUD_SERVE_NAME"
_ENV_MODEL = "NEOCLOUD_SERVE_MODEL"

_app: ServingApp | None = None
_server: ReplicaServer | None = None
_fatal = False


class ReplicaServer(uvicorn.Server):
    """uvicorn's server that marks the app as draining the moment a signal arrives."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if _app is not None:
            _app.begin_drain()
        super().handle_exit(sig, frame)

    async def serve(self, sockets: Any = None) -> None:
        global _server
        _server = self
        await super().serve(sockets)


def _on_fatal(exc: BaseException) -> None:
    global _fatal
    _fatal = True
    if _server is not None:
        _server.should_exit = True


def app_factory() -> ServingApp:
    """Build the app from ``NEOCLOUD_SERVE_*`` variables (worker processes, reload)."""
    global _app
    model = os.environ.get(_ENV_MODEL) or None
    name = os.environ.get(_ENV_NAME) or None
    _app = build_app(os.environ[_ENV_SERVICE], name=name, model=model, on_fatal=_on_fatal)
    return _app


def _reload_dirs(service: str) -> list[str]:
    mod_part = service.rpartition(":")[0]
    if mod_part.endswith(".py") or "/" in mod_part:
        return [os.path.dirname(os.path.abspath(mod_part))]
    if service in BUILTINS or not mod_part:
        return [os.getcwd()]
    spec = importlib.util.find_spec(mod_part.split(".")[0])
    if spec is not None and spec.origin:
        return [os.path.dirname(spec.origin)]
    return [os.getcwd()]


def run(
    service: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    model: str | None = None,
    workers: int = 1,
    reload: bool = False,
    grace_period_s: float | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``service`` on ``host:port`` until SIGTERM/SIGINT (blocking).

    Args:
        service: ``embeddings``, ``chat``, ``package.module:Class`` or ``file.py:Class``.
        name: served model name (default ``NEOCLOUD_SERVED_MODEL_NAME`` or the service's).
        model: model reference handed to the service (``hf:org/name``, a folder...).
        workers: processes sharing the port (each loads the model once).
        reload: restart when the service's files change (development; one worker).
        grace_period_s: seconds in-flight requests get after SIGTERM (default
            ``NEOCLOUD_GRACE_PERIOD_S`` or 30).

    Raises:
        SystemExit: code 1 when ``setup()`` failed.
        ValueError: the service reference cannot be resolved.
    """
    global _app
    grace = grace_period_s
    if grace is None:
        grace = float(os.environ.get("NEOCLOUD_GRACE_PERIOD_S", DEFAULT_GRACE_PERIOD_S))
    common: dict[str, Any] = dict(
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=grace,
        log_level=log_level,
    )
    if workers > 1 or reload:
        os.environ[_ENV_SERVICE] = service
        os.environ[_ENV_NAME] = name or ""
        os.environ[_ENV_MODEL] = model or ""
        config = uvicorn.Config(
            "neocloud.serving.runner:app_factory",
            factory=True,
            workers=1 if reload else workers,
            reload=reload,
            reload_dirs=_reload_dirs(service) if reload else None,
            **common,
        )
        server = ReplicaServer(config)
        sock = config.bind_socket()
        if reload:
            from uvicorn.supervisors import ChangeReload

            ChangeReload(config, target=server.run, sockets=[sock]).run()
        else:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, target=server.run, sockets=[sock]).run()
        return
    _app = build_app(service, name=name, model=model, on_fatal=_on_fatal)
    server = ReplicaServer(uvicorn.Config(_app, **common))
    server.run()
    if _fatal:
        log.error("setup() failed; exiting")
        sys.exit(1)
