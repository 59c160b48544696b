"""The gateway's HTTP/1.1 client against scripted raw servers on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from neocloud.gateway.client import (
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamTimeoutError,
)
from neocloud.gateway.wire import request_head

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


async def _serve(script: Script) -> tuple[asyncio.Server, str, list[int]]:
    """A server that runs ``script`` for each request; it returns False to stop the
    connection. The list counts connections accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                if not await script(reader, writer, body):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", accepted


async def _fetch(pool: UpstreamPool, url: str, body: bytes = b"") -> tuple[int, bytes]:
    target = pool.target(url)
    conn = await pool.connect(target)
    conn.send(request_head("POST", target.prefix + b"/x", target.host_header, [], len(body)),
              body)
    await conn.wait_head(5)
    chunks = []
    while True:
        data = conn.take()
        if data is not None:
            chunks.append(data)
            continue
        if conn.complete:
            break
        await conn.wait_body()
    status = conn.status
    conn.release()
    return status, b"".join(chunks)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_chunked_response_and_keep_alive_reuse() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n")
        for piece in (b"hello ", body, b"!"):
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await w.drain()
        w.write(b"0\r\n\r\n")
        return True

    async def main() -> None:
        server, url, accepted = await _serve(script)
        pool = UpstreamPool()
        assert await _fetch(pool, url, b"world") == (200, b"hello world!")
        assert await _fetch(pool, url, b"again") == (200, b"hello again!")
        assert len(accepted) == 1 and pool.idle_count() == 1
        await pool.close()
        server.close()

    run(main())


def test_connection_close_and_eof_delimited_bodies() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> bool:
        if body == b"close":
            w.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        else:  # HTTP/1.0 style: the body ends when the connection does
            w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b"z" * 100_000)
        await w.drain()
        return False

    async def main() -> None:
        server, url, accepted = await _serve(script)
        pool = UpstreamPool()
        assert await _fetch(pool, url, b"close") == (201, b"ok")
        assert await _fetch(pool, url, b"eof") == (200, b"z" * 100_000)
        assert len(accepted) == 2 and pool.idle_count() == 0
        server.close()

    run(main())


def test_large_body_with_back_pressure_arrives_whole() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
        await w.drain()
        return True

    async def main() -> None:
        server, url, _ = await _serve(script)
        pool = UpstreamPool()
        target = pool.target(url)
        conn = await pool.connect(target)
        conn.send(request_head("GET", b"/", target.host_header, [], 0), b"")
        await conn.wait_head(5)
        got = bytearray()
        for _ in range(10_000):  # bounded; read slowly so the connection pauses
            data = conn.take()
            if data:
                got += data
                await asyncio.sleep(0)
            elif conn.complete:
                break
            else:
                await conn.wait_body()
        assert bytes(got) == payload
        conn.release()
        await pool.close()
        server.close()

    run(main())


def test_failures_are_classified() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> bool:
        if body == b"cut":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-some")
            await w.drain()
        elif body == b"silent":
            await asyncio.sleep(5)
        return False  # close without (completing) a response

    async def main() -> None:
        server, url, _ = await _serve(script)
        pool = UpstreamPool()
        with pytest.raises(UpstreamClosedError) as nothing:
            await _fetch(pool, url, b"drop")
        assert nothing.value.response_started is False
        with pytest.raises(UpstreamClosedError) as cut:
            await _fetch(pool, url, b"cut")
        assert cut.value.response_started is True
        target = pool.target(url)
        conn = await pool.connect(target)
        conn.send(request_head("POST", b"/", target.host_header, [], 6), b"silent")
        with pytest.raises(UpstreamTimeoutError):
            await conn.wait_head(0.05)
        assert conn.closed
        server.close()
        with pytest.raises(UpstreamConnectError, match="cannot connect"):
            await pool.connect(target)

    run(main())


def test_stale_idle_connections_are_not_reused() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        return True

    async def main() -> None:
        server, url, accepted = await _serve(script)
        pool = UpstreamPool(idle_timeout_s=0.0)
        await _fetch(pool, url)
        await _fetch(pool, url)
        assert len(accepted) == 2
        await pool.close()
        server.close()

    run(main())


def test_a_pooled_connection_found_closed_reports_nothing_was_sent() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, body: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await w.drain()
        return False  # closes although the response allowed keep-alive

    async def main() -> None:
        server, url, _ = await _serve(script)
        pool = UpstreamPool()
        target = pool.target(url)
        conn = await pool.connect(target)
        conn.send(request_head("GET", b"/", target.host_header, [], 0), b"")
        await conn.wait_head(5)
        for _ in range(200):  # bounded: wait for the replica's close to be noticed
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        conn._reset()  # pretend it had been handed out again
        conn.send(request_head("GET", b"/", target.host_header, [], 0), b"")
        with pytest.raises(UpstreamClosedError) as err:
            await conn.wait_head(5)
        assert err.value.request_sent is False and err.value.response_started is False
        server.close()

    run(main())


def test_replica_on_a_unix_socket(tmp_path: Any) -> None:
    from urllib.parse import quote

    from neocloud.gateway.server import serve

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        path = str(tmp_path / "replica.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(16)
        stop = asyncio.Event()
        server = asyncio.create_task(serve(app, sock=sock, stop=stop, graceful_s=1))
        pool = UpstreamPool()
        url = "http+unix://" + quote(path, safe="") + "/base"
        assert await _fetch(pool, url) == (200, b"/base/x")
        assert await _fetch(pool, url) == (200, b"/base/x")
        assert pool.idle_count() == 1  # the connection was kept alive and reused
        await pool.close()
        stop.set()
        await server
        with pytest.raises(UpstreamConnectError, match="replica.sock"):
            await pool.connect(pool.target(url))

    run(main())
