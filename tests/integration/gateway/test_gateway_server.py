"""The gateway's own HTTP/1.1 server, spoken to with raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import httpx


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the request as JSON; special paths stream, fail, or watch for a disconnect."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            kind = msg["type"].split(".")[1]
            EVENTS.append(kind)
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    path = scope["path"]
    if path == "/fail-early":
        raise RuntimeError("boom")
    if path == "/too-large":  # answer without reading the body
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for piece in (b"a", b"bb", b"ccc"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/fail-late":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom")
    if path == "/wait-disconnect":
        msg = await asyncio.wait_for(receive(), 10)
        DISCONNECTS.append(msg["type"])
        DISCONNECTED.set()
        return
    out = json.dumps({"method": scope["method"], "path": path, "raw": scope["raw_path"].decode(),
                      "query": scope["query_string"].decode(), "body": body.decode(),
                      "version": scope["http_version"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


EVENTS: list[str] = []
DISCONNECTS: list[str] = []
DISCONNECTED = threading.Event()


def _exchange(port: int, data: bytes, until: bytes | None = None, responses: int = 1) -> bytes:
    """Send raw bytes; read until ``until`` appears ``responses`` times or the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        got = b""
        for _ in range(1000):  # bounded
            if until is not None and got.count(until) >= responses:
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_keep_alive_query_and_percent_encoding(serve_app: Any) -> None:
    server = serve_app(app)
    with httpx.Client(base_url=server.url) as http:
        first = http.post("/a%20b/c?x=1&y=2", content=b"hello")
        second = http.get("/again")
    assert first.json() == {"method": "POST", "path": "/a b/c", "raw": "/a%20b/c",
                            "query": "x=1&y=2", "body": "hello", "version": "1.1"}
    assert second.json()["path"] == "/again"
    assert "date" in first.headers and first.headers["content-length"]


def test_pipelined_requests_are_answered_in_order(serve_app: Any) -> None:
    server = serve_app(app)
    reqs = b"".join(
        b"POST /p%d HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\n%d" % (i, i) for i in range(3)
    )
    raw = _exchange(server.port, reqs, until=b"}", responses=3)
    bodies = [json.loads(part[part.index(b"{"):]) for part in raw.split(b"HTTP/1.1 ")[1:]]
    assert [(b["path"], b["body"]) for b in bodies] == [("/p0", "0"), ("/p1", "1"), ("/p2", "2")]


def test_chunked_request_and_streamed_chunked_response(serve_app: Any) -> None:
    server = serve_app(app)
    with httpx.Client(base_url=server.url) as http:
        echoed = http.post("/echo", content=iter([b"ab", b"cd", b"e"]))
        assert echoed.json()["body"] == "abcde"
        with http.stream("GET", "/stream") as resp:
            assert resp.headers["transfer-encoding"] == "chunked"
            assert b"".join(resp.iter_raw()) == b"abbccc"


def test_expect_100_continue_head_and_http10(serve_app: Any) -> None:
    server = serve_app(app)
    raw = _exchange(server.port, b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
                    b"expect: 100-continue\r\n\r\nhi", until=b"}")
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    head = _exchange(server.port, b"HEAD /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
    assert b"content-length:" in head
    old = _exchange(server.port, b"GET /stream HTTP/1.0\r\n\r\n")
    assert b"transfer-encoding" not in old and b"connection: close" in old
    assert old.endswith(b"\r\n\r\nabbccc")


def test_bad_requests_and_app_failures(serve_app: Any) -> None:
    server = serve_app(app)
    bad = _exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 ") and b'"code":"bad_http"' in bad
    upgrade = _exchange(server.port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                        b"upgrade: websocket\r\n\r\n")
    assert upgrade.startswith(b"HTTP/1.1 501 ")
    early = _exchange(server.port, b"GET /fail-early HTTP/1.1\r\nhost: x\r\n\r\n")
    assert early.startswith(b"HTTP/1.1 500 ") and early.endswith(b"Internal Server Error")
    late = _exchange(server.port, b"GET /fail-late HTTP/1.1\r\nhost: x\r\n\r\n")
    assert late.startswith(b"HTTP/1.1 200 ") and b"partial" in late
    assert not late.endswith(b"0\r\n\r\n")  # cut off: the client can tell it is incomplete


def test_early_answer_keeps_the_connection_usable(serve_app: Any) -> None:
    server = serve_app(app)
    raw = _exchange(
        server.port,
        b"POST /too-large HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n12345"
        b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n",
        until=b"}",
    )
    assert raw.startswith(b"HTTP/1.1 413 ") and b'"path": "/next"' in raw


def test_disconnect_reaches_the_app_and_lifespan_runs(serve_app: Any) -> None:
    EVENTS.clear()
    DISCONNECTED.clear()
    server = serve_app(app)
    assert EVENTS == ["startup"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /wait-disconnect HTTP/1.1\r\nhost: x\r\n\r\n")
    assert DISCONNECTED.wait(5) and DISCONNECTS[-1] == "http.disconnect"
    server.stop()
    assert EVENTS == ["startup", "shutdown"]
