"""Gateway overhead: the same echo replica called directly and through the gateway.

Starts (each its own process, loopback only) the echo replica (``echo_upstream.py`` under
uvicorn with httptools and uvloop), a standalone gateway copy routing ``echo`` to it
(``python -m neocloud.gateway``), and a load generator: Debian's ``wrk`` when installed
(``apt-get install -y wrk``), else ``loadgen.py``. For each concurrency it alternates
direct and gateway runs for ``--rounds`` rounds and reports the median of each figure.

Gateway modes: ``gateway`` (the runner on its own HTTP server), ``gateway_uvicorn`` (the
runner on uvicorn, as inside the control plane) and, with ``--unix``, ``gateway_unix``
(own server; the replica, a second copy of the same uvicorn app, on a Unix socket).

Workloads:
    echo: ``POST /v1/embeddings`` with a small JSON body (the gateway reads ``model``,
        authenticates, balances and proxies; direct goes to the replica's same path).
    stream: a 256-event SSE stream (``GET /stream`` direct, ``/endpoints/echo/stream``
        through the gateway) produced as fast as the replica can; tokens/s and
        time-to-first-token, measured by ``loadgen.py``.

Goals (issue "Serving runtime ..."): echo through the gateway >= 0.7x direct req/s at
c=64; at c=1 the gateway adds <= 1 ms to p50; streamed tokens/s >= 0.9x direct and <= 5 ms
added time-to-first-token. The last line printed is one JSON object with those ratios.

Run: python benchmarks/gateway/overhead.py [--seconds 3] [--rounds 3] [--gateway-workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from urllib.parse import quote

import psutil
from _procs import HERE, free_port, start_gateway, start_upstream, stop

TOKEN = "bench-token"
BODY = '{"model":"echo","input":"hello world"}'
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(url: str, concurrency: int, seconds: float, token: str) -> dict[str, float]:
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
             "-s", f.name, url],
            capture_output=True, text=True, timeout=seconds + 30, check=True,
        ).stdout
    finally:
        os.unlink(f.name)

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {"rps": float(rps.group(1)) if rps else float("nan"), "p50_ms": latency("50"),
            "p99_ms": latency("99"), "errors": errors}


def _loadgen(url: str, mode: str, concurrency: int, seconds: float, token: str
             ) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py"), url, "--mode", mode, "--concurrency",
         str(concurrency), "--seconds", str(seconds), "--token", token, "--body", BODY],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _cpu_s(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of ``procs`` and their children (uvicorn workers)."""
    total = 0.0
    for p in procs:
        for q in [p, *p.children(recursive=True)]:
            try:
                t = q.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description="gateway overhead benchmark")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--stream-concurrency", default="1,16")
    ap.add_argument("--gateway-workers", type=int, default=1)
    ap.add_argument("--loadgen", choices=["auto", "wrk", "asyncio"], default="auto")
    ap.add_argument("--unix", action="store_true",
                    help="also run a gateway whose replica listens on a Unix socket")
    args = ap.parse_args()
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    up_port, gw_port, gwu_port = free_port(), free_port(), free_port()
    upstream = start_upstream(up_port)
    up_url = f"http://127.0.0.1:{up_port}"
    gateway = start_gateway(gw_port, up_url, TOKEN, args.gateway_workers, "neocloud")
    gateway_uv = start_gateway(gwu_port, up_url, TOKEN, args.gateway_workers, "uvicorn")
    procs = {"direct": psutil.Process(upstream.pid), "gateway": psutil.Process(gateway.pid),
             "gateway_uvicorn": psutil.Process(gateway_uv.pid)}
    replica_of = dict.fromkeys(("direct", "gateway", "gateway_uvicorn"), procs["direct"])
    bases = {"direct": up_url, "gateway": f"http://127.0.0.1:{gw_port}",
             "gateway_uvicorn": f"http://127.0.0.1:{gwu_port}"}
    extra: list[subprocess.Popen[bytes]] = []
    if args.unix:
        sock_dir = tempfile.mkdtemp()
        uds = os.path.join(sock_dir, "replica.sock")
        extra.append(start_upstream(0, uds))
        gwx_port = free_port()
        extra.append(start_gateway(gwx_port, "http+unix://" + quote(uds, safe=""), TOKEN,
                                   args.gateway_workers, "neocloud"))
        procs["gateway_unix"] = psutil.Process(extra[-1].pid)
        replica_of["gateway_unix"] = psutil.Process(extra[0].pid)
        bases["gateway_unix"] = f"http://127.0.0.1:{gwx_port}"
    print(f"cpus={os.cpu_count()} loadgen={'wrk' if use_wrk else 'asyncio'} "
          f"gateway_workers={args.gateway_workers} seconds={args.seconds} "
          f"rounds={args.rounds}", flush=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for c in [int(x) for x in args.concurrency.split(",")]:
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in bases}
            for _ in range(args.rounds):
                for mode, base in bases.items():
                    url = f"{base}/v1/embeddings"
                    up0, gw0 = _cpu_s([replica_of[mode]]), _cpu_s([procs[mode]])
                    if use_wrk:
                        r = _wrk(url, c, args.seconds, TOKEN)
                    else:
                        r = _loadgen(url, "request", c, args.seconds, TOKEN)
                    n = max(1.0, r["rps"] * args.seconds)
                    r["replica_cpu_us_per_req"] = (_cpu_s([replica_of[mode]]) - up0) / n * 1e6
                    r["gateway_cpu_us_per_req"] = (
                        0.0 if mode == "direct" else (_cpu_s([procs[mode]]) - gw0) / n * 1e6)
                    runs[mode].append(r)
            results[f"echo_c{c}"] = {m: _median(r) for m, r in runs.items()}
        for c in [int(x) for x in args.stream_concurrency.split(",")]:
            runs = {m: [] for m in bases}
            for _ in range(args.rounds):
                for mode, base in bases.items():
                    path = "/stream?n=256" if mode == "direct" else (
                        "/endpoints/echo/stream?n=256")
                    runs[mode].append(
                        _loadgen(f"{base}{path}", "stream", c, args.seconds, TOKEN))
            results[f"stream_c{c}"] = {m: _median(r) for m, r in runs.items()}
    finally:
        stop(gateway)
        stop(gateway_uv)
        stop(upstream)
        for proc in extra:
            stop(proc)

    print(f"{'workload':12s} {'mode':16s} {'req/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'errors':>6s} {'replica CPU us/req':>19s} {'gateway CPU us/req':>19s}")
    for name, modes in results.items():
        for mode, r in modes.items():
            if name.startswith("echo"):
                print(f"{name:12s} {mode:16s} {r['rps']:10.0f} {r['p50_ms']:8.3f} "
                      f"{r['p99_ms']:8.3f} {r['errors']:6.0f} "
                      f"{r['replica_cpu_us_per_req']:19.1f} {r['gateway_cpu_us_per_req']:19.1f}")
            else:
                print(f"{name:12s} {mode:16s} {r['tokens_per_s']:10.0f} tok/s  ttft p50 "
                      f"{r['ttft_p50_ms']:.3f} ms  p99 {r['ttft_p99_ms']:.3f} ms  "
                      f"errors {r['errors']:.0f}")
    summary: dict[str, object] = {"cpus": os.cpu_count(),
                                  "loadgen": "wrk" if use_wrk else "asyncio"}
    for name, modes in results.items():
        d = modes["direct"]
        if name.startswith("echo"):
            summary[f"{name}_replica_cpu_us_per_req"] = round(d["replica_cpu_us_per_req"], 1)
        for gmode in [m for m in modes if m != "direct"]:
            g = modes[gmode]
            if name.startswith("echo"):
                summary[f"{name}_{gmode}_over_direct_rps"] = round(g["rps"] / d["rps"], 3)
                summary[f"{name}_{gmode}_added_p50_ms"] = round(g["p50_ms"] - d["p50_ms"], 3)
                summary[f"{name}_{gmode}_cpu_us_per_req"] = round(g["gateway_cpu_us_per_req"], 1)
            else:
                summary[f"{name}_{gmode}_over_direct_tokens_per_s"] = round(
                    g["tokens_per_s"] / d["tokens_per_s"], 3)
                summary[f"{name}_{gmode}_added_ttft_p50_ms"] = round(
                    g["ttft_p50_ms"] - d["ttft_p50_ms"], 3)
    goals = {
        "goal_echo_c64_rps_ratio_ge_0.7": summary.get("echo_c64_gateway_over_direct_rps"),
        "goal_echo_c1_added_p50_ms_le_1": summary.get("echo_c1_gateway_added_p50_ms"),
        "goal_stream_tokens_ratio_ge_0.9":
            summary.get("stream_c1_gateway_over_direct_tokens_per_s"),
        "goal_stream_added_ttft_ms_le_5": summary.get("stream_c1_gateway_added_ttft_p50_ms"),
    }
    summary.update(goals)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
