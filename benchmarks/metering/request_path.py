"""The request path's cost of durable usage: the gateway with the control plane's usage
sink (each request in the request ledger before it is forwarded and before its answer
ends, by group commit) against the old path (records kept in memory, written later), in
the same run.

Starts (each its own process, loopback only) the echo replica of the gateway benchmarks
(``benchmarks/gateway/echo_upstream.py``), one gateway per mode (this file with
``--serve MODE``: the gateway on its own HTTP server, the route ``echo`` to the replica),
and the gateway benchmarks' load generator (``loadgen.py``, ``POST /v1/embeddings``). For
each concurrency it alternates the modes for ``--rounds`` rounds and prints the median
p50, p99 and requests/s of each, the ratios to ``memory`` and the load average.

Modes:
    memory: the old path: a sink that appends the record to a list.
    sqlite: :class:`~neocloud.server.metering.tokens.UsageBuffer` on a SQLite file (WAL),
        flushed every second by a thread, as the metering thread does.
    postgres: the same on ``--pg URL`` (its tables are created when missing; rows of the
        request ledger and usage records are added to it).

Run: python benchmarks/metering/request_path.py [--seconds 3] [--rounds 3]
    [--concurrency 1 --concurrency 32] [--pg postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GATEWAY_BENCH = HERE.parent / "gateway"
sys.path.insert(0, str(GATEWAY_BENCH))

from _procs import free_port, start_process, start_upstream, stop  # noqa: E402

TOKEN = "bench-token"


def serve(mode: str, port: int, upstream: str, db_url: str | None) -> None:
    """Run the gateway of ``mode`` on ``port`` (the ``--serve`` subcommand)."""
    import uvloop

    from neocloud.asgi import Receive, Scope, Send, send_json
    from neocloud.gateway import GatewaySettings, Principal, RequestRecord, create_gateway
    from neocloud.gateway.server import serve as http_serve
    from neocloud.gateway.static import StaticAuthenticator, StaticRouteTable, parse_route_spec

    class MemorySink:
        def __init__(self) -> None:
            self.records: list[RequestRecord] = []

        def record(self, rec: RequestRecord) -> None:
            self.records.append(rec)

    sink: object
    if mode == "memory":
        sink = MemorySink()
    else:
        from neocloud.server.db.engine import Database, migrate
        from neocloud.server.metering.tokens import UsageBuffer

        assert db_url is not None
        db = Database(db_url)
        migrate(db.engine)
        sink = buffer = UsageBuffer(db)

        def flush_every_second() -> None:
            while True:
                time.sleep(1.0)
                try:
                    buffer.flush()
                except Exception as exc:  # keep flushing, as the metering thread does
                    print(f"flush failed: {exc}", file=sys.stderr)

        threading.Thread(target=flush_every_second, daemon=True).start()
    principal = Principal(token_id="bench", workspace_id="default", role="admin")
    gateway = create_gateway(
        StaticRouteTable([parse_route_spec(f"echo={upstream}")]),
        StaticAuthenticator({TOKEN: principal}), sink,  # type: ignore[arg-type]
        GatewaySettings(route_cache_ttl_s=0.0))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/health":
            await send_json(send, 200, b'{"status":"ok"}')
            return
        await gateway(scope, receive, send)

    uvloop.run(http_serve(app, "127.0.0.1", port))


def _load(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(GATEWAY_BENCH / "loadgen.py"), url, "--mode", "request",
         "--concurrency", str(concurrency), "--seconds", str(seconds), "--token", TOKEN],
        capture_output=True, text=True, check=True, timeout=seconds + 60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", choices=["memory", "sqlite", "postgres"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--upstream")
    ap.add_argument("--db")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, action="append")
    ap.add_argument("--pg", help="a PostgreSQL URL: also measure the postgres mode")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream, args.db)
        return
    levels = args.concurrency or [1, 32]
    tmp = tempfile.mkdtemp(prefix="metering-bench-")
    up_port = free_port()
    upstream = start_upstream(up_port)
    upstream_url = f"http://127.0.0.1:{up_port}"
    modes = {"memory": None, "sqlite": f"sqlite:///{tmp}/bench.db"}
    if args.pg:
        modes["postgres"] = args.pg
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for mode, db in modes.items():
            ports[mode] = free_port()
            cmd = [str(Path(__file__)), "--serve", mode, "--port", str(ports[mode]),
                   "--upstream", upstream_url]
            if db:
                cmd += ["--db", db]
            procs[mode] = start_process(cmd, f"http://127.0.0.1:{ports[mode]}/health")
        results: dict[int, dict[str, dict[str, float]]] = {}
        for c in levels:
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    url = f"http://127.0.0.1:{ports[mode]}/v1/embeddings"
                    runs[mode].append(_load(url, c, args.seconds))
            results[c] = {m: {k: statistics.median(r[k] for r in rs)
                              for k in ("p50_ms", "p99_ms", "rps", "errors")}
                          for m, rs in runs.items()}
        load = os.getloadavg()
        summary: dict[str, float] = {}
        for c, by_mode in results.items():
            base = by_mode["memory"]
            for mode, fig in by_mode.items():
                print(f"c={c:<3} {mode:<9} p50 {fig['p50_ms']:7.3f} ms  p99 "
                      f"{fig['p99_ms']:7.3f} ms  {fig['rps']:8.0f} req/s  errors "
                      f"{fig['errors']:.0f}")
                if mode != "memory":
                    summary[f"c{c}_{mode}_p50_added_ms"] = round(
                        fig["p50_ms"] - base["p50_ms"], 3)
                    summary[f"c{c}_{mode}_rps_ratio"] = round(fig["rps"] / base["rps"], 3)
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(json.dumps(summary))
    finally:
        for p in procs.values():
            stop(p)
        stop(upstream)


if __name__ == "__main__":
    main()
