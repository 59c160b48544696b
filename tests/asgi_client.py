"""The real control plane behind a synchronous httpx transport, without a network port.

``httpx.ASGITransport`` speaks to an ASGI app but only for ``httpx.AsyncClient``; the SDK
is synchronous. :class:`SyncASGITransport` runs an ``httpx.ASGITransport`` on an event
loop in a helper thread (an anyio blocking portal) and hands each request over to it, after
running the app's lifespan (migrations, default shapes) once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx

from neocloud.server.app import ControlPlane, create_app
from neocloud.server.backends import FakeBackend, LocalBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.settings import Settings


class SyncASGITransport(httpx.BaseTransport):
    """A sync transport over ``httpx.ASGITransport(app)``; :meth:`stop` ends the app's
    lifespan (closing an httpx client that uses it leaves the app running, so several
    clients may share it)."""

    def __init__(self, app: ControlPlane):
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._inner = httpx.ASGITransport(app=app)
        api = app.api
        self._lifespan = self._portal.wrap_async_context_manager(
            api.router.lifespan_context(api))
        self._lifespan.__enter__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def send() -> tuple[int, Any, bytes]:
            req = httpx.Request(request.method, request.url, headers=request.headers,
                                content=body)
            resp = await self._inner.handle_async_request(req)
            data = await resp.aread()
            return resp.status_code, resp.headers, data

        status, headers, data = self._portal.call(send)
        return httpx.Response(status, headers=headers, content=data, request=request)

    def close(self) -> None:
        """Called by every httpx client that closes: the app stays up."""

    def stop(self) -> None:
        if self._lifespan is not None:
            self._lifespan.__exit__(None, None, None)
            self._lifespan = None
            self._portal_cm.__exit__(None, None, None)


def real_cloud(home: Path, db_url: str, **settings: Any) -> tuple[SyncASGITransport, str,
                                                                   ControlPlane]:
    """A control plane on ``db_url`` (fake and local backends, reconcilers driven by hand):
    its transport, an operator admin token, and the app."""
    app = create_app(
        Settings(home=home, database_url=db_url, register_local_node=False, **settings),
        backends={"fake": FakeBackend(), "local": LocalBackend()}, run_reconcilers=False)
    transport = SyncASGITransport(app)
    token = bootstrap(app.state.db).token
    assert token
    return transport, token, app
