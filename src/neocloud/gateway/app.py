"""The gateway: a raw ASGI app that authenticates, routes, balances and proxies.

Routes (every one needs ``Authorization: Bearer <token>``):

- ``POST /v1/{embeddings,completions,chat/completions,...}``: the JSON body's ``model`` names
  a deployment of the token's workspace; the request goes to the same path on a replica.
- ``GET /v1/models`` and ``GET /v1/models/{name}``: the workspace's deployments as models.
- ``ANY /endpoints/{name}/{path}``: to ``/{path}`` (query kept) on a replica of ``name``.

Anything else is answered 404. Mount the gateway at the root: it matches full paths.

How a request reaches a replica (retries, streaming, disconnects) is described in
:mod:`neocloud.gateway.proxy`; balancing in :mod:`neocloud.gateway.balancing`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import json
import logging
import math
import secrets
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, generate_latest

from neocloud.asgi import (
    ClientDisconnected,
    Headers,
    Receive,
    Scope,
    Send,
    dumps,
    read_body,
    send_error,
    send_json,
)
from neocloud.errors import (
    BudgetExceeded,
    InvalidRequest,
    NeocloudError,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from neocloud.gateway.balancing import BalancingPolicy, ReplicaLoad, make_policy
from neocloud.gateway.cache import MISSING, TTLCache
from neocloud.gateway.client import UpstreamPool
from neocloud.gateway.disconnect import DisconnectWatcher
from neocloud.gateway.metering import (
    ENDPOINTS_PREFIX,
    USAGE_WAIT_S,
    needs_replica_count,
    replica_count,
)
from neocloud.gateway.proxy import CLIENT_GONE, Forwarder
from neocloud.gateway.ratelimit import TokenBucketLimiter
from neocloud.gateway.settings import GatewaySettings
from neocloud.gateway.stats import (
    DeploymentStats,
    GatewayCollector,
    GatewayStats,
)
from neocloud.gateway.tokens import TokenCache
from neocloud.gateway.types import (
    OPENAI_ROUTES,
    Authenticator,
    DurableUsageSink,
    Principal,
    Refusal,
    RefusalSink,
    RequestRecord,
    Route,
    RouteTable,
    UsageSink,
)
from neocloud.gateway.usage import UsageScanner
from neocloud.gateway.wake import Waker

log = logging.getLogger("neocloud.gateway")

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Refusals handed to the :class:`RefusalSink`: who asked (401), their budget (402).
AUDITED_STATUSES = frozenset({401, 402})


#: The field each OpenAI route cannot do without, checked before a replica is chosen so a
#: bad request gets its 400 even while no replica is ready (or a deployment sleeps).
_REQUIRED = {
    "/v1/embeddings": "input",
    "/v1/completions": "prompt",
    "/v1/chat/completions": "messages",
}


def model_of(body: bytes, path: str = "") -> str:
    """The ``model`` field of a JSON request body (and, for the OpenAI routes, a check that
    their main field is present and not empty).

    Raises:
        InvalidRequest: the body is not a JSON object (``code="invalid_json"``), or
            ``model`` is missing or not a non-empty string (``param="model"``), or the
            route's main field (``input``, ``prompt``, ``messages``) is missing or empty.
    """
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    model = obj.get("model")
    if model is None:
        raise InvalidRequest(
            "you must provide a model parameter: the field 'model' is missing",
            param="model",
            code="missing_model",
        )
    if not isinstance(model, str) or not model:
        raise InvalidRequest("the field 'model' must be a non-empty string", param="model")
    field = _REQUIRED.get(path)
    if field is not None:
        value = obj.get(field)
        if value is None:
            raise InvalidRequest(f"you must provide the field '{field}'", param=field,
                                 code="missing_field")
        if value in ("", []):
            raise InvalidRequest(f"the field '{field}' must not be empty", param=field,
                                 code="empty_field")
    return model


def check_serves(route: Route, path: str) -> None:
    """Refuse an OpenAI inference ``path`` that the deployment of ``route`` does not serve
    (chat completions to an embeddings model), before a replica is chosen.

    Raises:
        InvalidRequest: ``param="model"``, ``code="model_not_supported"``, naming what the
            deployment serves.
    """
    if route.serves is None or path not in OPENAI_ROUTES or path in route.serves:
        return
    kinds = " and ".join(f"{OPENAI_ROUTES.get(p, p)} (POST {p})" for p in route.serves)
    raise InvalidRequest(
        f"the model '{route.name}' serves {kinds}, not {OPENAI_ROUTES[path]}: "
        f"POST {path} needs a deployment that serves it",
        param="model",
        code="model_not_supported",
    )


class Gateway:
    """The gateway ASGI application (``await gateway(scope, receive, send)``).

    Build it with :func:`create_gateway`. It handles ASGI ``lifespan`` itself; a host that
    mounts it inside another app calls :meth:`startup` and :meth:`shutdown` instead.
    Every error response is the OpenAI error object of :mod:`neocloud.errors`.
    """

    def __init__(
        self,
        routes: RouteTable,
        auth: Authenticator,
        usage: UsageSink | None = None,
        settings: GatewaySettings | None = None,
        *,
        policy: BalancingPolicy | None = None,
        refusals: RefusalSink | None = None,
    ) -> None:
        self.settings = s = settings or GatewaySettings()
        self._routes = routes
        self._usage = usage
        self._durable = usage if isinstance(usage, DurableUsageSink) else None
        """The sink when it stores requests before they are acted on (see
        :class:`DurableUsageSink`)."""
        self._refusals = refusals
        self._policy = policy or make_policy(s.balancer)
        self._load = ReplicaLoad(s.replica_cooldown_s)
        self._pool = UpstreamPool(
            connect_timeout_s=s.connect_timeout_s,
            max_idle_per_upstream=s.pool_max_idle_per_upstream,
            idle_timeout_s=s.pool_idle_timeout_s,
        )
        self._tokens = TokenCache(auth, s.auth_cache_ttl_s, s.auth_negative_ttl_s)
        self._route_cache: TTLCache[tuple[str, str], Route | None] = TTLCache()
        self._limiter: TokenBucketLimiter | None = None
        if s.rate_limit_per_s is not None:
            burst = s.rate_limit_burst or max(1, math.ceil(s.rate_limit_per_s))
            self._limiter = TokenBucketLimiter(s.rate_limit_per_s, burst)
        self._stats = GatewayStats(s.stats_window_s)
        self.collector = GatewayCollector(self._stats, self._pool.idle_count)
        self._waker = Waker(
            routes, s,
            on_ready=lambda r: self._route_cache.put(
                (r.workspace_id, r.name), r, s.route_cache_ttl_s),
        )
        self._watcher = DisconnectWatcher()
        self._forwarder = Forwarder(
            s, self._pool, self._load, self._policy,
            scan_usage=usage is not None,
            on_unreachable=lambda r: self._route_cache.discard((r.workspace_id, r.name)),
            request_id=self._next_rid,
        )
        self._metering: set[asyncio.Task[None]] = set()  # replica usage look-ups in flight
        self._rid_prefix = secrets.token_hex(8).encode() + b"-"
        self._rid_counter = itertools.count(1)

    # ---------------------------------------------------------------- lifecycle
    async def startup(self) -> None:
        """Called once by the host when it starts serving. Connections are made on demand;
        what is loaded by now lives as long as the process, so it is moved out of the
        garbage collector's view (``gc.freeze``): full collections while proxying then scan
        only per-request garbage, which keeps their pauses out of the latency tail."""
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        """Finish replica usage look-ups (bounded), close pooled connections and stop
        wake-ups in progress."""
        self._waker.close()
        self._watcher.close()
        if self._metering:
            await asyncio.wait(set(self._metering), timeout=USAGE_WAIT_S + 5.0)
        await self._pool.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---------------------------------------------------------------- public state
    def stats(self) -> dict[str, DeploymentStats]:
        """Live statistics of every deployment seen, keyed by deployment id."""
        now = time.time()
        return {d: c.snapshot(self._load, now) for d, c in self._stats.deployments.items()}

    def deployment_stats(self, deployment_id: str) -> DeploymentStats | None:
        """Live statistics of one deployment, ``None`` if no request has reached it."""
        c = self._stats.deployments.get(deployment_id)
        return None if c is None else c.snapshot(self._load, time.time())

    def metrics_text(self) -> bytes:
        """The gateway's metrics in the Prometheus text format (or register ``collector``)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)  # type: ignore[arg-type]
        return generate_latest(registry)

    def invalidate(self, workspace_id: str | None = None) -> None:
        """Forget cached routes (of one workspace, or all); call after a route changes."""
        if workspace_id is None:
            self._route_cache.clear()
            return
        self._route_cache.discard_where(lambda key: key[0] == workspace_id)

    def forget_deployment(self, deployment_id: str) -> None:
        """Drop the statistics of a deleted deployment (they are kept until then)."""
        self._stats.deployments.pop(deployment_id, None)

    def invalidate_tokens(self) -> None:
        """Forget cached token look-ups (and those in flight); call after a token is
        revoked."""
        self._tokens.clear()

    # ---------------------------------------------------------------- ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        started_at = time.time()
        path: str = scope["path"]
        principal: Principal | None = None
        route: Route | None = None
        try:
            if path.startswith("/v1/"):
                principal = await self._authorize(scope)
                if path == "/v1/models" or path.startswith("/v1/models/"):
                    await self._models(scope, send, principal, path)
                    return
                method = scope["method"]
                if method != "POST":
                    raise NotFound(f"no route for {method} {path}", code="unknown_route")
                body = await read_body(receive, self.settings.max_body_bytes, scope["headers"])
                name = model_of(body, path)
                route = await self._resolve(principal.workspace_id, name)
                if route is None:
                    raise NotFound(
                        f"the model '{name}' does not exist in this workspace",
                        param="model",
                        code="model_not_found",
                    )
                check_serves(route, path)
                target = scope.get("raw_path") or path.encode()
                qs = scope.get("query_string")
                if qs:
                    target = target + b"?" + qs
                await self._forward(
                    scope, receive, send, principal, route, method, target, body, True, t0,
                    started_at,
                )
            elif path.startswith(ENDPOINTS_PREFIX):
                principal = await self._authorize(scope)
                name, target = _split_endpoint(scope)
                method = scope["method"]
                body = await read_body(receive, self.settings.max_body_bytes, scope["headers"])
                route = await self._resolve(principal.workspace_id, name)
                if route is None:
                    raise NotFound(
                        f"no deployment named '{name}' in this workspace",
                        code="deployment_not_found",
                    )
                await self._forward(
                    scope, receive, send, principal, route, method, target, body,
                    method in _IDEMPOTENT, t0, started_at,
                )
            else:
                raise NotFound(f"no gateway route for {path}", code="unknown_route")
        except NeocloudError as err:
            self._stats.reject(err.code)
            if err.status in AUDITED_STATUSES and self._refusals is not None:
                await self._audit(scope, err, principal, route)
            await send_error(send, err, _error_headers(err))
        except ClientDisconnected:
            self._stats.reject("client_gone")

    async def _audit(self, scope: Scope, err: NeocloudError, principal: Principal | None,
                     route: Route | None) -> None:
        """Hand a 401/402 refusal to the host's audit log before it is answered."""
        assert self._refusals is not None
        refusal = Refusal(
            method=scope["method"], path=scope["path"], status=err.status, code=err.code,
            workspace_id=principal.workspace_id if principal else None,
            token_id=principal.token_id if principal else None,
            deployment_id=route.deployment_id if route else None)
        try:
            await self._refusals.refused(refusal)
        except Exception:  # the host's code: the refusal is answered all the same
            log.exception("the audit log did not take a %d refusal", err.status)

    # ---------------------------------------------------------------- request steps
    async def _authorize(self, scope: Scope) -> Principal:
        auth: bytes | None = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
                break
        if auth is None or auth[:7].lower() != b"bearer " or not auth[7:].strip():
            raise Unauthenticated(
                "missing API token: send the header 'Authorization: Bearer <token>'",
                code="missing_api_key",
            )
        token = auth[7:].strip().decode("latin-1")
        principal = await self._tokens.principal(token)
        if principal is None:
            raise Unauthenticated("invalid API token")
        if self._limiter is not None:
            wait = self._limiter.acquire(principal.token_id)
            if wait > 0:
                err = RateLimited(
                    f"rate limit of {self._limiter.rate:g} requests/s for this token exceeded;"
                    f" retry in {wait:.2f} s"
                )
                err.retry_after_s = wait  # type: ignore[attr-defined]
                raise err
        return principal

    async def _resolve(self, workspace_id: str, name: str) -> Route | None:
        key = (workspace_id, name)
        hit = self._route_cache.get(key, MISSING)
        if hit is not MISSING:
            return hit  # type: ignore[return-value]
        route = await self._routes.resolve(workspace_id, name)
        if route is not None and route.workspace_id != workspace_id:
            route = None  # a route table must never leak another workspace's deployment
        self._route_cache.put(key, route, self.settings.route_cache_ttl_s)
        return route

    async def _models(self, scope: Scope, send: Send, principal: Principal, path: str) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise NotFound(f"no route for {scope['method']} {path}", code="unknown_route")
        if path == "/v1/models":
            routes = await self._routes.list_routes(principal.workspace_id)
            data = [
                _model_object(r)
                for r in sorted(routes, key=lambda r: r.name)
                if r.workspace_id == principal.workspace_id
            ]
            await send_json(send, 200, dumps({"object": "list", "data": data}))
            return
        name = unquote(path[len("/v1/models/"):])
        route = await self._resolve(principal.workspace_id, name) if name else None
        if route is None:
            raise NotFound(
                f"the model '{name}' does not exist in this workspace",
                param="model",
                code="model_not_found",
            )
        await send_json(send, 200, dumps(_model_object(route)))

    # ---------------------------------------------------------------- forwarding
    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        principal: Principal,
        route: Route,
        method: str,
        target: bytes,
        body: bytes,
        retry_unsent: bool,
        t0: float,
        started_at: float,
    ) -> None:
        if route.refusal is not None:  # budget hard stop of the workspace
            raise BudgetExceeded(route.refusal, param="budget")
        c = self._stats.counters(route.deployment_id, route.workspace_id, route.name)
        c.begin(started_at)
        status = 500
        replica_id: str | None = None
        scanner: UsageScanner | None = None
        started = False
        meter_id = self._next_rid() if self._usage is not None else None
        path: str = scope["path"]
        durable = self._durable
        ended = False  # the request's end was stored before its last bytes were sent
        opened = durable is None  # a durable sink stored the request (else no end to store)

        async def on_end(end_status: int, rid: str, scan: UsageScanner | None) -> None:
            nonlocal ended
            ended = True
            await self._end(principal, route, method, path, end_status, rid, scan,
                            meter_id, time.perf_counter() - t0, started_at)

        flight = self._watcher.begin(receive)
        try:
            if durable is not None:
                await self._open(durable, principal, route, path, started_at, meter_id)
                opened = True
            if not route.upstreams:
                route = await self._waker.hold(route, c)
                if flight.gone:
                    raise ClientDisconnected()
            c.upstreams = route.upstreams
            status, replica_id, scanner, started = await self._forwarder.forward(
                scope, send, route, method, target, body, retry_unsent, flight, meter_id,
                on_end if durable is not None else None,
            )
        except NeocloudError as err:
            status = err.status
            if not started and not flight.gone:
                await send_error(send, err, _error_headers(err))
            elif flight.gone:
                status = CLIENT_GONE
        except ClientDisconnected:
            status = CLIENT_GONE
        finally:
            self._watcher.end(flight)
            latency = time.perf_counter() - t0
            c.end(status, latency)
            if self._usage is not None and opened and not ended:
                how = (principal, route, method, path, status, replica_id, scanner,
                       meter_id, latency, started_at)
                if durable is None:
                    self._end_plain(*how)
                else:  # the answer is out already (an error, a client gone)
                    self._spawn(self._end(*how))

    async def _open(self, sink: DurableUsageSink, principal: Principal, route: Route,
                    path: str, started_at: float, meter_id: bytes | None) -> None:
        """Store the request in the durable sink before it is forwarded.

        Raises:
            Unavailable: the sink did not take it (the request is not forwarded).
        """
        try:
            await sink.opened(self._request_record(
                principal, route, None, path, 0, 0.0, started_at, None, meter_id))
        except Exception as exc:
            # one line per refused request (a database outage refuses every request: a
            # traceback each would bury the log); the traceback at debug level
            log.warning("the usage sink did not take a request before it was forwarded: %r",
                        exc, exc_info=log.isEnabledFor(logging.DEBUG))
            raise Unavailable(
                "the gateway cannot record usage right now, so it does not forward"
                " requests; retry shortly", code="usage_unavailable") from None

    def _ending(
        self, principal: Principal, route: Route, method: str, path: str, status: int,
        replica_id: str | None, scanner: UsageScanner | None, meter_id: bytes | None,
        latency: float, started_at: float,
    ) -> tuple[RequestRecord, str | None]:
        """The record of a request that ended, and the URL of the replica to ask for its
        own count when the bytes may undercount it (see :mod:`.metering`), else None."""
        seen = scanner.found() if scanner is not None else None
        url = next((u.url for u in route.upstreams if u.replica_id == replica_id), None)
        rec = self._request_record(principal, route, replica_id, path, status, latency,
                                   started_at, seen, meter_id)
        counting = (url is not None and meter_id is not None
                    and needs_replica_count(method, path, status, seen is not None))
        return rec, url if counting else None

    def _end_plain(
        self, principal: Principal, route: Route, method: str, path: str, status: int,
        replica_id: str | None, scanner: UsageScanner | None, meter_id: bytes | None,
        latency: float, started_at: float,
    ) -> None:
        """A plain sink: the record now, or after the replica's count."""
        rec, url = self._ending(principal, route, method, path, status, replica_id,
                                scanner, meter_id, latency, started_at)
        if url is not None and meter_id is not None:
            self._spawn(self._record_counted(url, meter_id, rec))
        else:
            self._record(rec)

    async def _end(
        self, principal: Principal, route: Route, method: str, path: str, status: int,
        replica_id: str | None, scanner: UsageScanner | None, meter_id: bytes | None,
        latency: float, started_at: float,
    ) -> None:
        """A durable sink: store how the request ended (never raises: a request whose
        end was not stored stays unfinished there, and the sink recovers it from the
        replica), then, when needed, the replica's own count."""
        rec, url = self._ending(principal, route, method, path, status, replica_id,
                                scanner, meter_id, latency, started_at)
        assert self._durable is not None
        try:
            await self._durable.ended(rec, final=url is None)
        except Exception:
            log.exception("the usage sink did not take how a request ended")
        if url is not None and meter_id is not None:
            self._spawn(self._record_counted(url, meter_id, rec))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` off the request's path (awaited at shutdown with the look-ups)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._metering.add(task)
        task.add_done_callback(self._metering.discard)

    async def _record_counted(self, url: str, meter_id: bytes, rec: RequestRecord) -> None:
        """Record a request with the replica's own count (see :mod:`.metering`), else
        with the tokens the gateway read."""
        counted = await replica_count(self._pool, url, meter_id)
        if counted is not None:
            rec = dataclasses.replace(rec, prompt_tokens=counted[0],
                                      completion_tokens=counted[1])
        if self._durable is None:
            self._record(rec)
            return
        try:
            await self._durable.ended(rec, final=True)
        except Exception:
            log.exception("the usage sink did not take a request's replica count")

    def _request_record(
        self,
        principal: Principal,
        route: Route,
        replica_id: str | None,
        path: str,
        status: int,
        latency: float,
        started_at: float,
        tokens: tuple[int, int] | None,
        meter_id: bytes | None,
    ) -> RequestRecord:
        prompt, completion = tokens or (0, 0)
        return RequestRecord(
            workspace_id=principal.workspace_id,
            token_id=principal.token_id,
            deployment_id=route.deployment_id,
            replica_id=replica_id,
            path=path,
            status=status,
            latency_s=latency,
            prompt_tokens=prompt,
            completion_tokens=completion,
            started_at=started_at,
            request_id=meter_id.decode() if meter_id is not None else None,
        )

    def _record(self, rec: RequestRecord) -> None:
        try:
            assert self._usage is not None
            self._usage.record(rec)
        except Exception:  # the sink is the host's code: never fail a request for it
            log.exception("usage sink failed to take a request record")

    def _next_rid(self) -> bytes:
        return self._rid_prefix + format(next(self._rid_counter), "x").encode()


def _model_object(route: Route) -> dict[str, Any]:
    """The OpenAI model object of a route (``created``: the deployment's creation, Unix
    seconds; ``owned_by``: its workspace's name), marked with whether it can serve now:
    ``ready`` (a replica is ready) and ``servable`` (ready, or woken by a request)."""
    ready = bool(route.upstreams)
    return {"id": route.name, "object": "model", "created": route.created,
            "owned_by": route.owner or route.workspace_id,
            "ready": ready, "servable": ready or (route.can_wake and route.wake_error is None)}


def _split_endpoint(scope: Scope) -> tuple[str, bytes]:
    """``(deployment name, upstream target)`` of an ``/endpoints/{name}/{path}`` request."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    rest = raw[len(ENDPOINTS_PREFIX):]
    cut = rest.find(b"/")
    name_raw, tail = (rest, b"/") if cut < 0 else (rest[:cut], rest[cut:])
    name = unquote(name_raw.decode("latin-1"))
    if not name:
        raise NotFound("missing deployment name: use /endpoints/{name}/{path}",
                       code="deployment_not_found")
    qs = scope.get("query_string")
    return name, (tail + b"?" + qs) if qs else tail


def _error_headers(err: NeocloudError) -> Headers | None:
    if isinstance(err, Unauthenticated):
        return [(b"www-authenticate", b"Bearer")]
    wait = getattr(err, "retry_after_s", None)
    if wait is not None:
        return [(b"retry-after", str(max(1, math.ceil(wait))).encode())]
    return None


def create_gateway(
    routes: RouteTable,
    auth: Authenticator,
    usage: UsageSink | None = None,
    settings: GatewaySettings | None = None,
    *,
    policy: BalancingPolicy | None = None,
    refusals: RefusalSink | None = None,
) -> Gateway:
    """Build the gateway ASGI app over the host's route table, authenticator and usage sink.

    Args:
        routes: resolves deployment names within a workspace (see :class:`RouteTable`).
        auth: turns bearer tokens into principals.
        usage: receives one :class:`RequestRecord` per request routed to a deployment.
        settings: tunables; defaults to :class:`GatewaySettings()`.
        policy: a balancing policy object overriding ``settings.balancer``.
        refusals: receives every 401 and 402 refusal before it is answered (the host's
            audit log).
    """
    return Gateway(routes, auth, usage, settings, policy=policy, refusals=refusals)
