"""Forwarding one request to a replica and relaying its response.

Retries: a replica that refuses the connection is put in cooldown and the request goes
to another replica (up to ``max_attempts``) — nothing was sent, so this is always safe.
When the connection breaks after the request was sent but before any response byte, the
request is retried elsewhere only when the caller says repeating it is harmless
(``retry_unsent``): the gateway passes that for idempotent methods (GET, HEAD, OPTIONS,
PUT, DELETE) and for the OpenAI inference routes under ``/v1`` (they compute and change
nothing); a ``POST``/``PATCH`` to a deployment's own path gets 502 instead. Once a
response byte has arrived nothing is retried.

Streaming: response bytes are sent on as they arrive (SSE and chunked responses stay
incremental; bytes that arrived together are sent together). When the replica fails
after the response headers went out, an event stream (SSE) ends with a final
``data: {"error": ...}`` event and a clean end of the body; any other body is cut (the only
honest signal left); either way the request is recorded as 502. When the client goes away (see
:mod:`neocloud.gateway.disconnect`) the replica connection is aborted and the request is
recorded as 499 — unless an event stream had already relayed its final ``data: [DONE]``
event (clients such as OpenAI's close right after it, often before the replica's end of
body arrives): that request was answered in full and keeps its status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from neocloud.asgi import ClientDisconnected, Headers, Scope, Send
from neocloud.errors import NoReadyReplica, Timeout, UpstreamError
from neocloud.gateway.balancing import BalancingPolicy, ReplicaLoad
from neocloud.gateway.client import (
    Connection,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamTimeoutError,
)
from neocloud.gateway.disconnect import Flight
from neocloud.gateway.metering import METER_HEADER
from neocloud.gateway.settings import GatewaySettings
from neocloud.gateway.types import Route
from neocloud.gateway.usage import UsageScanner
from neocloud.gateway.wire import request_head, request_headers, response_headers

log = logging.getLogger("neocloud.gateway")

#: Called just before the last bytes of a response relayed in full (or of an event stream
#: the replica cut) are sent: ``(status, replica id, usage scanner or None)``. The gateway
#: stores the request's usage there, so it is stored before the client has its answer.
OnEnd = Callable[[int, str, "UsageScanner | None"], Awaitable[None]]

CLIENT_GONE = 499  # nginx's convention for "client closed request"
#: The last event of an OpenAI stream; a client may close as soon as it has read it.
_SSE_DONE = b"data: [DONE]\n\n"
_SSE_DONE_CRLF = b"data: [DONE]\r\n\r\n"


def stream_cut_event(tail: bytes) -> bytes:
    """The final SSE event sent when the replica's connection broke mid-stream
    (``data: {"error": ...}``, code ``replica_stream_cut``); ``tail`` is the end of what
    was relayed: an event left open is closed first, so the error is an event of its own."""
    err = UpstreamError(
        "the replica serving this stream stopped before the stream ended (it was stopped"
        " or crashed); the output above is incomplete; retry the request",
        code="replica_stream_cut",
    )
    lead = b"" if tail.endswith(b"\n\n") else b"\n" if tail.endswith(b"\n") else b"\n\n"
    return lead + b"data: " + json.dumps(err.to_wire(), separators=(",", ":")).encode() \
        + b"\n\n"


class Forwarder:
    """Sends requests to replicas and relays responses (one per gateway).

    Args:
        settings: the gateway settings (attempts, timeouts, usage scan size).
        pool: keep-alive connections to replicas.
        load: outstanding requests and cooldowns per replica.
        policy: picks a replica among candidates.
        scan_usage: keep bytes for token counting (only when a usage sink listens).
        on_unreachable: called with a route none of whose replicas accepted a connection.
        request_id: makes an ``X-Request-Id`` for requests that carry none.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        pool: UpstreamPool,
        load: ReplicaLoad,
        policy: BalancingPolicy,
        *,
        scan_usage: bool,
        on_unreachable: Callable[[Route], None],
        request_id: Callable[[], bytes],
    ) -> None:
        self.settings = settings
        self._pool = pool
        self._load = load
        self._policy = policy
        self._scan_usage = scan_usage
        self._on_unreachable = on_unreachable
        self._next_rid = request_id

    async def forward(
        self,
        scope: Scope,
        send: Send,
        route: Route,
        method: str,
        target: bytes,
        body: bytes,
        retry_unsent: bool,
        flight: Flight,
        meter_id: bytes | None = None,
        on_end: OnEnd | None = None,
    ) -> tuple[int, str | None, UsageScanner | None, bool]:
        """Send the request to a replica of ``route`` and stream its response to the client.

        Args:
            target: path and query to request, relative to the replica's base URL.
            retry_unsent: whether the request may be repeated when a connection breaks
                before any response byte (see module doc).
            meter_id: sent as ``X-Neocloud-Meter-Id`` (see :mod:`.metering`).
            on_end: see :data:`OnEnd` (not called when the client left first, nor for a
                body cut without an end).

        Returns:
            ``(status, replica_id, usage scanner or None, response started)``.

        Raises:
            NeocloudError: only before the response started (503, 502, 504).
            ClientDisconnected: the client left before the response started.
        """
        s = self.settings
        load = self._load
        hdrs: Headers = request_headers(
            scope["headers"], scope.get("client"), scope.get("scheme", "http"), self._next_rid
        )
        if meter_id is not None:
            hdrs.append((METER_HEADER, meter_id))
        tried: set[str] | None = None
        attempt = 0
        while True:
            attempt += 1
            candidates = load.candidates(route.upstreams, tried)
            if not candidates:
                raise NoReadyReplica(f"no replica of deployment '{route.name}' is reachable")
            up = self._policy.choose(candidates, load)
            rid = up.replica_id
            tgt = self._pool.target(up.url)
            load.begin(rid)
            try:
                conn = await self._pool.connect(tgt)
            except UpstreamConnectError as exc:
                load.end(rid)
                load.mark_failed(rid)
                if tried is None:
                    tried = set()
                tried.add(rid)
                if flight.gone:
                    raise ClientDisconnected() from None
                if attempt < s.max_attempts and len(tried) < len(route.upstreams):
                    continue
                self._on_unreachable(route)
                raise NoReadyReplica(
                    f"no replica of deployment '{route.name}' accepted a connection"
                    f" (last: {exc})"
                ) from None
            if flight.gone:
                load.end(rid)
                conn.abort()
                raise ClientDisconnected()
            flight.conn = conn
            conn.send(
                request_head(method, tgt.prefix + target, tgt.host_header, hdrs, len(body)),
                body,
            )
            try:
                await conn.wait_head(s.response_timeout_s)
            except UpstreamTimeoutError:
                load.end(rid)
                flight.conn = None
                conn.abort()
                raise Timeout(
                    f"replica {rid} of deployment '{route.name}' sent no response within"
                    f" {s.response_timeout_s:g} s"
                ) from None
            except UpstreamClosedError as exc:
                load.end(rid)
                flight.conn = None
                if flight.gone:
                    raise ClientDisconnected() from None
                if (
                    not exc.response_started
                    and (retry_unsent or not exc.request_sent)
                    and attempt < s.max_attempts
                ):
                    if not conn.reused:  # a fresh connection broke: suspect the replica
                        load.mark_failed(rid)
                        if tried is None:
                            tried = set()
                        tried.add(rid)
                    continue
                raise UpstreamError(
                    f"replica {rid} of deployment '{route.name}' failed before"
                    f" responding: {exc}"
                ) from None
            break
        load.mark_ok(rid)
        try:
            return await self._relay(send, conn, method, flight, rid, on_end)
        finally:
            load.end(rid)
            flight.conn = None
            conn.release()


    async def _relay(
        self, send: Send, conn: Connection, method: str, flight: Flight, rid: str,
        on_end: OnEnd | None = None,
    ) -> tuple[int, str | None, UsageScanner | None, bool]:
        status = conn.status
        headers, ctype = response_headers(conn.headers)
        scanner: UsageScanner | None = None
        if status == 200 and ctype and self._scan_usage:
            if ctype.startswith(b"text/event-stream"):
                scanner = UsageScanner(self.settings.usage_scan_bytes, keep_head=False)
            elif ctype.startswith(b"application/json"):
                scanner = UsageScanner(self.settings.usage_scan_bytes, keep_head=True)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if method == "HEAD":
            if on_end is not None:
                await on_end(status, rid, None)
            flight.done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            conn.abort()  # the parser cannot know the response had no body: do not reuse
            return status, rid, None, True
        sse = bool(ctype) and ctype.startswith(b"text/event-stream")
        tail = b"\n\n"  # the end of what was relayed (SSE: whether an event was left open)
        try:
            while True:
                data = conn.take()
                if data is None:
                    if conn.complete:
                        if on_end is not None:
                            await on_end(status, rid, scanner)
                        flight.done = True
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        break
                    await conn.wait_body()
                    continue
                if scanner is not None:
                    scanner.feed(data)
                if conn.complete and not conn.has_body_ready:
                    if on_end is not None:
                        await on_end(status, rid, scanner)
                    flight.done = True
                    await send({"type": "http.response.body", "body": data, "more_body": False})
                    break
                await send({"type": "http.response.body", "body": data, "more_body": True})
                if sse:
                    tail = data[-2:] if len(data) >= 2 else (tail + data)[-2:]
                    if data.endswith(_SSE_DONE) or data.endswith(_SSE_DONE_CRLF):
                        flight.delivered = True
                if flight.gone:
                    return (status if flight.delivered else CLIENT_GONE), rid, scanner, True
        except UpstreamClosedError as exc:
            if flight.gone:
                return (status if flight.delivered else CLIENT_GONE), rid, scanner, True
            log.warning("replica %s failed mid-response: %s", rid, exc)
            if sse:  # an event stream ends with an error event and a clean end, never a reset
                if on_end is not None:
                    await on_end(UpstreamError.status, rid, scanner)
                flight.done = True
                await send({"type": "http.response.body", "more_body": False,
                            "body": stream_cut_event(tail)})
                return UpstreamError.status, rid, scanner, True
            # Headers are out: the only honest signal left is to cut the client connection.
            return UpstreamError.status, rid, scanner, True
        return status, rid, scanner, True
