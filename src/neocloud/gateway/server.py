"""A small HTTP/1.1 server for ASGI apps, used by standalone gateway copies.

Why not uvicorn here: profiling the gateway under load showed about half of its CPU time
in socket writes, and uvicorn writes a response's head and body with separate system
calls. This server holds the head back until the first body message and writes both
with one call, so a small response costs one write instead of two (see
``benchmarks/gateway/overhead.py``, which runs the gateway under both servers). The
gateway itself is a plain ASGI app and runs unchanged under uvicorn inside the control
plane.

What it implements: HTTP/1.1 and 1.0 keep-alive (idle timeout), pipelined requests
(answered in order), request bodies streamed to ``receive()`` with read back-pressure,
``Content-Length`` or chunked responses (chunked when the app gives no length),
``Expect: 100-continue``, ``HEAD``/204/304 without bodies, write back-pressure,
``http.disconnect`` on a closed connection, ASGI ``lifespan`` and graceful shutdown. Not
implemented: WebSocket and other upgrades (answered 501), TLS, HTTP/2. Requests are
parsed by ``httptools`` (llhttp); malformed requests get 400 and the connection closes.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httptools

log = logging.getLogger("neocloud.gateway.server")

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
     Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]

READ_HIGH_WATER = 1024 * 1024  # request body bytes buffered before reading pauses
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line


class _Clock:
    """The ``Date`` header, formatted at most once a second."""

    def __init__(self) -> None:
        self._sec = 0
        self._header = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._sec:
            self._sec = now
            self._header = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + (
                b"\r\n")
        return self._header


class ServerState:
    """Connections and in-flight requests of one server (used for graceful shutdown)."""

    def __init__(self, keep_alive_s: float) -> None:
        self.keep_alive_s = keep_alive_s
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.clock = _Clock()
        self.closing = False


class _Cycle:
    """One request/response exchange: the ASGI ``receive`` and ``send`` of one request."""

    __slots__ = (
        "proto", "scope", "body", "body_len", "more_body", "final_sent", "disconnected",
        "started", "complete", "chunked", "expected", "keep_alive", "expect_100",
        "status", "headers", "waiter", "is_head",
    )

    def __init__(self, proto: HttpProtocol, scope: dict[str, Any], keep_alive: bool,
                 expect_100: bool) -> None:
        self.proto = proto
        self.scope = scope
        self.body: list[bytes] = []
        self.body_len = 0
        self.more_body = True
        self.final_sent = False
        self.disconnected = False
        self.started = False
        self.complete = False
        self.chunked = False
        self.expected = -1
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.waiter: asyncio.Future[None] | None = None
        self.is_head = scope["method"] == "HEAD"

    def wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def receive(self) -> dict[str, Any]:
        proto = self.proto
        if self.expect_100 and not self.started:
            self.expect_100 = False
            proto.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
            if self.body or (not self.more_body and not self.final_sent):
                break
            if self.more_body:  # else the request was delivered: wait for the end
                proto.resume_reading()
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []
        self.body_len = 0
        if not self.more_body:
            self.final_sent = True
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            self.started = True
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
            return
        if self.complete:
            raise RuntimeError(f"{kind!r} sent after the response completed")
        if kind != "http.response.body":
            raise RuntimeError(f"expected 'http.response.body', got {kind!r}")
        if self.disconnected:
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        out: list[bytes] = []
        if self.status:
            out.append(self._head())
            self.status = 0
        if self.is_head:
            body = b""
        if self.chunked:
            if body:
                out += (b"%x\r\n" % len(body), body, b"\r\n")
            if not more:
                out.append(b"0\r\n\r\n")
        elif body:
            if self.expected >= 0:
                self.expected -= len(body)
                if self.expected < 0:
                    raise RuntimeError("response body longer than its Content-Length")
            out.append(body)
        if out:
            self.proto.write(out[0] if len(out) == 1 else b"".join(out))
        if not more:
            if self.expected > 0 and not self.is_head:
                raise RuntimeError("response body shorter than its Content-Length")
            self.complete = True
            self.wake()
            self.proto.response_complete(self)
        elif self.proto.write_paused:
            await self.proto.drain()

    def _head(self) -> bytes:
        status = self.status
        parts = [_status_line(status)]
        has_length = has_date = False
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                has_length = True
                self.expected = int(value)
            elif lname == b"transfer-encoding":
                continue  # framing is this server's job
            elif lname == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue
            elif lname == b"date":
                has_date = True
            parts += (lname, b": ", value, b"\r\n")
        no_body = self.is_head or status in (204, 304) or status < 200
        if not has_length and not no_body:
            if self.scope["http_version"] == "1.0":
                self.keep_alive = False  # no chunked coding in HTTP/1.0: the close ends it
            else:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        if not has_date:
            parts.append(self.proto.state.clock.date())
        if not self.keep_alive or self.proto.state.closing:
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.cycle: _Cycle | None = None  # the exchange being answered
        self.parsing: _Cycle | None = None  # the exchange whose request is being read
        self.pipeline: collections.deque[_Cycle] = collections.deque()
        self.read_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- transport events --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = tuple(peer[:2]) if isinstance(peer, tuple) else None  # type: ignore[assignment]
        self.server = tuple(local[:2]) if isinstance(local, tuple) else None  # type: ignore[assignment]
        self.state.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self._disarm_idle()
        for cycle in (self.cycle, self.parsing, *self.pipeline):
            if cycle is not None:
                cycle.disconnected = True
                cycle.wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._disarm_idle()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, b"protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reject(400, f"invalid HTTP request: {exc}".encode())

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def drain(self) -> None:
        if self.write_paused and self.transport is not None and not self.transport.is_closing():
            if self._drain is None:
                self._drain = self.loop.create_future()
            await self._drain

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _reject(self, status: int, message: bytes) -> None:
        if self.cycle is None or not self.cycle.started:
            body = b'{"error":{"message":"' + message.replace(b'"', b"'") + (
                b'","type":"invalid_request_error","param":null,"code":"bad_http"}}')
            self.write(_status_line(status) + b"content-type: application/json\r\n"
                       b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        if self.transport is not None:
            self.transport.close()

    # -- keep-alive ----------------------------------------------------------------------
    def _arm_idle(self) -> None:
        self._disarm_idle()
        self._idle_timer = self.loop.call_later(self.state.keep_alive_s, self._idle_close)

    def _disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_close(self) -> None:
        self._idle_timer = None
        if self.cycle is None and self.parsing is None and self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Close now if idle, else after the response in progress."""
        if self.cycle is None and self.parsing is None and self.transport is not None:
            self.transport.close()

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        parsed = httptools.parse_url(self.url)
        raw_path: bytes = parsed.path
        expect_100 = False
        for k, v in self.headers:
            if k == b"expect" and v.lower() == b"100-continue":
                expect_100 = True
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": parser.get_http_version(),
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": unquote(raw_path.decode("latin-1")) if b"%" in raw_path else
            raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "headers": self.headers,
        }
        cycle = _Cycle(self, scope, parser.should_keep_alive(), expect_100)
        self.parsing = cycle
        if self.cycle is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.complete:
            return
        cycle.body.append(body)
        cycle.body_len += len(body)
        if cycle.body_len > READ_HIGH_WATER:
            self._pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        self.parsing = None
        if cycle is None:
            return
        cycle.more_body = False
        cycle.wake()
        if self.cycle is None and not self.pipeline:  # answered before its body was read
            self._arm_idle()

    # -- running the app ---------------------------------------------------------------
    def _start(self, cycle: _Cycle) -> None:
        self.cycle = cycle
        task = self.loop.create_task(self._run(cycle))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    async def _run(self, cycle: _Cycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("ASGI app failed on %s %s", cycle.scope["method"],
                              cycle.scope["path"])
            if not cycle.started and not cycle.disconnected:
                cycle.keep_alive = False
                await cycle.send({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"21")]})
                await cycle.send({"type": "http.response.body",
                                  "body": b"Internal Server Error"})
            elif not cycle.complete and self.transport is not None:
                self.transport.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not cycle.complete and not cycle.disconnected and self.transport is not None:
            log.error("ASGI app returned without completing the response to %s %s",
                      cycle.scope["method"], cycle.scope["path"])
            self.transport.close()

    def response_complete(self, cycle: _Cycle) -> None:
        if cycle is not self.cycle:
            return
        self.cycle = None
        if self.transport is None or self.transport.is_closing():
            return
        if not cycle.keep_alive or self.state.closing:
            self.transport.close()
            return
        if self.pipeline:
            self._start(self.pipeline.popleft())
            if not self.pipeline:
                self.resume_reading()
            return
        self.resume_reading()
        if self.parsing is None:
            self._arm_idle()


