"""The ASGI application of one replica: a lean router over the service's handlers plus
``/health``, ``/ready``, ``/metrics`` and ``/v1/models``.

Per request the hot path is: one dict lookup for the route, the body read, the handler's
compiled pydantic validator, the handler, orjson, two ``send`` calls. A small watcher task
waits for the client to go away and cancels the request task, so an ``async`` handler (or
the stream generator) stops at its next ``await``; a request that outlives its handler's
``timeout_s`` is cancelled the same way and answered 504.

Lifespan: startup returns at once and ``setup()`` then the warm-up (the ``warmup()`` hook
and each endpoint's declared ``warmup`` call, :mod:`neocloud.serving.warmup`) run in the
background (``/health`` is 200 meanwhile, ``/ready`` 503 until both finished), so a replica
reported ready has loaded what it serves. :meth:`ServingApp.begin_drain` (called on
SIGTERM by the runner) turns ``/ready`` to 503 at once; the server then finishes in-flight
requests within its grace period and the lifespan shutdown calls ``teardown()``.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from neocloud.asgi import (
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    send_error,
    send_json,
    watch_disconnect,
)
from neocloud.errors import (
    NeocloudError,
    NotFound,
    Timeout,
    Unavailable,
)
from neocloud.models.openai import ModelCard, ModelList
from neocloud.serving.batching import TRACKER_ATTR, LoadTracker, batchers_of
from neocloud.serving.handlers import Handler, as_stream
from neocloud.serving.loader import resolve_service
from neocloud.serving.metrics import ServingMetrics
from neocloud.serving.request import Request
from neocloud.serving.responses import (
    SSE,
    STREAM_HEADERS,
    Response,
    Stream,
    dumps,
    raw_chunk,
    sse_event,
)
from neocloud.serving.service import Service, endpoints_of
from neocloud.serving.settings import ServingSettings
from neocloud.serving.warmup import WarmupError, warm_up

log = logging.getLogger("neocloud.serving")

#: Longest wait of ``GET /usage`` for a request to finish (seconds).
MAX_USAGE_WAIT_S = 10.0
_CLIENT_CLOSED = 499  # nginx's code for "client closed request", used in metrics only
_SSE_TYPE = b"text/event-stream; charset=utf-8"


class _Watch:
    """Shared state of one request and its disconnect watcher."""

    __slots__ = ("task", "finished", "disconnected")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.finished = False
        self.disconnected = False

    def on_disconnect(self) -> None:
        """The client went away: cancel the request task unless it already finished."""
        if not self.finished:
            self.disconnected = True
            self.task.cancel()


def _headers(media_type: bytes, length: int | None, extra: list[tuple[bytes, bytes]] | None = None
             ) -> list[tuple[bytes, bytes]]:
    h = [(b"content-type", media_type)]
    if length is not None:
        h.append((b"content-length", str(length).encode()))
    if extra:
        h.extend(extra)
    return h


class ServingApp:
    """ASGI app serving one :class:`Service` instance.

    Args:
        service: the service instance (its ``name``/``model_ref`` already set).
        max_body_bytes: largest request body accepted (bytes); larger ones get 413.
            Default: ``settings.max_body_bytes``.
        settings: the replica's settings (default: read from the environment once, see
            :mod:`neocloud.serving.settings`).
        on_fatal: called with the exception when ``setup()`` fails (the runner exits).
    """

    def __init__(
        self,
        service: Any,
        *,
        max_body_bytes: int | None = None,
        settings: ServingSettings | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.service = service
        self.settings = settings or ServingSettings.from_env()
        self.metrics = ServingMetrics()
        self.tracker = LoadTracker()
        setattr(service, TRACKER_ATTR, self.tracker)
        self.max_body_bytes = max_body_bytes or self.settings.max_body_bytes
        self.on_fatal = on_fatal
        self.ready = False
        self.draining = False
        self.setup_error: str | None = None
        #: Seconds the warm-up took (see :mod:`neocloud.serving.warmup`); None until done.
        self.warmup_s: float | None = None
        self._setup_task: asyncio.Task[None] | None = None
        self._started = False
        self.handlers: list[Handler] = []
        self.routes: dict[str, dict[str, Any]] = {}
        for attr, fn, spec in endpoints_of(service):
            route = spec.path or f"/{attr}"
            h = Handler(attr, fn, spec, owner=service, observer=self.metrics.observer(route))
            if h.method in self.routes.get(h.path, {}):
                raise ValueError(f"two handlers for {h.method} {h.path}")
            self.routes.setdefault(h.path, {})[h.method] = h
            self.handlers.append(h)
        builtin = {
            "/health": self._health,
            "/ready": self._ready,
            "/metrics": self._metrics,
            "/v1/models": self._models,
            "/usage": self._usage,
        }
        for path, fn in builtin.items():
            methods = self.routes.setdefault(path, {})
            methods.setdefault("GET", fn)
            methods.setdefault("HEAD", fn)

    # ------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        """Start ``setup()`` in the background (idempotent); returns at once."""
        if self._started:
            return
        self._started = True
        self._setup_task = asyncio.get_running_loop().create_task(self._run_setup())

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until ``setup()`` finished (for in-process use and tests).

        Raises:
            RuntimeError: setup failed.
            TimeoutError: not ready within ``timeout_s`` seconds.
        """
        await self.startup()
        assert self._setup_task is not None
        await asyncio.wait_for(asyncio.shield(self._setup_task), timeout_s)
        if self.setup_error:
            raise RuntimeError(f"setup failed: {self.setup_error}")

    async def _run_setup(self) -> None:
        setup = getattr(self.service, "setup", None)
        try:
            if setup is not None:
                if inspect.iscoroutinefunction(setup):
                    await setup()
                else:
                    await asyncio.to_thread(setup)
            self.warmup_s = await warm_up(self.service, self.handlers)
        except Exception as exc:
            self.setup_error = (str(exc) if isinstance(exc, WarmupError)
                                else f"{type(exc).__name__}: {exc}")
            log.exception("start-up of %s failed", type(self.service).__name__)
            if self.on_fatal is not None:
                self.on_fatal(exc)
            return
        # Everything loaded so far (modules, the model's Python objects) lives as long as the
        # replica: move it out of the collector's view, so full collections while serving
        # scan only per-request garbage (shorter pauses, a shorter latency tail). CPython's
        # gc.freeze, documented for exactly this use after start-up.
        gc.collect()
        gc.freeze()
        self.ready = not self.draining
        self.metrics.ready = self.ready
        log.info("%s is ready (serving %s)", getattr(self.service, "name", "service"),
                 ", ".join(sorted(p for p in self.routes)))

    def begin_drain(self) -> None:
        """Stop reporting ready (``/ready`` answers 503 from now on)."""
        self.draining = True
        self.ready = False
        self.metrics.ready = False

    async def shutdown(self) -> None:
        """Drain flag, stop batchers, then ``teardown()`` (sync ones in a thread)."""
        self.begin_drain()
        if self._setup_task is not None and not self._setup_task.done():
            self._setup_task.cancel()
            try:
                await self._setup_task
            except (asyncio.CancelledError, Exception):
                pass
        for h in self.handlers:
            if h.batcher is not None:
                await h.batcher.close()
            if h.executor is not None:
                h.executor.shutdown(wait=False)
        for b in batchers_of(self.service):
            await b.close()
        teardown = getattr(self.service, "teardown", None)
        if teardown is not None:
            try:
                if inspect.iscoroutinefunction(teardown):
                    await teardown()
                else:
                    await asyncio.to_thread(teardown)
            except Exception:
                log.exception("teardown() failed")

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            methods = self.routes.get(scope["path"])
            if methods is None:
                await self._drain_body(receive)
                await send_error(send, NotFound(f"no route {scope['path']}", code="not_found"))
                return
            h = methods.get(scope["method"])
            if h is None:
                await self._drain_body(receive)
                body = dumps({"error": {
                    "message": f"{scope['method']} is not allowed on {scope['path']}",
                    "type": "invalid_request_error", "param": None,
                    "code": "method_not_allowed"}})
                await send_json(send, 405, body)
                return
            if isinstance(h, Handler):
                await self._serve(h, scope, receive, send)
            else:
                await h(scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not served
            return

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _drain_body(self, receive: Receive) -> None:
        more = True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            more = msg.get("more_body", False)

    async def _serve(self, h: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        m = self.metrics
        tracker = self.tracker
        started = time.perf_counter()
        tracker.active += 1
        m.in_flight += 1
        status = 500
        task = asyncio.current_task()
        assert task is not None
        state = _Watch(task)
        watcher: asyncio.Task[None] | None = None
        try:
            body = await read_body(receive, self.max_body_bytes)
            if not self.ready:
                raise Unavailable(
                    "the replica is shutting down" if self.draining
                    else f"the replica is not ready yet ({self.setup_error or 'loading'})",
                    code="not_ready",
                )
            req = Request(scope["method"], scope["path"], scope["query_string"],
                          scope["headers"], body)
            watcher = asyncio.get_running_loop().create_task(
                watch_disconnect(receive, state)
            )
            if h.timeout_s is None:
                result = await h.invoke(req)
                stream = as_stream(result, h.media_type)
                first: Any = None
                if stream is not None:
                    first = await _first_item(stream)
            else:
                try:
                    async with asyncio.timeout(h.timeout_s):
                        result = await h.invoke(req)
                        stream = as_stream(result, h.media_type)
                        first = None
                        if stream is not None:
                            first = await _first_item(stream)
                except TimeoutError:
                    raise Timeout(
                        f"{h.path} did not answer within {h.timeout_s:g} s", code="timeout"
                    ) from None
            if stream is None:
                status = await self._send_result(result, send)
            else:
                status = await self._send_stream(stream, first, send, h, state)
        except asyncio.CancelledError:
            if state.disconnected:
                task.uncancel()
                status = _CLIENT_CLOSED
            elif self.draining:  # cut by the end of the drain grace before any byte went out
                task.uncancel()
                err = drain_cut_error(self.settings.grace_period_s)
                status = err.status
                await send_error(send, err)
            else:
                raise
        except ClientDisconnected:
            status = _CLIENT_CLOSED
        except NeocloudError as exc:
            status = exc.status
            await send_error(send, exc)
        except Exception as exc:
            log.exception("handler %s failed", h.path)
            status = 500
            await send_error(send, NeocloudError(f"{type(exc).__name__}: {exc}"))
        finally:
            state.finished = True
            if watcher is not None:
                watcher.cancel()
            tracker.active -= 1
            m.in_flight -= 1
            m.requests.inc(1, h.path, str(status))
            m.latency.observe(time.perf_counter() - started, h.path)

    async def _send_result(self, result: Any, send: Send) -> int:
        if isinstance(result, Response):
            body = result.body()
            extra = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                     for k, v in result.headers.items()]
            await send({"type": "http.response.start", "status": result.status,
                        "headers": _headers(result.media_type.encode(), len(body), extra)})
            await send({"type": "http.response.body", "body": body})
            return result.status
        if isinstance(result, bytes | bytearray | memoryview):
            body = bytes(result)
            await send({"type": "http.response.start", "status": 200,
                        "headers": _headers(b"application/octet-stream", len(body))})
            await send({"type": "http.response.body", "body": body})
            return 200
        await send_json(send, 200, dumps(result))
        return 200

    async def _send_stream(self, stream: Stream, first: Any, send: Send, h: Handler,
                           state: _Watch) -> int:
        """Send ``stream``; returns the status recorded in the metrics.

        A stream still running when the server cancels it at the end of the drain grace
        period ends, for SSE, with a final ``data: {"error": ...}`` event (code
        ``drain_timeout``) and a clean end of the body, never a bare reset."""
        sse = stream.media_type == SSE
        frame = sse_event if sse else raw_chunk
        extra = list(STREAM_HEADERS)
        extra.extend((k.lower().encode("latin-1"), v.encode("latin-1"))
                     for k, v in stream.headers.items())
        ctype = _SSE_TYPE if sse else stream.media_type.encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": _headers(ctype, None, extra)})
        it = stream.items
        status = 200
        try:
            if first is not _END:
                await send({"type": "http.response.body", "body": frame(first),
                            "more_body": True})
                if hasattr(it, "__anext__"):
                    async for item in it:  # type: ignore[union-attr]
                        await send({"type": "http.response.body", "body": frame(item),
                                    "more_body": True})
                else:
                    while True:
                        item = await _next_sync(it)
                        if item is _END:
                            break
                        await send({"type": "http.response.body", "body": frame(item),
                                    "more_body": True})
        except asyncio.CancelledError:
            if not (self.draining and not state.disconnected):
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.warning("stream %s cut: still running %g s after the drain began", h.path,
                        self.settings.grace_period_s)
            if sse:
                await send({"type": "http.response.body", "body": sse_event(
                    drain_cut_error(self.settings.grace_period_s).to_wire()),
                    "more_body": True})
            status = Unavailable.status
        except NeocloudError as exc:
            if sse:
                await send({"type": "http.response.body", "body": sse_event(exc.to_wire()),
                            "more_body": True})
            log.warning("stream %s ended with %r", h.path, exc)
        except Exception as exc:
            log.exception("stream %s failed", h.path)
            if sse:
                err = NeocloudError(f"{type(exc).__name__}: {exc}")
                await send({"type": "http.response.body", "body": sse_event(err.to_wire()),
                            "more_body": True})
        finally:
            await _close(it)
        await send({"type": "http.response.body", "body": b""})
        return status

    # ------------------------------------------------------------------ built-in routes
    async def _health(self, scope: Scope, send: Send) -> None:
        await send_json(send, 200, b'{"status":"ok"}')

    async def _ready(self, scope: Scope, send: Send) -> None:
        if self.ready:
            await send_json(send, 200, b'{"status":"ready"}')
            return
        reason = ("draining" if self.draining else
                  "failed" if self.setup_error else "loading")
        body = {"status": reason}
        if self.setup_error:
            body["error"] = self.setup_error
        await send_json(send, 503, dumps(body))

    async def _metrics(self, scope: Scope, send: Send) -> None:
        body = self.metrics.render()
        engine = getattr(self.service, "render_metrics", None)
        if callable(engine):
            body += engine()
        await send({"type": "http.response.start", "status": 200,
                    "headers": _headers(b"text/plain; version=0.0.4; charset=utf-8", len(body))})
        await send({"type": "http.response.body", "body": body})

    async def _usage(self, scope: Scope, send: Send) -> None:
        """``GET /usage?id=METER_ID[&wait_s=S]``: the engine's token count of one request
        (``{"prompt_tokens", "completion_tokens", "finished"}``), waiting up to ``S``
        seconds (at most :data:`MAX_USAGE_WAIT_S`) for it to finish; 404 for an id the
        service does not know (or a service that does not meter)."""
        lookup = getattr(self.service, "usage", None)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        meter = query.get("id", "")
        try:
            wait_s = min(MAX_USAGE_WAIT_S, max(0.0, float(query.get("wait_s", "0"))))
        except ValueError:
            wait_s = 0.0
        found = lookup(meter) if callable(lookup) and meter else None
        deadline = time.monotonic() + wait_s
        while found is not None and not found.get("finished") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            found = lookup(meter)
        if found is None:
            await send_error(send, NotFound(f"no usage for request {meter!r}", param="id"))
            return
        await send_json(send, 200, dumps(found))

    async def _models(self, scope: Scope, send: Send) -> None:
        names = self.service.model_names() if hasattr(self.service, "model_names") else [
            getattr(self.service, "name", "service")]
        created = int(getattr(self.service, "created", 0) or 0)
        body = ModelList(data=[ModelCard(id=n, created=created) for n in names])
        await send_json(send, 200, dumps(body))


_END = object()


def drain_cut_error(grace_s: float) -> Unavailable:
    """The final SSE event of a stream cut because the replica's drain grace ran out."""
    return Unavailable(
        f"the replica stopped: this stream was still running {grace_s:g} s after the"
        " replica began to drain (its drain timeout) and was cut; retry the request",
        code="drain_timeout",
    )


async def _next_sync(it: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, next, it, _END)


async def _first_item(stream: Stream) -> Any:
    """The first item of ``stream`` (``_END`` when empty); errors surface before headers."""
    it = stream.items
    if hasattr(it, "__anext__"):
        try:
            return await it.__anext__()  # type: ignore[union-attr]
        except StopAsyncIteration:
            return _END
    if not hasattr(it, "__next__"):
        it = stream.items = iter(it)  # type: ignore[assignment,arg-type]
    return await _next_sync(it)


async def _close(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing a stream failed", exc_info=True)
        return
    close = getattr(it, "close", None)
    if close is not None:
        close()


def build_app(
    service: Any,
    *,
    name: str | None = None,
    model: str | None = None,
    max_body_bytes: int | None = None,
    settings: ServingSettings | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> ServingApp:
    """Build the ASGI app of a replica.

    Args:
        service: a service reference (see :mod:`neocloud.serving.loader`), a service
            class, or an instance.
        name: the served name; default ``settings.served_model_name``, else the service's
            default name.
        model: the model reference passed to the service (``--model``).
        max_body_bytes: largest accepted body in bytes (default ``settings.max_body_bytes``).
        settings: the replica's settings, built once by the runner (default: read from the
            environment now). A service class whose ``__init__`` takes a ``settings``
            argument gets them.
        on_fatal: called when ``setup()`` raises.

    Raises:
        ValueError: unknown reference, or two handlers on one method and path.
        TypeError: a handler signature the runtime cannot serve.
    """
    settings = settings or ServingSettings.from_env()
    default_name = None
    if isinstance(service, str):
        service, default_name = resolve_service(service)
    if isinstance(service, type):
        default_name = default_name or _class_name(service)
        service = service(settings=settings) if _takes_settings(service) else service()
    default_name = default_name or getattr(service, "name", None) or _class_name(type(service))
    if default_name == Service.name and type(service) is not Service:
        default_name = type(service).__name__.lower()
    service.name = name or settings.served_model_name or default_name
    if model is not None or not hasattr(service, "model_ref"):
        service.model_ref = model
    return ServingApp(service, max_body_bytes=max_body_bytes, settings=settings,
                      on_fatal=on_fatal)


def _takes_settings(cls: type) -> bool:
    """Whether ``cls.__init__`` has a ``settings`` parameter that can be passed by name."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "settings" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params)


def _class_name(cls: type) -> str:
    own = vars(cls).get("name")
    return own if isinstance(own, str) and own else cls.__name__.lower()


__all__ = ["ServingApp", "build_app"]
