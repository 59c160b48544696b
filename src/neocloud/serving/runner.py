"""Run a service as a replica process: uvicorn (httptools parser, uvloop event loop) around
the lean ASGI app of :mod:`neocloud.serving.app`.

SIGTERM / SIGINT: ``/ready`` turns 503 at once, the listening socket closes, in-flight
requests get up to the grace period (``NEOCLOUD_GRACE_PERIOD_S``, default 30 seconds) to
finish, then ``teardown()`` runs and the process exits 0. A failing ``setup()`` makes the
process exit 1. Logs go to stderr, without the download and weight-loading progress bars of
Hugging Face libraries (see :func:`disable_progress_bars`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from types import FrameType
from typing import Any

import uvicorn

from neocloud.serving.app import ServingApp, build_app
from neocloud.serving.loader import BUILTINS
from neocloud.serving.settings import ServingSettings

log = logging.getLogger("neocloud.serving")

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
        # uvicorn re-raises captured signals after shutdown (the process would then die
        # by SIGTERM); a replica that drained cleanly exits 0 instead.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list) and sig == signal.SIGTERM and sig in captured:
            captured.remove(sig)

    async def serve(self, sockets: Any = None) -> None:
        global _server
        _server = self
        await super().serve(sockets)


#: Hugging Face Hub's switch for its progress bars, which transformers follows too.
HF_PROGRESS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


def disable_progress_bars() -> None:
    """Turn off the progress bars of huggingface_hub and transformers in this process and
    its children (``Loading weights: 0%|...`` lines full of carriage returns in replica
    logs). Sets ``HF_HUB_DISABLE_PROGRESS_BARS=1`` (libraries imported later read it) and
    switches off the bars of those already imported; an explicit setting of the variable
    in the replica's environment is kept."""
    os.environ.setdefault(HF_PROGRESS_ENV, "1")
    if os.environ[HF_PROGRESS_ENV].strip().lower() not in ("1", "true", "yes", "on"):
        return
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars as hub_disable

        hub_disable()
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        tf_logging.disable_progress_bar()


def _on_fatal(exc: BaseException) -> None:
    global _fatal
    _fatal = True
    if _server is not None:
        _server.should_exit = True


def app_factory() -> ServingApp:
    """Build the app from ``NEOCLOUD_SERVE_*`` variables (the reloading server's process)."""
    global _app
    disable_progress_bars()
    model = os.environ.get(_ENV_MODEL) or None
    name = os.environ.get(_ENV_NAME) or None
    _app = build_app(os.environ[_ENV_SERVICE], name=name, model=model,
                     settings=ServingSettings.from_env(), on_fatal=_on_fatal)
    return _app


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _run_pool(service: str, *, host: str, port: int, name: str | None, model: str | None,
              workers: int, grace: float, log_level: str) -> int:
    """Start ``workers`` replica processes on one port; returns the exit code."""
    base = [sys.executable, "-m", "neocloud.serving", service, "--host", host, "--port",
            str(port), "--reuse-port", "--grace-period", str(grace), "--log-level", log_level]
    if name:
        base += ["--name", name]
    if model:
        base += ["--model", model]
    children: list[subprocess.Popen[bytes]] = []
    signaled: set[int] = set()  # pids the stop was forwarded to
    stopping = False
    received = signal.SIGTERM

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping, received
        stopping, received = True, sig
        for child in children:
            if child.poll() is None:
                signaled.add(child.pid)
                child.send_signal(sig)

    # Handlers first, so a stop that arrives while the workers are being started reaches
    # every one started.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        if stopping:
            break
        children.append(subprocess.Popen(base))
    # A stop that arrived while a worker was being started (inside Popen, before the
    # worker was in the list) was not forwarded to it: that worker would serve on and
    # the pool wait for it forever. Forward it now to every worker it missed.
    if stopping:
        for child in children:
            if child.pid not in signaled and child.poll() is None:
                signaled.add(child.pid)
                child.send_signal(received)
    codes: dict[int, int] = {}
    while len(codes) < len(children):
        for i, child in enumerate(children):
            if i not in codes and child.poll() is not None:
                codes[i] = child.returncode
                if not stopping:  # a worker died on its own: stop the pool
                    log.error("worker %d exited with %s; stopping the pool", child.pid,
                              child.returncode)
                    forward(signal.SIGTERM, None)
        time.sleep(0.1)
    # A worker still starting when the pool forwarded SIGTERM/SIGINT has no handler yet and
    # dies of the signal itself: that is the stop that was asked for, not a failure.
    asked = (-signal.SIGTERM, -signal.SIGINT) if stopping else ()
    return 0 if all(c == 0 or c in asked for c in codes.values()) else 1


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
    reuse_port: bool = False,
) -> None:
    """Serve ``service`` on ``host:port`` until SIGTERM/SIGINT (blocking).

    Args:
        service: ``embeddings``, ``chat``, ``package.module:Class`` or ``file.py:Class``.
        name: served model name (default ``NEOCLOUD_SERVED_MODEL_NAME`` or the service's).
        model: model reference handed to the service (``hf:org/name``, a folder...).
        workers: processes sharing the port through ``SO_REUSEPORT`` (the kernel spreads
            connections); each loads the model once. The parent forwards SIGTERM/SIGINT
            and exits 0 when every worker did, else 1.
        reload: restart when the service's files change (development; one worker).
        grace_period_s: seconds in-flight requests get after SIGTERM (default
            ``NEOCLOUD_GRACE_PERIOD_S`` or 30).
        reuse_port: bind with ``SO_REUSEPORT`` (used by the workers of a pool).

    The process's :class:`~neocloud.serving.settings.ServingSettings` are read from the
    environment here, once, and handed to the app and the service.

    Raises:
        SystemExit: code 1 when ``setup()`` failed.
        ValueError: the service reference cannot be resolved.
    """
    global _app
    disable_progress_bars()
    settings = ServingSettings.from_env()
    grace = settings.grace_period_s if grace_period_s is None else grace_period_s
    settings = replace(settings, grace_period_s=grace)  # what the app tells a cut stream
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
    if reload:
        os.environ[_ENV_SERVICE] = service
        os.environ[_ENV_NAME] = name or ""
        os.environ[_ENV_MODEL] = model or ""
        config = uvicorn.Config("neocloud.serving.runner:app_factory", factory=True, reload=True,
                                reload_dirs=_reload_dirs(service), **common)
        from uvicorn.supervisors import ChangeReload

        server = ReplicaServer(config)
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
        return
    if workers > 1:
        sys.exit(_run_pool(service, host=host, port=port, name=name, model=model,
                           workers=workers, grace=grace, log_level=log_level))
    _app = build_app(service, name=name, model=model, settings=settings, on_fatal=_on_fatal)
    server = ReplicaServer(uvicorn.Config(_app, **common))
    if reuse_port:
        server.run(sockets=[_reuse_port_socket(host, port)])
    else:
        server.run()
    if _fatal:
        log.error("setup() failed; exiting")
        sys.exit(1)
