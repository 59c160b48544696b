"""The replica face of a vLLM server: the same ``/metrics`` names and the same per-request
token count (``GET /usage``) as the built-in engine, in front of vLLM's own OpenAI server.

Every request is forwarded to vLLM unchanged, except streamed ``/v1/completions`` and
``/v1/chat/completions``: the adapter asks vLLM for usage in every chunk
(``stream_options: {include_usage, continuous_usage_stats}``, vLLM's option), records the
running count under the request's meter id (``X-Neocloud-Meter-Id``, else
``X-Request-Id``) and gives the client the chunks as it asked for them: without
``include_usage`` no chunk carries ``usage`` and vLLM's final usage-only chunk is dropped;
with it only that final chunk does (OpenAI's form). A client that leaves mid-stream
closes the vLLM request (vLLM aborts it) and its count so far is final. JSON responses
are passed through and their ``usage`` recorded.

``GET /metrics`` answers :func:`neocloud.serving.engine_metrics.translate_vllm` of vLLM's
metrics followed by vLLM's own text; ``/health`` and ``/ready`` mirror vLLM's ``/health``.
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any
from urllib.parse import parse_qsl

import httpx

from neocloud.asgi import Receive, Scope, Send
from neocloud.serving.engine_metrics import translate_vllm

_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"host", b"content-length"}
_METERED = ("/v1/completions", "/v1/chat/completions")
LEDGER_SIZE = 4096


class VllmAdapter:
    """ASGI app forwarding to the vLLM server at ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.client = httpx.AsyncClient(base_url=self.upstream, timeout=httpx.Timeout(
            None, connect=10.0), limits=httpx.Limits(max_connections=1024,
                                                     max_keepalive_connections=256))
        self.ledger: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        body = await _read(receive)
        if method == "GET" and path in ("/health", "/ready"):
            try:
                r = await self.client.get("/health")
                status = r.status_code
            except httpx.HTTPError:
                status = 503
            await _json(send, status, {"status": "ok" if status == 200 else "loading"})
            return
        if method == "GET" and path == "/metrics":
            r = await self.client.get("/metrics")
            text = translate_vllm(r.text) + r.text
            await _send(send, 200, [(b"content-type", b"text/plain; version=0.0.4")],
                        text.encode())
            return
        if method == "GET" and path == "/usage":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            found = await self._usage(query.get("id", ""), float(query.get("wait_s") or 0))
            if found is None:
                await _json(send, 404, {"error": {"message": "no usage for this id",
                                                  "type": "invalid_request_error",
                                                  "param": "id", "code": "not_found"}})
            else:
                await _json(send, 200, found)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP]
        meter = _header(scope, b"x-neocloud-meter-id") or _header(scope, b"x-request-id")
        req: dict[str, Any] | None = None
        if method == "POST" and path in _METERED:
            try:
                req = json.loads(body)
            except ValueError:
                req = None
        if isinstance(req, dict) and req.get("stream"):
            await self._stream(scope, receive, send, headers, req, meter)
            return
        target = path + (("?" + scope["query_string"].decode("latin-1"))
                         if scope.get("query_string") else "")
        async with self.client.stream(method, target, content=body, headers=headers) as r:
            if isinstance(req, dict):  # a JSON answer of a metered route: read its usage
                content = await r.aread()
                if meter and r.status_code == 200:
                    try:
                        self._remember(meter, json.loads(content).get("usage") or {},
                                       finished=True)
                    except (ValueError, AttributeError):
                        pass
                await _send(send, r.status_code, _resp_headers(r), content)
                return
            await send({"type": "http.response.start", "status": r.status_code,
                        "headers": _resp_headers(r, raw=True)})
            async for chunk in r.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    # ------------------------------------------------------------------ streams
    async def _stream(self, scope: Scope, receive: Receive, send: Send,
                      headers: list[tuple[bytes, bytes]], req: dict[str, Any],
                      meter: str | None) -> None:
        opts = req.get("stream_options") or {}
        asked = bool(opts.get("include_usage"))
        req["stream_options"] = {**opts, "include_usage": True,
                                 "continuous_usage_stats": True}
        if meter:
            self._remember(meter, {}, finished=False)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            async with self.client.stream("POST", scope["path"], json=req,
                                          headers=headers) as r:
                if r.status_code != 200:
                    await _send(send, r.status_code, _resp_headers(r), await r.aread())
                    return
                await send({"type": "http.response.start", "status": 200,
                            "headers": _resp_headers(r)})
                async for line in r.aiter_lines():
                    if gone.is_set():
                        break
                    out = self._rewrite(line, meter, asked)
                    if out is not None:
                        await send({"type": "http.response.body", "body": out,
                                    "more_body": True})
                if not gone.is_set():
                    await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            entry = self.ledger.get(meter) if meter else None
            if entry is not None:
                entry["finished"] = True

    def _rewrite(self, line: str, meter: str | None, asked: bool) -> bytes | None:
        if not line.startswith("data: "):
            return None if not line else (line + "\n\n").encode()
        data = line[6:]
        if data.strip() == "[DONE]":
            return b"data: [DONE]\n\n"
        try:
            chunk = json.loads(data)
        except ValueError:
            return (line + "\n\n").encode()
        usage = chunk.get("usage")
        if isinstance(usage, dict) and meter:
            self._remember(meter, usage, finished=False)
        final = not chunk.get("choices")
        if not asked:
            if final and usage is not None:
                return None  # vLLM's usage-only chunk: not asked for
            chunk.pop("usage", None)
        elif not final:
            chunk["usage"] = None
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    # ------------------------------------------------------------------ ledger
    def _remember(self, meter: str, usage: dict[str, Any], finished: bool) -> None:
        entry = self.ledger.setdefault(meter, {"prompt_tokens": 0, "completion_tokens": 0,
                                               "finished": False})
        for key in ("prompt_tokens", "completion_tokens"):
            v = usage.get(key)
            if isinstance(v, int):
                entry[key] = v
        entry["finished"] = entry["finished"] or finished
        self.ledger.move_to_end(meter)
        while len(self.ledger) > LEDGER_SIZE:
            self.ledger.popitem(last=False)

    async def _usage(self, meter: str, wait_s: float) -> dict[str, Any] | None:
        deadline = asyncio.get_running_loop().time() + min(10.0, max(0.0, wait_s))
        while True:
            entry = self.ledger.get(meter)
            if entry is None or entry["finished"] or \
                    asyncio.get_running_loop().time() >= deadline:
                return dict(entry) if entry is not None else None
            await asyncio.sleep(0.01)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


def _resp_headers(r: httpx.Response, raw: bool = False) -> list[tuple[bytes, bytes]]:
    """vLLM's response headers for the client: hop-by-hop ones dropped, and
    ``Content-Encoding`` too unless the body is passed on ``raw`` (httpx decodes it)."""
    drop = {"date", "server"} if raw else {"date", "server", "content-encoding"}
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.items()
            if k.encode("latin-1") not in _HOP and k.lower() not in drop]


async def _read(receive: Receive) -> bytes:
    parts = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        parts.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    return b"".join(parts)


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
                ) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, obj: Any) -> None:
    await _send(send, status, [(b"content-type", b"application/json")],
                json.dumps(obj).encode())
