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

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import neocloud
from neocloud.asgi import BodyLimit, Scope
from neocloud.errors import PermissionDenied, Unavailable
from neocloud.gateway import GatewaySettings, create_gateway
from neocloud.server.audit_http import AuditLog
from neocloud.server.backends import FakeBackend, LocalBackend
from neocloud.server.backends.base import Backend
from neocloud.server.backends.discovery import discover_machine
from neocloud.server.crypto import SecretBox
from neocloud.server.datafolder import secure_data_folder
from neocloud.server.db.engine import Database, migrate
from neocloud.server.deps import get_caller
from neocloud.server.errors_http import AllowedMethods, document_errors
from neocloud.server.errors_http import install as install_errors
from neocloud.server.gateway_host import (
    DbAuthenticator,
    DbRefusalLog,
    DbRouteTable,
    UsageBuffer,
)
from neocloud.server.metering.loop import MeteringLoop
from neocloud.server.metering.metrics import ControlPlaneCollector
from neocloud.server.reconcilers.deployments import DeploymentReconciler, ReconcilerThread
from neocloud.server.reconcilers.jobs import JobReconciler
from neocloud.server.reconcilers.nodes import NodeReconciler
from neocloud.server.reconcilers.pods import PodReconciler
from neocloud.server.routers import admin as admin_router
from neocloud.server.routers import (
    audit,
    deployments,
    events,
    nodes,
    quotas,
    shapes,
    utilization,
    workspaces,
)
from neocloud.server.routers import jobs as jobs_router
from neocloud.server.routers import nodes_join as nodes_join_router
from neocloud.server.routers import pods as pods_router
from neocloud.server.routers import secrets as secrets_router
from neocloud.server.routers import ui as ui_router
from neocloud.server.routers import usage as usage_router
from neocloud.server.routers import volumes as volumes_router
from neocloud.server.routers.billing import ROUTERS as billing_routers
from neocloud.server.services import deployments as deployment_svc
from neocloud.server.services import nodes as node_svc
from neocloud.server.services import shapes as shape_svc
from neocloud.server.settings import Settings
from neocloud.server.state import AppState, Reconcilers
from neocloud.server.storage import LocalVolumeStore

log = logging.getLogger(__name__)


def prepare_database(settings: Settings, db: Database) -> None:
    """Migrate, add default shapes and (re)register this machine as a node."""
    migrate(db.engine)
    with db.session() as s:
        shape_svc.ensure_defaults(s)
        if settings.register_local_node:
            if settings.backend != "ray":  # Ray nodes register with `neocloud node join`
                node_svc.register_local(s, machine=discover_machine(),
                                        backend=settings.backend)


