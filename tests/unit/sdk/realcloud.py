"""The real control plane for the SDK tests: the app in this process, reached through
``httpx.ASGITransport`` (no port), SQLite in the test's folder, simulated nodes, and the
reconcilers driven by hand (:meth:`RealCloud.reconcile`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from tests.asgi_client import SyncASGITransport

from neocloud.sdk import Client
from neocloud.server.app import ControlPlane
from neocloud.server.backends import FakeBackend

BASE = "http://cloud.test"


class Recording(httpx.BaseTransport):
    """Hands requests to the app and keeps each one (``requests``)."""

    def __init__(self, inner: SyncASGITransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)


@dataclass
class RealCloud:
    app: ControlPlane
    transport: Recording
    token: str
    fake: FakeBackend
    clients: list[Client] = field(default_factory=list)

    @property
    def requests(self) -> list[httpx.Request]:
        return self.transport.requests

    def client(self, token: str | None = None) -> Client:
        c = Client(BASE, token, transport=self.transport)
        self.clients.append(c)
        return c

    def reconcile(self, times: int = 1) -> None:
        for _ in range(times):
            self.app.state.reconcilers.run_once()
