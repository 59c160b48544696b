"""Bytes on the wire: request heads and header rewriting (responses: :mod:`neocloud.asgi`).

Hop-by-hop headers (RFC 9110 §7.6.1: ``Connection`` and the headers it names,
``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``,
plus ``Proxy-Authenticate``/``Proxy-Authorization``) belong to one connection and are never
forwarded in either direction. Towards a replica the gateway also drops ``Host`` (it sends
the replica's), ``Authorization`` (the workspace token never leaves the gateway),
``Content-Length`` (it sends its own), ``Expect`` and ``X-Neocloud-Meter-Id`` (it sets
its own, see :mod:`neocloud.gateway.metering`); it appends the client address to
``X-Forwarded-For`` and sets ``X-Forwarded-Proto`` and ``X-Request-Id`` when absent.
Towards the client it drops the replica's ``Server`` and ``Date`` (the serving ASGI
server sets its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from neocloud.asgi import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
    }
)
_DROP_REQUEST = HOP_BY_HOP | {
    b"host", b"authorization", b"content-length", b"expect", b"x-forwarded-proto",
    b"x-neocloud-meter-id",  # the gateway's own (see metering.py); never the client's
    b"x-neocloud-warmup",  # the runtime's own warm-up mark (serving/warmup.py): a client
    # carrying it would be left out of the replica's request metrics
}
_DROP_RESPONSE = HOP_BY_HOP | {b"server", b"date"}


def _named_in_connection(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            named.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return named


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    scheme: str,
    request_id: Callable[[], bytes],
) -> Headers:
    """The client's request headers as sent on to a replica (see module doc).

    Args:
        headers: ASGI headers (lower-case names).
        client: the client's ``(host, port)``, if known.
        scheme: ``"http"`` or ``"https"`` as the client spoke it.
        request_id: makes an ``X-Request-Id`` when the client sent none.
    """
    out: Headers = []
    forwarded_for: bytes | None = None
    has_rid = False
    extra: set[bytes] | None = None
    for k, v in headers:
        if k in _DROP_REQUEST:
            if k == b"connection":
                extra = _named_in_connection(headers)
            continue
        if k == b"x-forwarded-for":
            forwarded_for = v if forwarded_for is None else forwarded_for + b", " + v
            continue
        if k == b"x-request-id":
            has_rid = True
        out.append((k, v))
    if extra:
        out = [(k, v) for k, v in out if k not in extra]
    if client is not None:
        addr = client[0].encode()
        forwarded_for = addr if forwarded_for is None else forwarded_for + b", " + addr
    if forwarded_for is not None:
        out.append((b"x-forwarded-for", forwarded_for))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if not has_rid:
        out.append((b"x-request-id", request_id()))
    return out


def request_head(
    method: str, target: bytes, host: bytes, headers: Headers, body_len: int
) -> bytes:
    """An HTTP/1.1 request head (through the blank line) for ``target`` (path + query)."""
    parts = [method.encode(), b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    if body_len or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        parts += (b"content-length: ", str(body_len).encode(), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def response_headers(headers: Headers) -> tuple[Headers, bytes]:
    """The replica's response headers as sent on to the client, and its content type."""
    out: Headers = []
    ctype = b""
    extra: set[bytes] | None = None
    for k, v in headers:
        if k in _DROP_RESPONSE:
            if k == b"connection":
                extra = _named_in_connection(headers)
            continue
        if k == b"content-type":
            ctype = v
        out.append((k, v))
    if extra:
        out = [(k, v) for k, v in out if k not in extra]
    return out, ctype

