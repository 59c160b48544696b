"""The control plane's side of the gateway contract: tokens, routes and usage from the
database.

- :class:`DbAuthenticator` looks tokens up by hash (the gateway caches the answers).
- :class:`DbRefusalLog` writes the gateway's 401 and 402 refusals to the audit log.
- :class:`DbRouteTable` keeps the route table in memory; the reconciler thread rebuilds the
  routes of the deployments a pass touched or saw change after every pass, and the whole
  table every 30 s (:meth:`DbRouteTable.refresh`), so a request never waits on the
  database to find its replicas. Either rebuild reads Core rows of only the columns a
  route needs (:func:`read_route_rows`: at 5,000 deployments x 10 replicas on
  PostgreSQL, about 0.1 s on simulated nodes and 0.6 s with 50,000 upstreams, against
  2 to 3 s for the ORM rows of every replica, deployment and node), builds the routes
  in one go (:func:`routes_of`) and swaps the table in.
- :class:`UsageBuffer` (now in ``server.metering.tokens``, re-exported here until callers
  import it from there) collects request records and writes the ``tokens`` usage records.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from neocloud.gateway.types import Principal, Refusal, Route, Upstream, openai_paths_of
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Node, Replica, Workspace
from neocloud.server.metering.tokens import UsageBuffer
from neocloud.server.services import audit, budgets
from neocloud.server.services.deployments import autoscales_to_zero, serving_upstreams
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


#: Seconds between whole rebuilds of the route table when the reconciler asks for some
#: deployments' routes only (:meth:`DbRouteTable.refresh`).
FULL_REFRESH_S = 30.0
#: Most deployments one partial rebuild reads (more: the whole table, in fewer statements).
PARTIAL_MAX = 2000
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
        self._where: dict[str, tuple[str, str]] = {}
        """Deployment id -> (workspace id, name) of its route."""
        self._refused: dict[str, str] | None = None
        self._last_full = float("-inf")
        self.refreshes: list[int | None] = []
        """Each rebuild, the newest last (the last 100): ``None`` for the whole table,
        else how many deployments were asked for (what tests read)."""
        self._lock = threading.Lock()
        self._serial = threading.Lock()
        self._watches: dict[str, asyncio.Task[None]] = {}

    def refresh(self, deployment_ids: Collection[str] | None = None) -> None:
        """Rebuild the table: each deployment with the URLs of its ready replicas.

        With ``deployment_ids``, only the routes of those deployments are rebuilt (read
        again; one gone or ``deleting`` is removed), unless the budget refusals changed
        or the last whole rebuild is :data:`FULL_REFRESH_S` old: then the whole table.
        The reconciler passes the deployments it touched or saw change; the whole
        rebuild every :data:`FULL_REFRESH_S` catches what changes no deployment (a
        node's address). It stays a whole read, not one of the rows written since the
        last: replicas and nodes have no ``updated_at`` that every write sets."""
        if deployment_ids is not None and not deployment_ids:
            return
        with self._serial:  # one at a time: an older read never overwrites a newer one
            self._refresh(deployment_ids)

    def _refresh(self, deployment_ids: Collection[str] | None) -> None:
        ids = sorted(set(deployment_ids or ()))
        with self.db.session() as s:
            refused = budgets.refusals(s)  # budget hard stops: the gateway refuses these
            full = (deployment_ids is None or refused != self._refused
                    or len(ids) > PARTIAL_MAX
                    or time.monotonic() - self._last_full >= FULL_REFRESH_S)
            if full:
                self._last_full = time.monotonic()
            rows = read_route_rows(s, None if full else ids)
        routes = routes_of(rows, refused)
        with self._lock:
            if full:
                table: dict[str, dict[str, Route]] = {}
                where: dict[str, tuple[str, str]] = {}
            else:  # copy on write: resolve() reads the table without the lock
                table = dict(self._routes)
                where = dict(self._where)
                for dep_id in ids:
                    old = where.pop(dep_id, None)
                    if old is not None and old[1] in table.get(old[0], {}):
                        table[old[0]] = {n: r for n, r in table[old[0]].items()
                                         if n != old[1]}
            copied: set[str] = set()
            for route in routes:
                if not full and route.workspace_id not in copied:
                    copied.add(route.workspace_id)
                    table[route.workspace_id] = dict(table.get(route.workspace_id, {}))
                table.setdefault(route.workspace_id, {})[route.name] = route
                where[route.deployment_id] = (route.workspace_id, route.name)
            self._routes = table
            self._where = where
            self._refused = refused
            self.refreshes.append(None if full else len(ids))
            del self.refreshes[:-100]

    async def resolve(self, workspace_id: str, name: str) -> Route | None:
        route = self._routes.get(workspace_id, {}).get(name)
        if route is None:
            dep_id = await asyncio.to_thread(self._exists, workspace_id, name)
            if dep_id is not None:
                # created since the last rebuild (a request sent right after the create):
                # rebuild its route now rather than answer 404 for a deployment that exists
                await asyncio.to_thread(self.refresh, [dep_id])
                route = self._routes.get(workspace_id, {}).get(name)
        return route

    def _exists(self, workspace_id: str, name: str) -> str | None:
        """The id of the live deployment ``name`` in ``workspace_id`` (``None``: none)."""
        with self.db.session() as s:
            return s.scalars(select(Deployment.id).where(
                Deployment.workspace_id == workspace_id, Deployment.name == name,
                Deployment.status != "deleting")).first()

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


@dataclass(frozen=True)
class RouteRows:
    """What routes are built from: Core rows of only the columns a route needs.

    Attributes:
        deployments: ``(id, workspace_id, name, generation, replicas, autoscaling,
            cold_start_timeout_s, service, engine, created_at, workspace_name)`` of each
            deployment not ``deleting`` (its workspace's name joined in).
        upstreams: ``(deployment_id, id, url)`` of each ``ready`` replica with a port,
            on a node of a backend that serves (not ``fake``: simulated replicas have no
            URL); the database writes each URL (``http://<node address>:<port>``).
        crashes: ``(deployment_id, generation, message)`` of each ``starting`` or
            ``failed`` replica that was restarted (it crashed while starting).
    """

    deployments: Sequence[Row[Any]]
    upstreams: Sequence[Row[str, str, str]]
    crashes: Sequence[Row[str, int, str | None]]


def read_route_rows(s: Session, deployment_ids: Sequence[str] | None = None) -> RouteRows:
    """The rows of the routes of ``deployment_ids`` (``None``: every deployment), in three
    statements; no ORM object is built (at 50,000 replicas the ORM rows of every replica
    were most of a whole rebuild's time)."""
    deps = (select(Deployment.id, Deployment.workspace_id, Deployment.name,
                   Deployment.generation, Deployment.replicas, Deployment.autoscaling,
                   Deployment.cold_start_timeout_s, Deployment.service,
                   Deployment.engine, Deployment.created_at,
                   Workspace.name.label("workspace_name"))
            .join(Workspace, Workspace.id == Deployment.workspace_id)
            .where(Deployment.status != "deleting"))
    ups = serving_upstreams()
    crashes = select(Replica.deployment_id, Replica.generation, Replica.message).where(
        Replica.status.in_(("starting", "failed")), Replica.restarts > 0)
    if deployment_ids is not None:
        deps = deps.where(Deployment.id.in_(deployment_ids))
        ups = ups.where(Replica.deployment_id.in_(deployment_ids))
        crashes = crashes.where(Replica.deployment_id.in_(deployment_ids))
    return RouteRows(deployments=s.execute(deps).all(), upstreams=s.execute(ups).all(),
                     crashes=s.execute(crashes).all())


def routes_of(rows: RouteRows, refused: dict[str, str]) -> list[Route]:
    """The route of each deployment of ``rows``: its ready replicas' URLs (in replica id
    order), and why it cannot start when a replica of its current generation crashed
    while starting; ``refused``: workspace id -> budget refusal message."""
    generation = {d.id: d.generation for d in rows.deployments}
    crashed: dict[str, str] = {}
    for dep_id, gen, message in rows.crashes:
        if gen == generation.get(dep_id):
            crashed.setdefault(dep_id, last_line(message))
    ups: dict[str, list[Upstream]] = {}
    for dep_id, rep_id, url in rows.upstreams:
        ups.setdefault(dep_id, []).append(Upstream(replica_id=rep_id, url=url))
    out: list[Route] = []
    for d in rows.deployments:
        wakes = autoscales_to_zero(d.autoscaling)  # can_wake: deleting ones are not read
        mine = ups.get(d.id)
        failed = crashed.get(d.id)
        out.append(Route(
            deployment_id=d.id, workspace_id=d.workspace_id, name=d.name,
            upstreams=tuple(sorted(mine, key=lambda u: u.replica_id)) if mine else (),
            can_wake=wakes, refusal=refused.get(d.workspace_id),
            wake_timeout_s=d.cold_start_timeout_s,
            wake_error=(f"deployment '{d.name}' failed to start: {failed}"
                        if failed is not None and not mine else None),
            scaled_to_zero=d.replicas == 0 and not wakes,
            serves=openai_paths_of(d.service, d.engine),
            created=int(d.created_at.timestamp()), owner=d.workspace_name,
        ))
    return out


def last_line(message: str | None) -> str:
    """The last non-empty line of a replica's failure message (the exception of a crash)."""
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "the replica exited"


__all__ = ["DbAuthenticator", "DbRouteTable", "RouteRows", "UsageBuffer", "last_line",
           "read_route_rows", "routes_of"]
