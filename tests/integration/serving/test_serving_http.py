"""The runtime over real HTTP: routing, typed inputs, errors, timeouts, cancellation,
streaming, batching and readiness."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from neocloud.errors import InvalidRequest
from neocloud.serving import Request, Response, Service, Stream, endpoint


class Item(BaseModel):
    text: str
    times: int = 1


class Demo(Service):
    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {
            k: threading.Event() for k in ("slow_started", "slow_cancelled", "slow_finished",
                                          "stream_closed", "setup_go")
        }
        self.stream_sent = 0
        self.batches: list[int] = []

    @endpoint
    async def echo(self, sentences: list[str], upper: bool = False) -> dict[str, Any]:
        return {"sentences": [s.upper() for s in sentences] if upper else sentences}

    @endpoint(path="/repeat")
    def repeat(self, item: Item) -> str:  # sync: runs in a thread
        return item.text * item.times

    @endpoint(method="GET")
    async def add(self, a: int, b: int = 2) -> int:
        return a + b

    @endpoint
    async def image(self, raw: bytes) -> Response:
        return Response(content=raw[::-1], media_type="image/png",
                        headers={"x-size": str(len(raw))})

    @endpoint
    async def whoami(self, req: Request, name: str) -> dict[str, str | None]:
        return {"name": name, "agent": req.header("user-agent")}

    @endpoint
    async def refuse(self, reason: str) -> None:
        raise InvalidRequest(reason, param="reason")

    @endpoint
    async def crash(self) -> None:
        raise RuntimeError("boom")

    @endpoint(timeout_s=0.3)
    async def slow(self, seconds: float) -> str:
        self.events["slow_started"].set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.events["slow_cancelled"].set()
            raise
        self.events["slow_finished"].set()
        return "done"

    @endpoint
    async def hang(self) -> str:
        self.events["slow_started"].set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.events["slow_cancelled"].set()
            raise
        return "never"

    @endpoint
    async def ticks(self, count: int, delay_s: float = 0.0):  # async generator -> SSE
        try:
            for i in range(count):
                if delay_s:
                    await asyncio.sleep(delay_s)
                self.stream_sent += 1
                yield {"i": i}
            yield "[DONE]"
        finally:
            self.events["stream_closed"].set()

    @endpoint(media_type="text/plain")
    def lines(self, count: int):  # sync generator -> chunked text
        for i in range(count):
            yield f"line {i}\n"

    @endpoint
    async def badstream(self, when: str) -> Stream:
        async def gen():
            if when == "before":
                raise InvalidRequest("bad before the first event", param="when")
            yield {"ok": 1}
            raise InvalidRequest("bad later", param="when")

        return Stream(gen())

    @endpoint(max_batch_size=8, max_wait_ms=50)
    def square(self, xs: list[int]) -> list[Any]:
        self.batches.append(len(xs))
        return [ValueError(f"{x} is negative") if x < 0 else x * x for x in xs]

    @endpoint(max_batch_size=8, max_wait_ms=50)
    def wrongcount(self, xs: list[int]) -> list[int]:
        return xs[:-1] if len(xs) > 0 else xs

    @endpoint(max_concurrency=1)
    async def exclusive(self, seconds: float) -> float:
        start = time.monotonic()
        await asyncio.sleep(seconds)
        return start


@pytest.fixture
def demo(serve):
    svc = Demo()
    run = serve(svc)
    return svc, run


def _err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_health_ready_models_and_metrics(demo) -> None:
    svc, run = demo
    assert httpx.get(run.url + "/health").status_code == 200
    assert httpx.get(run.url + "/ready").status_code == 200
    models = httpx.get(run.url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["demo"]
    httpx.post(run.url + "/echo", json={"sentences": ["a"]})
    text = httpx.get(run.url + "/metrics").text
    assert 'neocloud_requests_total{route="/echo",status="200"} 1' in text
    assert "neocloud_request_duration_seconds_bucket" in text
    assert "neocloud_ready 1" in text


def test_typed_inputs(demo) -> None:
    _, run = demo
    r = httpx.post(run.url + "/echo", json={"sentences": ["a", "b"], "upper": True})
    assert r.status_code == 200 and r.json() == {"sentences": ["A", "B"]}
    assert r.headers["content-type"] == "application/json"
    assert httpx.post(run.url + "/repeat", json={"text": "ab", "times": 3}).json() == "ababab"
    assert httpx.get(run.url + "/add", params={"a": "40"}).json() == 42
    assert httpx.get(run.url + "/add", params={"a": "1", "b": "5"}).json() == 6
    r = httpx.post(run.url + "/image", content=b"\x89PNG")
    assert r.content == b"GNP\x89" and r.headers["content-type"] == "image/png"
    assert r.headers["x-size"] == "4"
    r = httpx.post(run.url + "/whoami", json={"name": "x"}, headers={"user-agent": "t/1"})
    assert r.json() == {"name": "x", "agent": "t/1"}


def test_error_objects(demo) -> None:
    _, run = demo
    r = httpx.post(run.url + "/echo", json={"sentences": [1]})
    assert r.status_code == 400
    assert _err(r)["param"] == "sentences.0"
    r = httpx.post(run.url + "/echo", json={"sentences": ["a"], "extra": 1})
    assert r.status_code == 400 and _err(r)["param"] == "extra"
    r = httpx.post(run.url + "/echo", content=b"{not json")
    assert r.status_code == 400 and _err(r)["type"] == "invalid_request_error"
    r = httpx.post(run.url + "/echo")
    assert r.status_code == 400 and _err(r)["param"] == "body"
    r = httpx.get(run.url + "/add", params={"a": "x"})
    assert r.status_code == 400 and _err(r)["param"] == "a"
    r = httpx.post(run.url + "/refuse", json={"reason": "no"})
    assert r.status_code == 400 and _err(r) == {
        "message": "no", "type": "invalid_request_error", "param": "reason",
        "code": "invalid_request"}
    r = httpx.post(run.url + "/crash", json={})
    assert r.status_code == 500 and "boom" in _err(r)["message"]
    r = httpx.get(run.url + "/nowhere")
    assert r.status_code == 404 and _err(r)["code"] == "not_found"
    r = httpx.get(run.url + "/echo")
    assert r.status_code == 405 and _err(r)["code"] == "method_not_allowed"


def test_timeout_gives_504_and_cancels_the_handler(demo) -> None:
    svc, run = demo
    r = httpx.post(run.url + "/slow", json={"seconds": 5})
    assert r.status_code == 504
    assert _err(r)["type"] == "timeout_error"
    assert svc.events["slow_cancelled"].wait(5)
    assert not svc.events["slow_finished"].is_set()
    assert httpx.post(run.url + "/slow", json={"seconds": 0.01}).json() == "done"


def _raw_post(port: int, path: str, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    return s


def test_client_disconnect_cancels_the_handler(demo) -> None:
    svc, run = demo
    s = _raw_post(run.port, "/hang", b"{}")
    assert svc.events["slow_started"].wait(5)
    s.close()
    assert svc.events["slow_cancelled"].wait(5), "the handler kept running"
    text = httpx.get(run.url + "/metrics").text
    assert 'neocloud_requests_total{route="/hang",status="499"} 1' in text


def test_sse_stream_is_incremental_with_headers(demo) -> None:
    _, run = demo
    with httpx.stream("POST", run.url + "/ticks", json={"count": 3, "delay_s": 0.2}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        arrivals = []
        events = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                arrivals.append(time.monotonic())
    assert events == ['{"i":0}', '{"i":1}', '{"i":2}', "[DONE]"]
    # the first event arrived before the stream was complete (not buffered to the end)
    assert arrivals[-1] - arrivals[0] >= 0.3


def test_stream_disconnect_stops_the_generator(demo) -> None:
    svc, run = demo
    with httpx.stream("POST", run.url + "/ticks", json={"count": 1000, "delay_s": 0.05}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    assert svc.events["stream_closed"].wait(5)
    sent = svc.stream_sent
    time.sleep(0.3)
    assert svc.stream_sent == sent < 1000


def test_chunked_text_stream_from_sync_generator(demo) -> None:
    _, run = demo
    r = httpx.post(run.url + "/lines", json={"count": 3})
    assert r.headers["content-type"] == "text/plain"
    assert r.text == "line 0\nline 1\nline 2\n"


def test_stream_errors_before_and_after_start(demo) -> None:
    _, run = demo
    r = httpx.post(run.url + "/badstream", json={"when": "before"})
    assert r.status_code == 400 and _err(r)["param"] == "when"
    r = httpx.post(run.url + "/badstream", json={"when": "later"})
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0] == '{"ok":1}' and '"bad later"' in events[1]


def _concurrent_posts(url: str, bodies: list[Any]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            return list(await asyncio.gather(*(client.post(url, json=b) for b in bodies)))

    return asyncio.run(go())


def test_batching_isolates_a_bad_item(demo) -> None:
    svc, run = demo
    responses = _concurrent_posts(run.url + "/square", [3, -1, 4, 5])
    assert [r.status_code for r in responses] == [200, 500, 200, 200]
    assert [r.json() for r in responses if r.status_code == 200] == [9, 16, 25]
    assert "-1 is negative" in _err(responses[1])["message"]
    assert max(svc.batches) > 1, svc.batches
    text = httpx.get(run.url + "/metrics").text
    assert 'neocloud_batch_size_count{route="/square"}' in text
    assert 'neocloud_queue_wait_seconds_count{route="/square"}' in text


def test_batch_output_count_is_checked(demo) -> None:
    _, run = demo
    r = httpx.post(run.url + "/wrongcount", json=1)
    assert r.status_code == 500
    assert "returned 0 outputs for 1 inputs" in _err(r)["message"]


def test_batched_input_is_validated_per_request(demo) -> None:
    _, run = demo
    r = httpx.post(run.url + "/square", json="x")
    assert r.status_code == 400 and _err(r)["param"] == "body"


def test_max_concurrency_serializes(demo) -> None:
    _, run = demo
    starts = sorted(r.json() for r in _concurrent_posts(run.url + "/exclusive",
                                                         [{"seconds": 0.2}] * 3))
    assert all(b - a >= 0.19 for a, b in zip(starts, starts[1:], strict=False))


class SlowSetup(Service):
    def __init__(self) -> None:
        self.go = threading.Event()

    def setup(self) -> None:
        assert self.go.wait(30)

    @endpoint
    async def ping(self) -> str:
        return "pong"


def test_ready_only_after_setup_and_not_while_draining(serve) -> None:
    svc = SlowSetup()
    run = serve(svc, wait_ready=False)
    assert httpx.get(run.url + "/health").status_code == 200
    r = httpx.get(run.url + "/ready")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    r = httpx.post(run.url + "/ping", json={})
    assert r.status_code == 503 and _err(r)["code"] == "not_ready"
    svc.go.set()
    deadline = time.monotonic() + 10
    while httpx.get(run.url + "/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert httpx.post(run.url + "/ping", json={}).json() == "pong"
    run.app.begin_drain()
    assert httpx.get(run.url + "/ready").json() == {"status": "draining"}
    assert httpx.get(run.url + "/health").status_code == 200


class BrokenSetup(Service):
    def setup(self) -> None:
        raise OSError("weights missing")


def test_failed_setup_is_reported(serve) -> None:
    run = serve(BrokenSetup, wait_ready=False)
    deadline = time.monotonic() + 10
    while run.app.setup_error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    r = httpx.get(run.url + "/ready")
    assert r.status_code == 503 and "weights missing" in r.json()["error"]
