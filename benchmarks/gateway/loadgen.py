"""An asyncio HTTP load generator, run as its own process by ``overhead.py``.

Modes:
    request: ``--concurrency`` tasks send the same POST for ``--seconds``; prints one JSON
        line ``{"rps", "p50_ms", "p99_ms", "errors"}``.
    stream: ``--concurrency`` tasks repeat a GET of an SSE stream; prints
        ``{"tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "streams", "errors"}`` where a
        token is one ``data: {`` event and TTFT is the time to the first one.
    chat: like ``stream``, but each request is a ``POST`` of ``--body`` (a streamed chat
        completion) and a token is one event carrying ``"content"``; also reports
        ``request_p50_ms`` (whole stream).
Uses the gateway's HTTP client (keep-alive pool on uvloop) so the generator stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit

import uvloop

from neocloud.gateway.client import UpstreamPool
from neocloud.gateway.wire import request_head


async def run(args: argparse.Namespace) -> dict[str, float]:
    parts = urlsplit(args.url)
    pool = UpstreamPool(max_idle_per_upstream=4096)
    target = pool.target(f"{parts.scheme}://{parts.netloc}")
    path = (parts.path + (f"?{parts.query}" if parts.query else "")).encode()
    headers = [(b"content-type", b"application/json")]
    if args.token:
        headers.append((b"authorization", f"Bearer {args.token}".encode()))
    streamed = args.mode in ("stream", "chat")
    marker = b'"content":' if args.mode == "chat" else b"data: {"
    body = args.body.encode() if args.mode in ("request", "chat") else b""
    head = request_head("POST" if body else "GET", path, target.host_header, headers, len(body))
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0
    errors = 0

    async def one() -> tuple[int, float | None, int]:
        conn = await pool.connect(target)
        t = time.perf_counter()
        conn.send(head, body)
        await conn.wait_head(30)
        first: float | None = None
        n = 0
        while True:
            data = conn.take()
            if data is not None:
                if streamed:
                    k = data.count(marker)
                    if k and first is None:
                        first = time.perf_counter() - t
                    n += k
                continue
            if conn.complete:
                break
            await conn.wait_body()
        status = conn.status
        conn.release()
        return status, first, n

    for _ in range(10):
        await one()
    deadline = time.perf_counter() + args.seconds

    async def worker() -> None:
        nonlocal tokens, errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                status, first, n = await one()
            except Exception:
                status, first, n = 0, None, 0
            if status != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)
            if first is not None:
                ttfts.append(first)
            tokens += n

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - t0
    await pool.close()
    if streamed:
        ttfts.sort()
        latencies.sort()
        return {
            "tokens_per_s": tokens / elapsed,
            "ttft_p50_ms": statistics.median(ttfts) * 1e3 if ttfts else float("nan"),
            "ttft_p99_ms": ttfts[int(len(ttfts) * 0.99)] * 1e3 if ttfts else float("nan"),
            "request_p50_ms": statistics.median(latencies) * 1e3 if latencies else float("nan"),
            "streams": len(latencies),
            "errors": errors,
        }
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else float("nan"),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--mode", choices=["request", "stream", "chat"], default="request")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--token", default="")
    ap.add_argument("--body", default='{"model":"echo","input":"hello world"}')
    args = ap.parse_args()
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
