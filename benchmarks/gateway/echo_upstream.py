"""A minimal replica for gateway benchmarks (raw ASGI, served by uvicorn).

Routes:
    POST /v1/embeddings, POST /echo: a small OpenAI-style JSON answer with ``usage``.
    GET /stream?n=N: N Server-Sent Events, each one token, then ``data: [DONE]``.
    POST /v1/chat/completions with ``"stream": true``: a chat completion stream as an
        OpenAI server sends it: ``max_tokens`` (default 64) ``chat.completion.chunk``
        events of one token each (the first also carries the role), a final event with
        ``finish_reason``, a usage event when ``stream_options.include_usage`` is true,
        then ``data: [DONE]``. Each event is its own write, as an engine emits one per
        decode step. Without ``"stream"``: one JSON completion with ``usage``.
    GET /usage?id=METER_ID: the counts of the request that carried that
        ``X-Neocloud-Meter-Id`` (``{"prompt_tokens", "completion_tokens", "finished"}``),
        as the built-in engine's replica answers the gateway's metering look-up; 404 for
        an unknown id.

Pacing (environment, read at import): ``ECHO_FIRST_TOKEN_MS`` (delay before the first
event, default 0) and ``ECHO_TOKEN_INTERVAL_MS`` (delay between events, default 0). With
both 0 the stream is produced as fast as the process can.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
from typing import Any

_BODY = (
    b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}],'
    b'"model":"echo","usage":{"prompt_tokens":2,"total_tokens":2}}'
)
_JSON_HEADERS = [(b"content-type", b"application/json"),
                 (b"content-length", str(len(_BODY)).encode())]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_FIRST_S = float(os.environ.get("ECHO_FIRST_TOKEN_MS", "0")) / 1e3
_INTERVAL_S = float(os.environ.get("ECHO_TOKEN_INTERVAL_MS", "0")) / 1e3
_PROMPT_TOKENS = 12
#: Counts per meter id, newest last (bounded: the oldest are forgotten).
_METERED: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
_METERED_MAX = 100_000


def _chunk(i: int, first: bool) -> bytes:
    delta = ('{"role":"assistant","content":"tok%d"}' if first else '{"content":" tok%d"}') % i
    return (b'data: {"id":"chatcmpl-echo","object":"chat.completion.chunk","created":0,'
            b'"model":"echo","choices":[{"index":0,"delta":' + delta.encode()
            + b',"finish_reason":null}]}\n\n')


_FINISH = (b'data: {"id":"chatcmpl-echo","object":"chat.completion.chunk","created":0,'
           b'"model":"echo","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n')


def _usage_event(n: int) -> bytes:
    return (b'data: {"id":"chatcmpl-echo","object":"chat.completion.chunk","created":0,'
            b'"model":"echo","choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
            b'"total_tokens":%d}}\n\n' % (_PROMPT_TOKENS, n, _PROMPT_TOKENS + n))


def _meter(scope: dict[str, Any], completion: int, finished: bool) -> None:
    for k, v in scope["headers"]:
        if k == b"x-neocloud-meter-id":
            _METERED[v] = json.dumps({"prompt_tokens": _PROMPT_TOKENS,
                                      "completion_tokens": completion,
                                      "finished": finished}).encode()
            if len(_METERED) > _METERED_MAX:
                _METERED.popitem(last=False)
            return


async def _chat(scope: dict[str, Any], body: bytes, send: Any) -> None:
    req = json.loads(body or b"{}")
    n = int(req.get("max_tokens") or 64)
    if not req.get("stream"):
        _meter(scope, n, True)
        text = json.dumps({"id": "chatcmpl-echo", "object": "chat.completion", "created": 0,
                           "model": "echo", "choices": [{"index": 0, "finish_reason": "length",
                           "message": {"role": "assistant", "content": "tok " * n}}],
                           "usage": {"prompt_tokens": _PROMPT_TOKENS, "completion_tokens": n,
                                     "total_tokens": _PROMPT_TOKENS + n}}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text})
        return
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    _meter(scope, 0, False)
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    if _FIRST_S:
        await asyncio.sleep(_FIRST_S)
    sent = 0
    try:
        for i in range(n):
            if i and _INTERVAL_S:
                await asyncio.sleep(_INTERVAL_S)
            await send({"type": "http.response.body", "body": _chunk(i, i == 0),
                        "more_body": True})
            sent += 1
        tail = _FINISH + (_usage_event(n) if include_usage else b"") + b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail})
    finally:
        _meter(scope, sent, True)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    parts: list[bytes] = []
    more = True
    while more:
        msg = await receive()
        parts.append(msg.get("body", b""))
        more = msg.get("more_body", False)
    path = scope["path"]
    if path == "/v1/chat/completions":
        await _chat(scope, b"".join(parts), send)
        return
    if path == "/usage":
        meter = b""
        for part in scope["query_string"].split(b"&"):
            if part.startswith(b"id="):
                meter = part[3:]
        found = _METERED.get(meter)
        status, text = (200, found) if found is not None else (404, b'{"error":{}}')
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text})
        return
    if path == "/stream":
        n = 256
        for part in scope["query_string"].split(b"&"):
            if part.startswith(b"n="):
                n = int(part[2:])
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for i in range(n):
            event = b'data: {"choices":[{"index":0,"delta":{"content":"tok%d"}}]}\n\n' % i
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
