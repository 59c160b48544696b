"""The control plane's side of the gateway contract: tokens, routes and usage from the
database.

- :class:`DbAuthenticator` looks tokens up by hash (the gateway caches the answers).
- :class:`DbRouteTable` keeps the route table in memory; the reconciler thread rebuilds it
  from the database after every pass (:meth:`DbRouteTable.refresh`), so a request never
  waits on the database to find its replicas.
- :class:`UsageBuffer` (now in ``server.metering.tokens``, re-exported here until callers
  import it from there) collects request records and writes the ``tokens`` usage records.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from sqlalchemy import select

from neocloud.gateway.types import Principal, Route, Upstream
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.metering.tokens import UsageBuffer
from neocloud.server.services import budgets
from neocloud.server.services.deployments import can_wake
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
            reps = s.scalars(select(Replica).where(
                Replica.status.in_(("ready", "starting", "failed")))).all()
            refused = budgets.refusals(s)  # budget hard stops: the gateway refuses these
        ready = [r for r in reps if r.status == "ready"]
        generation = {d.id: d.generation for d in deps}
        crashed: dict[str, str] = {}
        for r in reps:  # a replica of the current spec that crashed while starting
            if r.restarts > 0 and r.status != "ready" \
                    and r.generation == generation.get(r.deployment_id):
                crashed.setdefault(r.deployment_id, last_line(r.message))
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
            failed = crashed.get(d.id)
            table.setdefault(d.workspace_id, {})[d.name] = Route(
                deployment_id=d.id, workspace_id=d.workspace_id, name=d.name,
                upstreams=tuple(ups.get(d.id, ())), can_wake=can_wake(d),
                refusal=refused.get(d.workspace_id),
                wake_timeout_s=d.cold_start_timeout_s,
                wake_error=(f"deployment '{d.name}' failed to start: {failed}"
                            if failed is not None and d.id not in ups else None),
            )
        with self._lock:
            self._routes = table

    async def resolve(self, workspace_id: str, name: str) -> Route | None:
        return self._routes.get(workspace_id, {}).get(name)

    async def list_routes(self, workspace_id: str) -> list[Route]:
        return list(self._routes.get(workspace_id, {}).values())

    async def wake(self, route: Route) -> None:
        if self._wake is not None:
            await asyncio.to_thread(self._wake, route.deployment_id)


def last_line(message: str | None) -> str:
    """The last non-empty line of a replica's failure message (the exception of a crash)."""
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "the replica exited"


__all__ = ["DbAuthenticator", "DbRouteTable", "UsageBuffer", "last_line"]
