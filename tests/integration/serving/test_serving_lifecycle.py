"""Replica life cycle: ready means servable (a service that loads its model on first use is
loaded by the runtime's warm-up call before ``/ready`` turns 200, so no client request
pays for it), and a stream cut at the end of the drain grace ends with an error event."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from neocloud.serving import Request, Service, endpoint
from neocloud.serving.service import EndpointSpec
from neocloud.serving.settings import ServingSettings


class LazyModel(Service):
    """Loads its "model" inside the first call (gated, so the test sees the load in
    progress) and records, in order, every load and every call with its warm-up header."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        self.model: dict[str, str] | None = None
        self.lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        with self.lock:
            if self.model is None:
                self.log.append(("load", None))
                assert self.release.wait(30)
                self.model = {"hello": "HELLO"}
            return self.model

    @endpoint(warmup={"text": "hello"})
    def shout(self, text: str, request: Request) -> dict[str, object]:
        model = self._load()
        self.log.append(("call", request.header("x-neocloud-warmup")))
        return {"out": model.get(text, text.upper()),
                "loads": sum(1 for kind, _ in self.log if kind == "load")}

    @endpoint(warmup={"n": 3})
    def count(self, n: int) -> Iterator[dict[str, int]]:
        for i in range(n):
            self.log.append(("chunk", str(i)))
            yield {"i": i}


def _wait(cond, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(cond())


def test_lazy_service_is_loaded_before_ready(serve) -> None:
    svc = LazyModel()
    run = serve(svc, wait_ready=False)
    # The warm-up call started the load without any client request...
    assert _wait(lambda: ("load", None) in svc.log)
    r = httpx.get(run.url + "/ready")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    assert not any(kind == "call" for kind, _ in svc.log)
    svc.release.set()
    assert _wait(lambda: httpx.get(run.url + "/ready").status_code == 200)
    # ...and by the time the replica is ready the model is loaded, once, by warm-up calls
    # (the streamed one read to its end).
    assert svc.model is not None
    assert svc.log == [("load", None), ("call", "1"),
                       ("chunk", "0"), ("chunk", "1"), ("chunk", "2")]
    assert run.app.warmup_s is not None and run.app.warmup_s > 0
    before = list(svc.log)
    r = httpx.post(run.url + "/shout", json={"text": "hello"})
    assert r.status_code == 200 and r.json() == {"out": "HELLO", "loads": 1}
    # The first client request found the model loaded: it added a call, not a load.
    assert svc.log == [*before, ("call", None)]
    # Warm-up calls are not client requests in the metrics.
    counted = [line for line in httpx.get(run.url + "/metrics").text.splitlines()
               if line.startswith("neocloud_requests_total{")]
    assert len(counted) == 1 and '"/shout"' in counted[0] and counted[0].endswith(" 1")


class FailingWarmup(Service):
    def setup(self) -> None:
        self.ready_to_fail = True

    @endpoint(warmup={"text": "x"})
    def echo(self, text: str) -> str:
        raise OSError("model file truncated")


def test_failing_warmup_call_fails_the_replica(serve) -> None:
    fatal: list[BaseException] = []
    run = serve(FailingWarmup, wait_ready=False, on_fatal=fatal.append)
    assert _wait(lambda: run.app.setup_error is not None)
    r = httpx.get(run.url + "/ready")
    assert r.status_code == 503 and r.json()["status"] == "failed"
    assert "POST /echo" in r.json()["error"] and "model file truncated" in r.json()["error"]
    assert len(fatal) == 1


class HookWarmup(Service):
    def __init__(self) -> None:
        self.order: list[str] = []

    def setup(self) -> None:
        self.order.append("setup")

    async def warmup(self) -> None:
        self.order.append("warmup")

    @endpoint
    async def ping(self) -> list[str]:
        return self.order


def test_warmup_hook_runs_after_setup_before_ready(serve) -> None:
    svc = HookWarmup()
    run = serve(svc)
    assert httpx.post(run.url + "/ping", json={}).json() == ["setup", "warmup"]


def test_warmup_of_a_get_endpoint_must_be_query_parameters() -> None:
    with pytest.raises(ValueError, match="query parameters"):
        EndpointSpec(method="GET", warmup=["not", "a", "dict"])


class Endless(Service):
    @endpoint
    async def tokens(self):  # noqa: ANN201 - an async generator
        i = 0
        while True:
            yield {"i": i}
            i += 1
            await asyncio.sleep(0.02)


def test_stream_cut_by_the_drain_timeout_ends_with_an_error_event(serve) -> None:
    """A stream still running when the drain grace runs out gets a final SSE error event
    and a clean end of the body (the client reads to the end without a protocol error)."""
    run = serve(Endless, settings=ServingSettings(grace_period_s=0.5))
    run.server.config.timeout_graceful_shutdown = 0.5
    events: list[dict[str, object]] = []
    with httpx.stream("POST", run.url + "/tokens", json={}, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                break
        run.app.begin_drain()  # what SIGTERM does in the runner
        run.server.should_exit = True
        for line in lines:  # raises httpx.RemoteProtocolError on a bare reset
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[0] == {"i": 0} and len(events) > 2
    last = events[-1]
    assert "error" in last and last["error"]["code"] == "drain_timeout"
    assert "0.5 s" in last["error"]["message"]
    assert all("i" in e for e in events[:-1])
