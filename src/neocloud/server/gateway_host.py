"""The control plane's side of the gateway contract: tokens, routes and usage from the
database.

- :class:`DbAuthenticator` looks tokens up by hash (the gateway caches the answers).
- :class:`DbRefusalLog` writes the gateway's 401 and 402 refusals to the audit log.
- :class:`DbRouteTable` keeps the route table in memory; the reconciler thread rebuilds it
  from the database after every pass (:meth:`DbRouteTable.refresh`), so a request never
  waits on the database to find its replicas.
- :class:`UsageBuffer` (now in ``server.metering.tokens``, re-exported here until callers
  import it from there) collects request records and writes the ``tokens`` usage records.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
from sqlalchemy import select

from neocloud.gateway.types import Principal, Refusal, Route, Upstream, openai_paths_of
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.metering.tokens import UsageBuffer
from neocloud.server.services import audit, budgets
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


#: Seconds between probes of a waking deployment's starting replica.
READY_WATCH_S = 0.05
#: Longest watch (seconds) of a deployment without a cold-start timeout of its own.
DEFAULT_WATCH_S = 120.0


class DbRefusalLog:
    """The gateway's :class:`~neocloud.gateway.types.RefusalSink`: each 401/402 refusal
    becomes an audit entry, committed before the refusal is answered."""

    def __init__(self, db: Database):
        self.db = db

    async def refused(self, refusal: Refusal) -> None:
        await asyncio.to_thread(audit.record_refusal, self.db, refusal)


class DbRouteTable:
    """Routes of every workspace, rebuilt from the database by :meth:`refresh`.

    Args:
        db: the database.
        wake: called with a deployment id to start a scaled-to-zero deployment.
    """

    def __init__(self, db: Database, wake: Callable[[str], None] | None = None,
                 kick: Callable[[], None] | None = None):
        self.db = db
        self._wake = wake
        self._kick = kick
        self._routes: dict[str, dict[str, Route]] = {}
        self._lock = threading.Lock()
        self._watches: dict[str, asyncio.Task[None]] = {}

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
                scaled_to_zero=d.replicas == 0 and not can_wake(d),
                serves=openai_paths_of(d.service, d.engine),
            )
        with self._lock:
            self._routes = table

    async def resolve(self, workspace_id: str, name: str) -> Route | None:
        route = self._routes.get(workspace_id, {}).get(name)
        if route is None and await asyncio.to_thread(self._exists, workspace_id, name):
            # created since the last rebuild (a request sent right after the create):
            # rebuild now rather than answer 404 for a deployment that exists
            await asyncio.to_thread(self.refresh)
            route = self._routes.get(workspace_id, {}).get(name)
        return route

    def _exists(self, workspace_id: str, name: str) -> bool:
        """Whether the database has a live deployment ``name`` in ``workspace_id``."""
        with self.db.session() as s:
            return s.scalars(select(Deployment.id).where(
                Deployment.workspace_id == workspace_id, Deployment.name == name,
                Deployment.status != "deleting")).first() is not None

    async def list_routes(self, workspace_id: str) -> list[Route]:
        return list(self._routes.get(workspace_id, {}).values())

    async def wake(self, route: Route) -> None:
        if self._wake is None:
            return
        await asyncio.to_thread(self._wake, route.deployment_id)
        if self._kick is not None and route.deployment_id not in self._watches:
            task = asyncio.get_running_loop().create_task(self._watch_ready(route))
            self._watches[route.deployment_id] = task
            task.add_done_callback(lambda _t: self._watches.pop(route.deployment_id, None))

    async def _watch_ready(self, route: Route) -> None:
        """While ``route``'s deployment wakes: probe its starting replica's ``/ready``
        every :data:`READY_WATCH_S` and run a reconcile pass (``kick``) the moment it
        answers 200, so the replica is marked ready and routed without waiting for the
        next periodic pass. Only an accelerator: the passes still decide readiness."""
        assert self._kick is not None
        deadline = time.monotonic() + (route.wake_timeout_s or DEFAULT_WATCH_S)
        async with httpx.AsyncClient(timeout=READY_WATCH_S * 4) as http:
            while time.monotonic() < deadline:
                url, routed = await asyncio.to_thread(self._starting_url, route.deployment_id)
                if routed:
                    return
                if url is not None:
                    try:
                        if (await http.get(url)).status_code == 200:
                            await asyncio.to_thread(self._kick)
                            return
                    except httpx.HTTPError:
                        pass
                await asyncio.sleep(READY_WATCH_S)

    def _starting_url(self, deployment_id: str) -> tuple[str | None, bool]:
        """``(the /ready URL of a starting replica of the deployment or None, whether a
        replica of it is ready already)``; replicas on simulated nodes have no URL."""
        with self.db.session() as s:
            rows = s.execute(
                select(Replica.status, Replica.port, Node.address, Node.backend)
                .join(Node, Node.id == Replica.node_id)
                .where(Replica.deployment_id == deployment_id,
                       Replica.status.in_(("starting", "ready")))).all()
        if any(st == "ready" for st, *_ in rows):
            return None, True
        for _st, port, address, backend in rows:
            if port is not None and backend != "fake":
                return f"http://{address}:{port}/ready", False
        return None, False


def last_line(message: str | None) -> str:
    """The last non-empty line of a replica's failure message (the exception of a crash)."""
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "the replica exited"


__all__ = ["DbAuthenticator", "DbRouteTable", "UsageBuffer", "last_line"]
