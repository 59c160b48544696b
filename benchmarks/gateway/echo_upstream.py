"""A minimal replica for gateway benchmarks (raw ASGI, served by uvicorn).

Routes:
    POST /v1/embeddings, POST /echo: a small OpenAI-style JSON answer with ``usage``.
    GET /stream?n=N: N Server-Sent Events, each one token, then ``data: [DONE]``.
"""

from __future__ import annotations

from typing import Any

_BODY = (
    b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}],'
    b'"model":"echo","usage":{"prompt_tokens":2,"total_tokens":2}}'
)
_JSON_HEADERS = [(b"content-type", b"application/json"),
                 (b"content-length", str(len(_BODY)).encode())]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    if scope["path"] == "/stream":
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
