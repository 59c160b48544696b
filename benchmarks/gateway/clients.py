"""Which HTTP client should the gateway use towards replicas? Measured, same run.

Starts ``echo_upstream`` under uvicorn (httptools, uvloop) in a separate process, then for
each client (httpx, aiohttp when installed, and the gateway's own ``UpstreamPool``) sends
POST requests with a small JSON body from ``--concurrency`` tasks on one uvloop event
loop for ``--seconds`` and prints requests/s, p50 and p99 latency. The last line is one
JSON object with each client's figures and its ratio to the gateway's own client.

Run: python benchmarks/gateway/clients.py [--concurrency 64] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

from _procs import free_port, start_upstream, stop

from neocloud.gateway.client import UpstreamPool
from neocloud.gateway.wire import request_head

BODY = b'{"model":"echo","input":"hello world"}'


async def _drive(call: Callable[[], Awaitable[int]], concurrency: int, seconds: float
                 ) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                status = await call()
            except Exception:
                status = 0
            if status != 200:
                errors += 1
            latencies.append(time.perf_counter() - t)

    for _ in range(20):  # warm up the connections
        await call()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "errors": errors,
    }


async def bench_own(url: str, c: int, s: float) -> dict[str, float]:
    pool = UpstreamPool(max_idle_per_upstream=1024)
    target = pool.target(url)
    head = request_head("POST", b"/v1/embeddings", target.host_header,
                        [(b"content-type", b"application/json")], len(BODY))

    async def call() -> int:
        conn = await pool.connect(target)
        conn.send(head, BODY)
        await conn.wait_head(10)
        while not conn.complete:
            conn.take()
            await conn.wait_body()
        conn.take()
        status = conn.status
        conn.release()
        return status

    try:
        return await _drive(call, c, s)
    finally:
        await pool.close()


async def bench_httpx(url: str, c: int, s: float) -> dict[str, float]:
    import httpx

    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        async def call() -> int:
            resp = await client.post("/v1/embeddings", content=BODY,
                                     headers={"content-type": "application/json"})
            return resp.status_code

        return await _drive(call, c, s)


async def bench_aiohttp(url: str, c: int, s: float) -> dict[str, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        async def call() -> int:
            async with session.post("/v1/embeddings", data=BODY,
                                    headers={"content-type": "application/json"}) as resp:
                await resp.read()
                return resp.status

        return await _drive(call, c, s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    import uvloop

    port = free_port()
    upstream = start_upstream(port)
    url = f"http://127.0.0.1:{port}"
    results: dict[str, dict[str, float]] = {}
    try:
        benches = {"own": bench_own, "httpx": bench_httpx}
        try:
            import aiohttp  # noqa: F401

            benches["aiohttp"] = bench_aiohttp
        except ImportError:
            print("aiohttp is not installed: skipped")
        for name, fn in benches.items():
            results[name] = uvloop.run(fn(url, args.concurrency, args.seconds))
            r = results[name]
            print(f"{name:8s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                  f"p99 {r['p99_ms']:6.2f} ms  errors {r['errors']:.0f}")
    finally:
        stop(upstream)
    own = results["own"]["rps"]
    print(json.dumps({"concurrency": args.concurrency, "clients": results,
                      "rps_ratio_to_own": {k: round(v["rps"] / own, 3)
                                           for k, v in results.items()}}))


if __name__ == "__main__":
    main()
