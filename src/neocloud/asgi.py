"""ASGI plumbing shared by the gateway, the serving runtime and the control plane.

- the ASGI callable types (:data:`Scope`, :data:`Receive`, :data:`Send`, :data:`Headers`);
- bounded request-body reading: :func:`declared_length` checks ``Content-Length``,
  :func:`read_body` reads the ``http.request`` messages (chunked bodies included) and
  refuses a body over the limit with :class:`neocloud.errors.PayloadTooLarge` (HTTP 413)
  as soon as the bytes received pass it, before the whole body is held;
- complete JSON responses and error responses (the OpenAI error object of
  :mod:`neocloud.errors`, with the error's HTTP status): :func:`send_json`,
  :func:`send_error`;
- disconnect watching: :func:`watch_disconnect` awaits ``receive()`` until the server reports
  ``http.disconnect`` and then tells its watcher.

Everything here depends only on :mod:`neocloud.errors`, so every layer may import it. The
helpers are on the request path of the gateway and the replicas: a body that arrives in
one message costs no allocation beyond the message itself, and no helper adds an ``await``
of its own (each awaits only ``receive``/``send``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol

from neocloud.errors import InvalidRequest, NeocloudError, PayloadTooLarge

#: The connection scope (``type``, ``method``, ``path``, ``headers``...).
Scope = MutableMapping[str, Any]
#: One ASGI event (``{"type": "http.request", "body": ..., "more_body": ...}``...).
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: ``(name, value)`` header pairs; names are lower-case bytes.
Headers = list[tuple[bytes, bytes]]

JSON_TYPE = b"application/json"
_JSON = (b"content-type", JSON_TYPE)


class ClientDisconnected(Exception):
    """The client went away (``http.disconnect``) before the request body was complete."""


def declared_length(headers: Iterable[tuple[bytes, bytes]], limit: int) -> int | None:
    """The body size (bytes) declared by the ``Content-Length`` header; ``None`` when absent.

    Raises:
        InvalidRequest: the header is not a number (``param="content-length"``).
        PayloadTooLarge: the declared size is over ``limit`` bytes (``param="body"``).
    """
    for k, v in headers:
        if k == b"content-length":
            try:
                declared = int(v)
            except ValueError:
                raise InvalidRequest(
                    "invalid Content-Length header", param="content-length"
                ) from None
            if declared > limit:
                raise PayloadTooLarge(
                    f"request body is {declared} bytes; the limit is {limit} bytes",
                    param="body",
                )
            return declared
    return None


async def read_body(
    receive: Receive, limit: int, headers: Iterable[tuple[bytes, bytes]] | None = None
) -> bytes:
    """The whole request body (bytes), read from ``receive`` up to ``limit`` bytes.

    With ``headers`` (the scope's), a declared ``Content-Length`` is checked first (see
    :func:`declared_length`), before anything is read. Works for bodies of any framing (one
    message, or many with ``more_body``, as a chunked upload arrives); the count is checked
    after each message, so an over-limit body is refused without reading the rest of it.

    Raises:
        InvalidRequest: ``Content-Length`` in ``headers`` is not a number.
        PayloadTooLarge: the declared length, or the bytes that arrived, are over ``limit``
            (``param="body"``).
        ClientDisconnected: ``receive`` returned anything but ``http.request`` (the client
            left) before the last body message.
    """
    if headers is not None:
        declared_length(headers, limit)
    msg = await receive()
    if msg["type"] != "http.request":
        raise ClientDisconnected()
    body: bytes = msg.get("body", b"")
    if len(body) > limit:
        raise _too_large(limit)
    if not msg.get("more_body", False):
        return body
    parts = [body] if body else []
    size = len(body)
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise ClientDisconnected()
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        if not msg.get("more_body", False):
            break
    if not parts:
        return b""
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes", param="body")


def dumps(payload: Any) -> bytes:
    """Compact JSON bytes of ``payload`` (plain dicts, lists, strings, numbers)."""
    return json.dumps(payload, separators=(",", ":")).encode()


async def send_json(
    send: Send, status: int, body: bytes, headers: Headers | None = None
) -> None:
    """Send a complete ``application/json`` response of ``body`` (already encoded JSON)
    with ``Content-Length`` and any extra ``headers``."""
    hdrs: Headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        hdrs.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, err: NeocloudError, headers: Headers | None = None) -> None:
    """Send ``err`` as the OpenAI error object (``{"error": {...}}``) with its HTTP status."""
    await send_json(send, err.status, dumps(err.to_wire()), headers)


class DisconnectTarget(Protocol):
    """Whatever must learn that a client went away."""

    def on_disconnect(self) -> None:
        """Called once, when ``http.disconnect`` arrives; must not block or raise."""
        ...


async def watch_disconnect(receive: Receive, target: DisconnectTarget) -> None:
    """Await ``receive()`` until ``http.disconnect``, then call ``target.on_disconnect()``.

    Run it as a task once the request body is fully read (other messages are dropped);
    cancel the task when the response is complete.
    """
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
    target.on_disconnect()


def replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that returns ``messages`` first, then defers to ``then`` (or reports
    ``http.disconnect`` when there is none)."""
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class BodyLimit:
    """ASGI middleware that refuses request bodies over ``max_bytes`` with 413 (the OpenAI
    error object, ``code="payload_too_large"``, ``param="body"``).

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    declared one within it is passed on (the server enforces the declared length). A
    streamed (chunked) body is read here up to the limit and handed on whole, so the app
    never starts on a body that turns out too large. A client that leaves while its body
    streams is passed on as ``http.disconnect``.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        """``app``: the ASGI application behind the limit; ``max_bytes``: the limit."""
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if declared_length(scope.get("headers", ()), self.max_bytes) is not None:
                await self.app(scope, receive, send)
                return
            body = await read_body(receive, self.max_bytes)
        except NeocloudError as err:
            await send_error(send, err)
            return
        except ClientDisconnected:
            await self.app(scope, replay([{"type": "http.disconnect"}]), send)
            return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay([whole], receive), send)
