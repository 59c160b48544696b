"""Real servers on loopback for the gateway tests.

Fake replicas are small raw ASGI apps served by uvicorn, each in its own thread and event
loop; the gateway is served the same way. Replicas speak enough of the OpenAI wire format
for the official client, and have test routes that gate, stream forever or hang while
recording whether they saw the client go away.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from neocloud.gateway import (
    GatewaySettings,
    Principal,
    RequestRecord,
    Route,
    Upstream,
    create_gateway,
)
from neocloud.gateway.server import serve
from neocloud.gateway.static import StaticAuthenticator, StaticRouteTable

TOKEN_A = "tok-a"
TOKEN_B = "tok-b"


class ServerThread:
    """An ASGI app served on 127.0.0.1 (free port) in a background thread, by uvicorn or by
    the gateway's own server (``kind="neocloud"``)."""

    def __init__(self, app: Any, kind: str = "uvicorn") -> None:
        self.kind = kind
        # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets of that proto
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="error", access_log=False, lifespan="off",
            timeout_graceful_shutdown=1, loop="asyncio", proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        if kind == "uvicorn":
            self.thread = threading.Thread(
                target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
            )
        else:
            self.thread = threading.Thread(target=self._run_own, args=(app,), daemon=True)

    def _run_own(self, app: Any) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.sock.listen(128)
            await serve(app, sock=self.sock, stop=self._stop, graceful_s=1,
                        started=lambda _: self._ready.set())

        asyncio.run(main())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        for _ in range(500):  # bounded: 5 s
            if self.server.started or self._ready.is_set():
                return self
            time.sleep(0.01)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        if self.kind == "uvicorn":
            self.server.should_exit = True
        elif self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self.sock.close()


@dataclass
class ReplicaState:
    """What a fake replica saw (read from the test thread)."""

    name: str
    hits: int = 0
    paths: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


async def _body(receive: Callable[[], Any]) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


async def _json(send: Callable[[dict[str, Any]], Any], obj: Any, status: int = 200) -> None:
    data = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _words(text: str) -> int:
    return len(text.split())


