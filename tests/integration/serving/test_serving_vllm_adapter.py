"""The vLLM replica adapter against a stand-in upstream speaking vLLM's wire format
(usage in every chunk when ``continuous_usage_stats`` is asked): clients see usage only
as they asked, the per-request count is kept (also for a client that leaves), and
``/metrics`` carries the platform's names."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from neocloud.serving.engines.vllm_adapter import VllmAdapter

GATE = threading.Event()  # a gated stream waits for it after its first chunk
VLLM_METRICS = (
    'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n'
    'vllm:generation_tokens_total{engine="0",model_name="m"} 42.0\n'
    'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 96.0\n'
    'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 64.0\n'
)


async def fake_vllm(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if scope["path"] == "/metrics":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": VLLM_METRICS.encode()})
        return
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    req = json.loads(body)
    assert req["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    n = req["max_tokens"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(n):
        chunk = {"id": "c", "choices": [{"index": 0, "text": f"t{i} "}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": i + 1, "total_tokens": i + 4}}
        await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                    "more_body": True})
        await asyncio.sleep(0.01)
        while req.get("prompt") == "gated" and not GATE.is_set():
            await asyncio.sleep(0.01)
    final = {"id": "c", "choices": [],
             "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}}
    await send({"type": "http.response.body", "body": f"data: {json.dumps(final)}\n\n"
                "data: [DONE]\n\n".encode(), "more_body": False})


def _serve(app: Any) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", loop="asyncio"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(500):  # bounded: 5 s
        if server.started:
            break
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server


@pytest.fixture
def adapter() -> Iterator[tuple[str, VllmAdapter]]:
    up_url, up = _serve(fake_vllm)
    app = VllmAdapter(up_url)
    url, srv = _serve(app)
    yield url, app
    srv.should_exit = True
    up.should_exit = True


def _events(url: str, body: dict[str, Any], meter: str) -> list[Any]:
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30,
                      headers={"x-neocloud-meter-id": meter}) as r:
        return [json.loads(line[6:]) for line in r.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"]


def test_usage_shown_only_as_asked_and_counted_always(adapter) -> None:
    url, app = adapter
    plain = _events(url, {"model": "m", "prompt": "x", "max_tokens": 5, "stream": True}, "a")
    assert len(plain) == 5 and all("usage" not in e for e in plain)
    asked = _events(url, {"model": "m", "prompt": "x", "max_tokens": 4, "stream": True,
                          "stream_options": {"include_usage": True}}, "b")
    assert [e["usage"] for e in asked[:-1]] == [None] * 4
    assert asked[-1]["choices"] == [] and asked[-1]["usage"]["completion_tokens"] == 4
    a = httpx.get(url + "/usage", params={"id": "a", "wait_s": 2}).json()
    assert a == {"prompt_tokens": 3, "completion_tokens": 5, "finished": True}
    assert httpx.get(url + "/usage", params={"id": "zzz"}).status_code == 404
    metrics = httpx.get(url + "/metrics").text
    assert "neocloud_engine_generation_tokens_total 42" in metrics
    assert "neocloud_engine_requests_running 1" in metrics
    assert "neocloud_engine_prefix_cache_queries_total 96" in metrics
    assert "neocloud_engine_prefix_cache_hits_total 64" in metrics
    assert httpx.get(url + "/health").status_code == 200


def test_a_client_that_leaves_keeps_its_count(adapter) -> None:
    url, app = adapter
    with httpx.stream("POST", url + "/v1/completions", headers={"x-neocloud-meter-id": "g"},
                      json={"model": "m", "prompt": "x", "max_tokens": 200, "stream": True},
                      timeout=30) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 3:
                    break
    u = httpx.get(url + "/usage", params={"id": "g", "wait_s": 5}).json()
    assert u["finished"] and 3 <= u["completion_tokens"] < 200


def test_streams_pass_through_as_they_come_without_a_meter_id(adapter) -> None:
    url, _ = adapter
    GATE.clear()
    with httpx.stream("POST", url + "/v1/completions", timeout=30, json={
            "model": "m", "prompt": "gated", "max_tokens": 3, "stream": True}) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # the upstream sends nothing more until the client has seen its first chunk
        assert json.loads(first[6:])["choices"][0]["text"] == "t0 "
        GATE.set()
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and len(rest) == 3
