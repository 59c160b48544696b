"""The control-plane application: the REST API under ``/api/v1``, the gateway under
``/v1`` and ``/endpoints``, ``/metrics`` and ``/healthz``, and the reconcilers.

``create_app(settings)`` returns one ASGI application. Requests whose path starts with
``/v1/`` or ``/endpoints/`` go straight to the gateway (a lean ASGI app of its own, no
FastAPI routing on that path); everything else goes to the FastAPI app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import neocloud
from neocloud.errors import PayloadTooLarge
from neocloud.gateway import GatewaySettings, create_gateway
from neocloud.server.backends import FakeBackend, LocalBackend
from neocloud.server.backends.base import Backend
from neocloud.server.backends.discovery import discover_machine
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database, migrate
from neocloud.server.errors_http import install as install_errors
from neocloud.server.gateway_host import DbAuthenticator, DbRouteTable, UsageBuffer
from neocloud.server.metering.metrics import ControlPlaneCollector
from neocloud.server.reconcilers.deployments import DeploymentReconciler, ReconcilerThread
from neocloud.server.reconcilers.jobs import JobReconciler
from neocloud.server.reconcilers.pods import PodReconciler
from neocloud.server.routers import activity, deployments, inventory, tenancy
from neocloud.server.routers import jobs as jobs_router
from neocloud.server.routers import pods as pods_router
from neocloud.server.routers import secrets as secrets_router
from neocloud.server.routers import volumes as volumes_router
from neocloud.server.services import nodes as node_svc
from neocloud.server.services import shapes as shape_svc
from neocloud.server.settings import Settings
from neocloud.server.state import AppState
from neocloud.server.storage import LocalVolumeStore

log = logging.getLogger(__name__)

Scope = dict[str, Any]


def prepare_database(settings: Settings, db: Database) -> None:
    """Migrate, add default shapes and (re)register this machine as a node."""
    migrate(db.engine)
    with db.session() as s:
        shape_svc.ensure_defaults(s)
        if settings.register_local_node:
            node_svc.register_local(s, machine=discover_machine(), backend=settings.backend)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = PayloadTooLarge(
            f"request body is larger than {self.max_bytes} bytes", param="body"
        )
        for k, v in scope.get("headers", ()):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                await _send_error(send, too_big)
                return
        if any(k == b"content-length" for k, _ in scope.get("headers", ())):
            # Declared and within the limit: the server enforces the declared length.
            await self.app(scope, receive, send)
            return
        # Streamed (chunked) body: read it here, up to the limit, then hand it on whole,
        # so the app never starts on a body that turns out too large.
        chunks: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                await self.app(scope, _replay([msg]), send)
                return
            body = msg.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                await _send_error(send, too_big)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Any:
    """A ``receive`` that returns ``messages`` first, then defers to ``then``."""
    queue = list(messages)

    async def receive() -> Any:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _send_error(send: Any, err: Any) -> None:
    import json

    body = json.dumps(err.to_wire()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ControlPlane:
    """The ASGI app: dispatches ``/v1/*`` and ``/endpoints/*`` to the gateway."""

    def __init__(self, api: FastAPI, gateway: Any, state: AppState):
        self.api = api
        self.gateway = gateway
        self.state = state
        self._api = BodyLimit(api, state.settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/v1/") or path == "/v1" or path.startswith("/endpoints/"):
                await self.gateway(scope, receive, send)
                return
        if scope["type"] == "http" and volumes_router.is_upload(scope["method"], scope["path"]):
            await self.api(scope, receive, send)  # streamed to disk; its own size limit
            return
        await self._api(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    backends: dict[str, Backend] | None = None,
    run_reconcilers: bool = True,
    stop_replicas_on_exit: bool = False,
) -> ControlPlane:
    """Build the control plane.

    Args:
        settings: settings (default: read from the environment).
        backends: backend per node kind (default: ``local`` and ``fake``).
        run_reconcilers: start the reconciler thread with the app (tests may drive
            ``app.state.extras["reconciler"].run_once()`` by hand instead).
        stop_replicas_on_exit: at shutdown, stop every replica this process's local
            backend runs (``neocloud up``); a plain server leaves them running for the next
            start to adopt.
    """
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    backends = backends or {"local": LocalBackend(), "fake": FakeBackend()}
    state = AppState(settings=settings, db=db, backends=backends)
    routes = DbRouteTable(db)
    usage = UsageBuffer(db)
    secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
    box = SecretBox.for_home(settings.home, secret_key)
    reconciler = DeploymentReconciler(db, backends, settings, on_change=routes.refresh, box=box)
    store = LocalVolumeStore(settings.home / "volumes")
    job_reconciler = JobReconciler(db, backends, settings, box=box, store=store)
    pod_reconciler = PodReconciler(db, backends, settings, box=box, store=store)
    thread = ReconcilerThread(
        [reconciler.run_once, job_reconciler.run_once, pod_reconciler.run_once, usage.flush],
        settings.reconcile_interval_s)
    state.wake = thread.wake
    state.extras.update(reconciler=reconciler, routes=routes, usage=usage, thread=thread,
                        job_reconciler=job_reconciler, pod_reconciler=pod_reconciler,
                        secret_box=box, volume_store=store)
    gateway = create_gateway(
        routes, DbAuthenticator(db), usage,
        GatewaySettings(max_body_bytes=settings.max_body_bytes,
                        auth_cache_ttl_s=settings.token_cache_ttl_s,
                        route_cache_ttl_s=0.0),
    )
    state.extras["gateway"] = gateway

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(prepare_database, settings, db)
        await asyncio.to_thread(routes.refresh)
        await gateway.startup()
        if run_reconcilers:
            thread.start()
        try:
            yield
        finally:
            if run_reconcilers:
                await asyncio.to_thread(thread.stop)
            if stop_replicas_on_exit:
                await asyncio.to_thread(reconciler.stop_local_replicas)
                await asyncio.to_thread(job_reconciler.stop_local_jobs)
                await asyncio.to_thread(pod_reconciler.stop_local_pods)
            await asyncio.to_thread(usage.flush)
            await gateway.shutdown()
            db.dispose()

    api = FastAPI(
        title="neocloud",
        version=neocloud.__version__,
        description="Control-plane REST API of neocloud, an open-source AI cloud.",
        lifespan=lifespan,
    )
    api.state.neocloud = state
    install_errors(api)
    for r in (tenancy.router, inventory.router, deployments.router, activity.router,
              jobs_router.router, pods_router.router, secrets_router.router,
              volumes_router.router):
        api.include_router(r, prefix="/api/v1")

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    registry = CollectorRegistry()
    registry.register(ControlPlaneCollector(db))  # type: ignore[arg-type]
    collector = getattr(gateway, "collector", None)
    if collector is not None:
        registry.register(collector)

    @api.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return ControlPlane(api, gateway, state)
