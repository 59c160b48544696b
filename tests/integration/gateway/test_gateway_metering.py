"""Every generated token billed once: the gateway records the engine's own count for
streams without ``include_usage`` and for clients that leave mid-stream (before: 0), and
the client sees a usage chunk only when it asked (real SmolLM2 replica, official client)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from neocloud.gateway import GatewaySettings, Route, Upstream
from neocloud.gateway.metering import needs_replica_count
from neocloud.gateway.static import StaticRouteTable
from neocloud.gateway.wire import request_headers
from neocloud.serving.app import build_app

from .conftest import TOKEN_A, ListSink, start_gateway


def test_which_requests_need_the_replica_count() -> None:
    assert needs_replica_count("POST", "/v1/chat/completions", 200, found=False)
    assert not needs_replica_count("POST", "/v1/chat/completions", 200, found=True)
    assert needs_replica_count("POST", "/v1/completions", 499, found=True)
    assert needs_replica_count("POST", "/v1/completions", 502, found=False)
    assert not needs_replica_count("POST", "/v1/completions", 400, found=False)
    assert not needs_replica_count("GET", "/v1/models", 200, found=False)
    # by deployment name: the replica answers /v1/... (found by a fault-hunting pass:
    # the gateway's own path was compared, so these streams were billed what the bytes
    # showed, 0 tokens without include_usage)
    assert needs_replica_count("POST", "/endpoints/chat/v1/chat/completions", 200,
                               found=False)
    assert needs_replica_count("POST", "/endpoints/chat/v1/completions", 499, found=True)
    assert not needs_replica_count("POST", "/endpoints/chat/generate", 200, found=False)
    assert not needs_replica_count("POST", "/endpoints/v1/x", 200, found=False)
    # a client cannot choose the meter id the replica counts under
    out = request_headers([(b"x-neocloud-meter-id", b"someone-else")], None, "http",
                          lambda: b"rid")
    assert all(k != b"x-neocloud-meter-id" for k, _ in out)
    # nor mark its request as the runtime's warm-up (left out of the replica's metrics)
    out = request_headers([(b"x-neocloud-warmup", b"1")], None, "http", lambda: b"rid")
    assert all(k != b"x-neocloud-warmup" for k, _ in out)


class _Replica:
    def __init__(self) -> None:
        self.app = build_app("chat", name="chat")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="on", log_level="warning",
            access_log=False, loop="asyncio"))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(1200):  # bounded: 120 s for the model to load
            try:
                if httpx.get(self.url + "/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("replica not ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ledger(self) -> dict[str, Any]:
        return dict(self.app.service.generator.ledger)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def metered() -> Iterator[tuple[_Replica, ListSink, str]]:
    replica = _Replica()
    sink = ListSink()
    routes = StaticRouteTable([Route("d-chat", "ws-a", "chat", (Upstream("rep-1", replica.url),))])
    _, server = start_gateway(routes, sink, GatewaySettings(route_cache_ttl_s=0))
    try:
        yield replica, sink, server.url
    finally:
        server.stop()
        replica.stop()


MESSAGES = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def _new_entry(replica: _Replica, before: dict[str, Any]) -> Any:
    for _ in range(500):  # bounded: 5 s
        new = [u for k, u in replica.ledger().items() if k not in before and u.finished]
        if new:
            return new[-1]
        time.sleep(0.01)
    raise AssertionError("the engine counted no new request")


@pytest.mark.slow
def test_stream_without_usage_is_metered_as_the_engine_counted(metered) -> None:
    replica, sink, url = metered
    client = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN_A, max_retries=0, timeout=120)
    before = replica.ledger()
    chunks = list(client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=7,
                                                 temperature=0, stream=True))
    assert all(c.usage is None for c in chunks)  # not asked for: not shown
    counted = _new_entry(replica, before)
    rec = sink.wait_for(lambda r: r.status == 200 and r.completion_tokens == 7)
    assert (rec.prompt_tokens, rec.completion_tokens) == (counted.prompt_tokens, 7)
    # asked for: the client sees it, and it is what the gateway records
    seen = [c.usage for c in client.chat.completions.create(
        model="chat", messages=MESSAGES, max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}) if c.usage is not None]
    assert len(seen) == 1 and seen[0].completion_tokens == 5
    sink.wait_for(lambda r: r.status == 200 and r.completion_tokens == 5
                  and r.prompt_tokens == seen[0].prompt_tokens)


@pytest.mark.slow
def test_a_stream_by_deployment_name_without_usage_is_metered_as_the_engine_counted(
        metered) -> None:
    replica, sink, url = metered
    client = openai.OpenAI(base_url=url + "/endpoints/chat/v1", api_key=TOKEN_A,
                           max_retries=0, timeout=120)
    before = replica.ledger()
    chunks = list(client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=6,
                                                 temperature=0, stream=True))
    assert all(c.usage is None for c in chunks)
    counted = _new_entry(replica, before)
    rec = sink.wait_for(lambda r: r.status == 200 and r.completion_tokens == 6)
    assert (rec.prompt_tokens, rec.completion_tokens) == (counted.prompt_tokens, 6)
    assert rec.path == "/endpoints/chat/v1/chat/completions"


@pytest.mark.slow
def test_client_that_leaves_mid_stream_is_metered_as_the_engine_counted(metered) -> None:
    replica, sink, url = metered
    before = replica.ledger()
    with httpx.stream("POST", url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=120,
                      json={"model": "chat", "messages": MESSAGES, "max_tokens": 300,
                            "temperature": 0, "stream": True}) as r:
        events = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                events += 1
                if events == 4:
                    break
    counted = _new_entry(replica, before)
    assert 3 <= counted.completion_tokens < 300
    rec = sink.wait_for(lambda r: r.status == 499)
    assert (rec.prompt_tokens, rec.completion_tokens) == (counted.prompt_tokens,
                                                          counted.completion_tokens)