def make_replica(state: ReplicaState) -> Callable[..., Any]:
    """A fake replica: OpenAI embeddings and chat, plus echo and streaming test routes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        with state.lock:
            state.hits += 1
            state.paths.append(path)
        if path == "/v1/embeddings":
            req = json.loads(await _body(receive))
            inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
            data = [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), float(i), 1.0]}
                for i, t in enumerate(inputs)
            ]
            n = sum(_words(t) for t in inputs)
            await _json(send, {"object": "list", "data": data, "model": req["model"],
                               "usage": {"prompt_tokens": n, "total_tokens": n}})
        elif path == "/v1/chat/completions":
            await _chat(json.loads(await _body(receive)), send)
        elif path == "/gated":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            ok = await asyncio.get_running_loop().run_in_executor(None, state.gate.wait, 10)
            tail = b"second\n" if ok else b"gate-timeout\n"
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        elif path == "/endless":
            await _endless(receive, send, state)
        elif path == "/sse-cut":  # an event stream whose replica dies mid-event
            await _body(receive)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b"data: one\n\n",
                        "more_body": True})
            await send({"type": "http.response.body", "body": b"data: tw", "more_body": True})
            await asyncio.sleep(0.05)
            raise RuntimeError("replica died mid-stream")
        elif path == "/hang":
            await _body(receive)
            for _ in range(200):  # bounded: 10 s
                try:
                    msg = await asyncio.wait_for(receive(), 0.05)
                except TimeoutError:
                    continue
                if msg["type"] == "http.disconnect":
                    state.disconnected.set()
                    return
            await _json(send, {"late": True})
        elif path == "/status/418":
            await _json(send, {"teapot": True}, status=418)
        else:
            body = await _body(receive)
            await _json(send, {
                "replica": state.name,
                "method": scope["method"],
                "path": path,
                "raw_path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                "body_len": len(body),
            })

    return app


async def _chat(req: dict[str, Any], send: Any) -> None:
    prompt = sum(_words(m["content"]) for m in req["messages"])
    pieces = ["Hello", ",", " world", "!"]
    usage = {"prompt_tokens": prompt, "completion_tokens": len(pieces),
             "total_tokens": prompt + len(pieces)}
    base = {"id": "chatcmpl-1", "created": 1, "model": req["model"]}
    if not req.get("stream"):
        await _json(send, {**base, "object": "chat.completion", "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "".join(pieces)}}], "usage": usage})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    include = bool((req.get("stream_options") or {}).get("include_usage"))

    async def event(obj: Any) -> None:
        data = b"data: " + json.dumps(obj).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": data, "more_body": True})

    chunk = {**base, "object": "chat.completion.chunk"}
    for i, p in enumerate(pieces):
        delta = {"role": "assistant", "content": p} if i == 0 else {"content": p}
        await event({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                     **({"usage": None} if include else {})})
    await event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                 **({"usage": None} if include else {})})
    if include:
        await event({**chunk, "choices": [], "usage": usage})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _endless(receive: Any, send: Any, state: ReplicaState) -> None:
    await _body(receive)
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(500):  # bounded: 10 s
            if gone.is_set():
                state.disconnected.set()
                return
            await send({"type": "http.response.body", "body": b"data: tick %d\n\n" % i,
                        "more_body": True})
            try:
                await asyncio.wait_for(gone.wait(), 0.02)
            except TimeoutError:
                pass
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()


class ListSink:
    """A usage sink collecting records (thread-safe; records arrive from the gateway thread)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.records.append(rec)

    def wait_for(self, pred: Callable[[RequestRecord], bool],
                 timeout_s: float = 30.0) -> RequestRecord:
        """The first record matching ``pred``; polls every 10 ms for up to ``timeout_s``
        (a bound for a loaded machine: the record of a metered stream may wait for the
        engine's count; it returns as soon as the record is there)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                for r in self.records:
                    if pred(r):
                        return r
            if time.monotonic() > deadline:
                raise AssertionError("no matching request record")
            time.sleep(0.01)


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@dataclass
class Cloud:
    """Two fake replicas, a route table, a usage sink and a served gateway."""

    replicas: list[ReplicaState]
    replica_servers: list[ServerThread]
    routes: StaticRouteTable
    sink: ListSink
    gateway: Any
    server: ServerThread

    token_a: str = TOKEN_A
    token_b: str = TOKEN_B

    @property
    def url(self) -> str:
        return self.server.url

    def auth(self, token: str | None = None) -> dict[str, str]:
        """Headers carrying ``token`` (workspace A's by default)."""
        return {"Authorization": f"Bearer {token or self.token_a}"}


def start_gateway(
    routes: StaticRouteTable, sink: ListSink | None, settings: GatewaySettings,
    kind: str = "uvicorn",
) -> tuple[Any, ServerThread]:
    auth = StaticAuthenticator({
        TOKEN_A: Principal(token_id="t-a", workspace_id="ws-a", role="member"),
        TOKEN_B: Principal(token_id="t-b", workspace_id="ws-b", role="admin"),
    })
    gw = create_gateway(routes, auth, sink, settings)
    return gw, ServerThread(gw, kind).start()


@pytest.fixture(scope="module", params=["uvicorn", "neocloud"])
def server_kind(request: pytest.FixtureRequest) -> str:
    """The HTTP server in front of the gateway: uvicorn (as in the control plane) or the
    gateway's own server (as in standalone copies)."""
    return str(request.param)


@pytest.fixture(scope="module")
def cloud(server_kind: str) -> Iterator[Cloud]:
    states = [ReplicaState("r1"), ReplicaState("r2")]
    servers = [ServerThread(make_replica(s)).start() for s in states]
    r1, r2 = (Upstream(f"rep-{s.name}", srv.url) for s, srv in zip(states, servers, strict=True))
    dead = Upstream("rep-dead", dead_url())
    routes = StaticRouteTable([
        Route("d-emb", "ws-a", "emb", (r1, r2)),
        Route("d-chat", "ws-a", "chat", (r1,)),
        Route("d-echo", "ws-a", "echo", (r1, r2)),
        Route("d-mixed", "ws-a", "mixed", (dead, r2)),
        Route("d-dead", "ws-a", "dead", (dead,)),
        Route("d-cold", "ws-a", "cold", ()),
        Route("d-secret", "ws-b", "secret", (r1,)),
    ])
    sink = ListSink()
    settings = GatewaySettings(max_body_bytes=1024 * 1024, route_cache_ttl_s=0)
    gw, server = start_gateway(routes, sink, settings, server_kind)
    try:
        yield Cloud(states, servers, routes, sink, gw, server)
    finally:
        server.stop()
        for s in servers:
            s.stop()


@pytest.fixture()
def make_gateway(server_kind: str) -> Iterator[Callable[..., tuple[Any, ServerThread]]]:
    """Start extra gateways (own settings/routes) that are stopped after the test."""
    started: list[ServerThread] = []

    def make(routes: StaticRouteTable, sink: ListSink | None = None,
             settings: GatewaySettings | None = None) -> tuple[Any, ServerThread]:
        gw, server = start_gateway(routes, sink, settings or GatewaySettings(), server_kind)
        started.append(server)
        return gw, server

    yield make
    for server in started:
        server.stop()


@pytest.fixture()
def list_sink() -> ListSink:
    return ListSink()


@pytest.fixture()
def serve_app() -> Iterator[Callable[[Any], ServerThread]]:
    """Serve ASGI apps with the gateway's own HTTP server; stopped after the test."""
    started: list[ServerThread] = []

    def start(app: Any) -> ServerThread:
        server = ServerThread(app, "neocloud").start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