class _Lifespan:
    """Runs the app's ASGI lifespan protocol; apps that do not speak it are tolerated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events: dict[str, asyncio.Event] = {
            k: asyncio.Event() for k in ("startup", "shutdown")
        }
        self.failed: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async def send(msg: dict[str, Any]) -> None:
            kind = msg["type"]
            if kind.endswith(".failed"):
                self.failed = msg.get("message", kind)
            for phase in ("startup", "shutdown"):
                if kind.startswith(f"lifespan.{phase}."):
                    self.events[phase].set()

        try:
            await self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                           self.inbox.get, send)
        except Exception:
            log.debug("app does not support lifespan", exc_info=True)
        finally:
            for e in self.events.values():
                e.set()

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        await self.events["startup"].wait()
        if self.failed:
            raise RuntimeError(f"application startup failed: {self.failed}")

    async def shutdown(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.events["shutdown"].wait()
        if self.task is not None:
            self.task.cancel()


async def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    keep_alive_s: float = 5.0,
    graceful_s: float = 10.0,
    stop: asyncio.Event | None = None,
    started: Callable[[list[socket.socket]], None] | None = None,
) -> None:
    """Serve ``app`` until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None).

    Args:
        sock: an already bound listening socket to use instead of ``host``/``port``.
        reuse_port: bind with ``SO_REUSEPORT`` so several processes share the port.
        keep_alive_s: idle keep-alive connections are closed after this many seconds.
        graceful_s: on stop, requests in flight get this long to finish.
        started: called with the listening sockets once the server accepts connections.
    """
    loop = asyncio.get_running_loop()
    state = ServerState(keep_alive_s)
    lifespan = _Lifespan(app)
    await lifespan.startup()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    if sock is not None:
        server = await loop.create_server(lambda: HttpProtocol(app, state), sock=sock,
                                          backlog=2048)
    else:
        server = await loop.create_server(lambda: HttpProtocol(app, state), host, port,
                                          reuse_port=reuse_port or None, backlog=2048)
    if started is not None:
        started(list(server.sockets))
    try:
        await stop.wait()
    finally:
        state.closing = True
        server.close()
        for conn in list(state.connections):
            conn.shutdown()
        deadline = loop.time() + graceful_s
        while state.tasks and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.close()
        for task in list(state.tasks):
            task.cancel()
        await lifespan.shutdown()