class ControlPlane:
    """The ASGI app: dispatches ``/v1/*`` and ``/endpoints/*`` to the gateway."""

    def __init__(self, api: FastAPI, gateway: Any, state: AppState):
        self.api = api
        self.gateway = gateway
        self.state = state
        # The audit log sees every answer of the API, a refused body's 413 included.
        self._uploads = AuditLog(api, state.db)
        self._api = AuditLog(BodyLimit(api, state.settings.max_body_bytes), state.db)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/v1/") or path == "/v1" or path.startswith("/endpoints/"):
                await self.gateway(scope, receive, send)
                return
        if scope["type"] == "http" and volumes_router.is_upload(scope["method"], scope["path"]):
            await self._uploads(scope, receive, send)  # streamed to disk; its own size limit
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
        run_reconcilers: start the reconciler threads with the app (tests may drive
            ``app.state.reconcilers.run_once()`` by hand instead): the reconcilers in
            ``neocloud-reconciler``, the usage flush and metering in ``neocloud-metering``.
        stop_replicas_on_exit: at shutdown, stop every replica this process's local
            backend runs (``neocloud up``); a plain server leaves them running for the next
            start to adopt.
    """
    settings = settings or Settings()
    secure_data_folder(settings.home)
    db = Database(settings.resolved_database_url())
    if backends is None:
        backends = {"local": LocalBackend(), "fake": FakeBackend()}
        if settings.backend == "ray":
            try:
                from neocloud.server.backends.ray_backend import RayBackend
            except ImportError as e:
                raise Unavailable("the ray backend needs Ray: pip install 'neocloud[ray]'"
                                  ) from e
            backends["ray"] = RayBackend(settings.ray_address, node_ip=settings.ray_node_ip)
    def wake_from_zero(deployment_id: str) -> None:
        # a request is held for a deployment at zero: ask for one replica, act at once
        with db.session() as s:
            woken = deployment_svc.wake(s, deployment_id=deployment_id)
        if woken:
            thread.wake()

    routes = DbRouteTable(db, wake=wake_from_zero, kick=lambda: thread.wake())
    usage = UsageBuffer(db)
    secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
    box = SecretBox.for_home(settings.home, secret_key)
    reconciler = DeploymentReconciler(db, backends, settings, on_change=routes.refresh, box=box)
    store = LocalVolumeStore(settings.home / "volumes")
    job_reconciler = JobReconciler(db, backends, settings, box=box, store=store)
    pod_reconciler = PodReconciler(db, backends, settings, box=box, store=store)
    metering = MeteringLoop(db, usage_period_s=settings.usage_period_s)
    node_reconciler = NodeReconciler(db, backends)  # first: the others act on its statuses
    # Placement never waits for metering: the usage flush and the metering loop (the
    # node sample, storage, budgets, invoices) have a thread of their own.
    thread = ReconcilerThread(
        [node_reconciler.run_once, reconciler.run_step, job_reconciler.run_once,
         pod_reconciler.run_once],
        settings.reconcile_interval_s, name="neocloud-reconciler",
        on_wake=[reconciler.wake])
    metering_thread = ReconcilerThread(
        [usage.flush, metering.run_once], settings.reconcile_interval_s,
        name="neocloud-metering")
    gateway = create_gateway(
        routes, DbAuthenticator(db), usage,
        GatewaySettings(max_body_bytes=settings.max_body_bytes,
                        auth_cache_ttl_s=settings.token_cache_ttl_s,
                        route_cache_ttl_s=0.0),
        refusals=DbRefusalLog(db),
    )
    reconciler.stats = gateway.deployment_stats  # autoscaling signals, scale-in order
    state = AppState(
        settings=settings, db=db, backends=backends, secret_box=box, volume_store=store,
        routes=routes, usage=usage, gateway=gateway,
        reconcilers=Reconcilers(deployments=reconciler, jobs=job_reconciler,
                                pods=pod_reconciler, thread=thread, nodes=node_reconciler,
                                metering=metering_thread),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(prepare_database, settings, db)
        await asyncio.to_thread(routes.refresh)
        await gateway.startup()
        if run_reconcilers:
            thread.start()
            metering_thread.start()
        try:
            yield
        finally:
            if run_reconcilers:
                await asyncio.to_thread(thread.stop)
                await asyncio.to_thread(metering_thread.stop)
            # the gateway's replica usage look-ups finish while the replicas still run, and
            # before the last write of usage records (after it, their records were lost)
            await gateway.shutdown()
            if stop_replicas_on_exit:
                await asyncio.to_thread(reconciler.stop_local_replicas)
                await asyncio.to_thread(job_reconciler.stop_local_jobs)
                await asyncio.to_thread(pod_reconciler.stop_local_pods)
            await asyncio.to_thread(usage.flush)
            await asyncio.to_thread(usage.close)
            db.dispose()

    api = FastAPI(
        title="neocloud",
        version=neocloud.__version__,
        description="Control-plane REST API of neocloud, an open-source AI cloud.",
        lifespan=lifespan,
    )
    api.state.neocloud = state
    install_errors(api)
    allowed = api.state.allowed_methods = AllowedMethods()
    for r in (workspaces.router, quotas.router, nodes.router, shapes.router,
              utilization.router, deployments.router, events.router, usage_router.router,
              jobs_router.router, pods_router.router, secrets_router.router,
              volumes_router.router, audit.router, nodes_join_router.router,
              admin_router.router, *billing_routers):
        document_errors(r)
        allowed.add(r, prefix="/api/v1")
        api.include_router(r, prefix="/api/v1")
    ui_router.install(api)  # the console at /ui
    allowed.add(ui_router.router)

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    registry = CollectorRegistry()
    registry.register(ControlPlaneCollector(db))  # type: ignore[arg-type]
    collector = getattr(gateway, "collector", None)
    if collector is not None:
        registry.register(collector)

    @api.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text of the whole cloud. Its labels name every workspace and
        deployment, so it needs a token of an operator workspace (any role: a viewer token
        is enough for a scraper), unless ``settings.public_metrics`` opens it.

        Raises:
            Unauthenticated: no token, or an unknown one (401).
            PermissionDenied: a token of a workspace that is not an operator's (403).
        """
        if not settings.public_metrics:
            caller = get_caller(request, state)
            if not caller.operator:
                raise PermissionDenied(
                    "/metrics is for operators: use a token of an operator workspace "
                    "(a viewer token is enough), or start the control plane with "
                    "NEOCLOUD_PUBLIC_METRICS=1")
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    allowed.add(api.router)  # /healthz, /metrics, /openapi.json, /docs
    return ControlPlane(api, gateway, state)
