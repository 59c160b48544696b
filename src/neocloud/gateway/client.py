"""A lean HTTP/1.1 client for talking to replicas: pooled keep-alive connections.

Each connection is an :class:`asyncio.Protocol` whose bytes are parsed by ``httptools``
(the llhttp parser, in C), which handles ``Content-Length``, chunked transfer coding and
keep-alive; body pieces are queued as they arrive, so a streamed response (SSE, chunked)
is handed on piece by piece with no buffering beyond what has arrived. Reading pauses
while more than ``HIGH_WATER`` bytes wait to be consumed (back-pressure from a slow client).

Measured against httpx and aiohttp on the same echo replica (see
``benchmarks/gateway/clients.py``), this client is what keeps the gateway's added latency
small; it implements only what the gateway needs: one request at a time per connection,
requests whose bodies are already in memory, plain ``http`` and ``https`` (TLS through
:mod:`ssl`), replicas on Unix domain sockets (``http+unix://`` with the percent-encoded
socket path as host, e.g. ``http+unix://%2Frun%2Frep.sock``: about 1.3x the request rate
of loopback TCP between the same client and server, measured here), and no proxies,
redirects or cookies.

Errors (all carry a message for a person):
    UpstreamConnectError: the TCP (or TLS) connection could not be made; nothing was sent.
    UpstreamClosedError: the connection failed after the request was written;
        ``response_started`` says whether any byte of the response had arrived.
    UpstreamTimeoutError: no response headers within the allowed time.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as _ssl
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class UpstreamConnectError(Exception):
    """The connection to the replica could not be made; the request was not sent."""


class UpstreamClosedError(Exception):
    """The connection broke while the request was being sent or answered.

    Attributes:
        response_started: whether any byte of the response had arrived.
        request_sent: whether the request was handed to the connection (``False`` when a
            pooled connection turned out closed before anything was written).
    """

    def __init__(
        self, message: str, *, response_started: bool, request_sent: bool = True
    ) -> None:
        super().__init__(message)
        self.response_started = response_started
        self.request_sent = request_sent


class UpstreamTimeoutError(Exception):
    """The replica sent no response headers within the allowed time."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed upstream base URL.

    Attributes:
        host / port: where to connect (``host`` is the socket path for Unix sockets).
        tls: whether to speak TLS.
        unix: whether ``host`` is a Unix domain socket path.
        host_header: the ``Host`` header value to send.
        prefix: the URL's path without a trailing slash (``b""`` for none), put in front of
            every request path.
    """

    host: str
    port: int
    tls: bool
    host_header: bytes
    prefix: bytes
    unix: bool = False

    @classmethod
    def parse(cls, url: str) -> Target:
        """Parse ``http(s)://host:port[/prefix]`` or ``http+unix://%2Fpath.sock[/prefix]``.

        Raises:
            ValueError: for other schemes or a missing host.
        """
        parts = urlsplit(url)
        if parts.scheme == "http+unix" and parts.netloc:
            return cls(host=unquote(parts.netloc), port=0, tls=False, host_header=b"localhost",
                       prefix=parts.path.rstrip("/").encode(), unix=True)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"upstream URL must be http(s)://host[:port] or http+unix://PATH, got {url!r}"
            )
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            host_header=parts.netloc.encode("idna") if parts.netloc else b"",
            prefix=parts.path.rstrip("/").encode(),
        )


class Connection(asyncio.Protocol):
    """One keep-alive connection to a replica; carries one request/response at a time."""

    def __init__(self, pool: UpstreamPool, target: Target) -> None:
        self._pool = pool
        self.target = target
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    # -- per-exchange state ------------------------------------------------------------
    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.response_started = False
        self._informational = False
        self._until_eof = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._busy = False

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._busy:  # bytes nobody asked for: the connection cannot be trusted
            self.abort()
            return
        self.response_started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamClosedError("replica switched protocols", response_started=True))
            self.abort()
        except httptools.HttpParserError as exc:
            self._fail(
                UpstreamClosedError(f"invalid HTTP from replica: {exc}", response_started=True)
            )
            self.abort()

    def eof_received(self) -> bool | None:
        if self._busy and self.headers_done and not self.complete and self._until_eof:
            self.complete = True  # a body delimited by the end of the connection ends here
            self.keep_alive = False
            self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self._busy and not self.complete:
            why = f": {exc}" if exc else ""
            self._fail(
                UpstreamClosedError(
                    f"replica closed the connection{why}", response_started=self.response_started
                )
            )

    def pause_writing(self) -> None:  # the request body is in memory; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.headers_done = True
        self._until_eof = not any(
            k == b"content-length" or k == b"transfer-encoding" for k, _ in self.headers
        ) and status not in (204, 304)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # -- used by the proxy -------------------------------------------------------------
    def send(self, head: bytes, body: bytes) -> None:
        """Write one request (``head`` ends with the blank line; ``body`` may be empty)."""
        self._busy = True
        if self.closed or self.transport is None or self.transport.is_closing():
            self._fail(UpstreamClosedError(
                "the pooled connection was closed by the replica",
                response_started=False, request_sent=False,
            ))
            return
        if body and len(body) < 64 * 1024:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            if body:
                self.transport.write(body)

    async def wait_head(self, timeout: float) -> None:
        """Wait for the response headers (``status`` and ``headers`` are then set).

        Raises:
            UpstreamClosedError, UpstreamTimeoutError.
        """
        if self.headers_done:
            return
        timer = self._loop.call_later(timeout, self._on_timeout, timeout)
        try:
            while not self.headers_done:
                if self._error is not None:
                    raise self._error
                self._waiter = self._loop.create_future()
                await self._waiter
        finally:
            timer.cancel()

    def _on_timeout(self, timeout: float) -> None:
        if not self.headers_done:
            self._fail(UpstreamTimeoutError(f"no response headers within {timeout:g} s"))
            self.abort()

    def take(self) -> bytes | None:
        """Every body byte that has arrived and not been taken yet, or ``None`` if none."""
        chunks = self._chunks
        if not chunks:
            return None
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def has_body_ready(self) -> bool:
        return bool(self._chunks)

    async def wait_body(self) -> None:
        """Wait until more body bytes arrive or the response completes.

        Raises:
            UpstreamClosedError, UpstreamTimeoutError: when the connection failed.
        """
        if self._chunks or self.complete:
            return
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        await self._waiter
        if not self._chunks and not self.complete and self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop the connection at once (the replica sees the peer go away)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def release(self) -> None:
        """Give the connection back to its pool if it may carry another request, else close."""
        if self.closed or not self.complete or not self.keep_alive or self._chunks:
            self.abort()
            return
        self._reset()
        self._pool._put_idle(self)


class UpstreamPool:
    """Idle keep-alive connections per upstream ``(host, port, tls)``.

    Args:
        connect_timeout_s: TCP (and TLS) connect timeout, seconds.
        max_idle_per_upstream: idle connections kept per upstream; extra ones are closed.
        idle_timeout_s: idle connections older than this are closed instead of reused.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 3.0,
        max_idle_per_upstream: int = 256,
        idle_timeout_s: float = 4.0,
        ssl_context: _ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle_per_upstream
        self.idle_timeout_s = idle_timeout_s
        self._ssl = ssl_context
        self._idle: dict[tuple[str, int, bool], collections.deque[Connection]] = {}
        self._targets: dict[str, Target] = {}

    def target(self, url: str) -> Target:
        """The parsed form of ``url`` (cached)."""
        t = self._targets.get(url)
        if t is None:
            t = self._targets[url] = Target.parse(url)
        return t

    async def connect(self, target: Target) -> Connection:
        """An idle connection to ``target``, or a new one.

        Raises:
            UpstreamConnectError: when a new connection cannot be made.
        """
        dq = self._idle.get((target.host, target.port, target.tls))
        if dq:
            limit = time.monotonic() - self.idle_timeout_s
            while dq:
                conn = dq.pop()  # most recently used first: older ones age out
                if conn.closed:
                    continue
                if conn.idle_since < limit:
                    conn.abort()
                    continue
                conn.reused = True
                return conn
        loop = asyncio.get_running_loop()
        ssl_ctx: _ssl.SSLContext | None = None
        if target.tls:
            ssl_ctx = self._ssl or _ssl.create_default_context()
        try:
            if target.unix:
                opening = loop.create_unix_connection(
                    lambda: Connection(self, target), target.host
                )
            else:
                opening = loop.create_connection(
                    lambda: Connection(self, target), target.host, target.port, ssl=ssl_ctx
                )
            _, conn = await asyncio.wait_for(opening, self.connect_timeout_s)
        except (TimeoutError, OSError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            where = target.host if target.unix else f"{target.host}:{target.port}"
            raise UpstreamConnectError(f"cannot connect to {where}: {what}") from None
        return conn

    def _put_idle(self, conn: Connection) -> None:
        t = conn.target
        key = (t.host, t.port, t.tls)
        dq = self._idle.get(key)
        if dq is None:
            dq = self._idle[key] = collections.deque()
        while dq and dq[0].closed:
            dq.popleft()
        conn.idle_since = time.monotonic()
        dq.append(conn)
        if len(dq) > self.max_idle:
            dq.popleft().abort()

    def idle_count(self) -> int:
        """Open idle connections across all upstreams."""
        return sum(1 for dq in self._idle.values() for c in dq if not c.closed)

    async def close(self) -> None:
        """Close every idle connection."""
        for dq in self._idle.values():
            while dq:
                dq.pop().abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let transports run their close callbacks
