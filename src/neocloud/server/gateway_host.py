"""The control plane's side of the gateway contract: tokens, routes and usage from the
database.

- :class:`DbAuthenticator` looks tokens up by hash (the gateway caches the answers).
- :class:`DbRouteTable` keeps the route table in memory; the reconciler thread rebuilds it
  from the database after every pass (:meth:`DbRouteTable.refresh`), so a request never
  waits on the database to find its replicas.
- :class:`UsageBuffer` collects request records and writes them as ``tokens`` usage
  records, one per deployment and flush (see :meth:`UsageBuffer.flush`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select

from neocloud.gateway.types import Principal, RequestRecord, Route, Upstream
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Node, Replica, UsageRecord
from neocloud.server.services.workspaces import authenticate


class DbAuthenticator:
    def __init__(self, db: Database):
        self.db = db

    def _lookup(self, token: str) -> Principal | None:
        with self.db.session() as s:
            caller = authenticate(s, secret=token)
        if caller is None:
            return None
        return Principal(token_id=caller.token_id, workspace_id=caller.workspace_id,
                         role=caller.role.value)

    async def authenticate(self, token: str) -> Principal | None:
        return await asyncio.to_thread(self._lookup, token)


class DbRouteTable:
    """Routes of every workspace, rebuilt from the database by :meth:`refresh`.

    Args:
        db: the database.
        wake: called with a deployment id to start a scaled-to-zero deployment.
    """

    def __init__(self, db: Database, wake: Callable[[str], None] | None = None):
        self.db = db
        self._wake = wake
        self._routes: dict[str, dict[str, Route]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Rebuild the table: each deployment with the URLs of its ready replicas."""
        with self.db.session() as s:
            nodes = {n.id: n for n in s.scalars(select(Node))}
            deps = s.scalars(select(Deployment).where(Deployment.status != "deleting")).all()
            ready = s.scalars(select(Replica).where(Replica.status == "ready")).all()
        ups: dict[str, list[Upstream]] = {}
        for r in ready:
            node = nodes.get(r.node_id or "")
            if node is None or r.port is None or node.backend == "fake":
                continue
            ups.setdefault(r.deployment_id, []).append(
                Upstream(replica_id=r.id, url=f"http://{node.address}:{r.port}")
            )
        table: dict[str, dict[str, Route]] = {}
        for d in deps:
            table.setdefault(d.workspace_id, {})[d.name] = Route(
                deployment_id=d.id, workspace_id=d.workspace_id, name=d.name,
                upstreams=tuple(ups.get(d.id, ())), can_wake=False,
            )
        with self._lock:
            self._routes = table

    async def resolve(self, workspace_id: str, name: str) -> Route | None:
        return self._routes.get(workspace_id, {}).get(name)

    async def list_routes(self, workspace_id: str) -> list[Route]:
        return list(self._routes.get(workspace_id, {}).values())

    async def wake(self, route: Route) -> None:
        if self._wake is not None:
            self._wake(route.deployment_id)


class UsageBuffer:
    """Collects gateway request records; :meth:`flush` writes one ``tokens`` usage record
    per (workspace, deployment) with the requests and token counts since the last flush."""

    def __init__(self, db: Database):
        self.db = db
        self._lock = threading.Lock()
        self._pending: list[RequestRecord] = []

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._pending.append(rec)

    def flush(self) -> int:
        """Write what was collected; returns the number of request records written."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return 0
        groups: dict[tuple[str, str], list[RequestRecord]] = {}
        for rec in batch:
            groups.setdefault((rec.workspace_id, rec.deployment_id), []).append(rec)
        end = datetime.now(UTC)
        with self.db.session() as s:
            names = {d.id: d.name for d in s.scalars(
                select(Deployment).where(Deployment.id.in_([k[1] for k in groups])))}
            for (ws, dep_id), recs in groups.items():
                start = datetime.fromtimestamp(min(r.started_at for r in recs), UTC)
                s.add(UsageRecord(
                    workspace_id=ws, kind="tokens", object_id=dep_id,
                    name=names.get(dep_id, dep_id[:8]), period_start=start, period_end=end,
                    prompt_tokens=sum(r.prompt_tokens for r in recs),
                    completion_tokens=sum(r.completion_tokens for r in recs),
                    requests=len(recs), seconds=sum(r.latency_s for r in recs), cost_usd=0.0,
                ))
        return len(batch)
