"""Gateway cost on streamed chat: the same fake OpenAI replica direct and through gateways.

Starts (each its own process, loopback only) the echo replica (``echo_upstream.py`` under
uvicorn: ``POST /v1/chat/completions`` streams ``--tokens`` chunk events, one write each,
like an OpenAI server; paced by ``--first-token-ms`` / ``--token-interval-ms``, as fast as
it can by default), then:

    gateway: the standalone copy (``python -m neocloud.gateway``, its own HTTP server, no
        usage sink), as ``benchmarks/generation/bench.py`` runs it;
    metered: the gateway as inside the control plane (``metered_gateway.py``: uvicorn,
        the control plane's usage sink, each stream scanned for usage and, without
        ``stream_options.include_usage``, the replica asked for its count afterwards).

For each concurrency, ``--rounds`` rounds each run direct, gateway and metered in turn
(interleaved, the order rotated each round, ``--seconds`` each) with ``loadgen.py --mode
chat``; figures are medians over rounds: aggregate tokens/s, time to first token p50/p99,
whole-stream p50, each process's CPU time per streamed request (user + system: the
replica's on the direct row, the gateway's on the others), and, paired with the direct
run of the same round, the gateway's tokens/s ratio and added TTFT. The metered
gateway's request records are checked at the end: one per request, each with the
replica's token count.

Prints ``uptime`` first, a table, and one JSON line last with, per concurrency and
gateway, ``tokens_ratio`` (gateway / direct tokens/s) and ``added_ttft_p50_ms``.

Run: python benchmarks/gateway/chat_stream.py [--concurrency 1,8,32] [--seconds 3]
         [--rounds 3] [--tokens 64] [--include-usage] [--token-interval-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import urllib.request

import psutil
from _procs import HERE, free_port, start_gateway, start_process, start_upstream, stop

TOKEN = "bench-token"


def _loadgen(url: str, body: str, c: int, seconds: float, token: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "loadgen.py"), url, "--mode", "chat", "--concurrency",
         str(c), "--seconds", str(seconds), "--token", token, "--body", body],
        capture_output=True, text=True, timeout=seconds + 120, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for q in [proc, *proc.children(recursive=True)]:
        try:
            t = q.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64, help="chunk events per stream")
    ap.add_argument("--include-usage", action="store_true",
                    help="ask for stream_options.include_usage (no replica look-up then)")
    ap.add_argument("--first-token-ms", type=float, default=0.0)
    ap.add_argument("--token-interval-ms", type=float, default=0.0)
    ap.add_argument("--modes", default="direct,gateway,metered")
    ap.add_argument("--metered-server", choices=["uvicorn", "neocloud"], default="uvicorn",
                    help="HTTP server of the metered gateway (the control plane's: uvicorn)")
    ap.add_argument("--auth-delay-ms", type=float, default=0.0,
                    help="metered gateway: time each token look-up takes (a database read)")
    ap.add_argument("--auth-ttl-s", type=float, default=5.0,
                    help="metered gateway: token cache TTL (the control plane's default)")
    args = ap.parse_args()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("uptime:", uptime, flush=True)
    req: dict[str, object] = {"model": "echo", "stream": True, "max_tokens": args.tokens,
                              "messages": [{"role": "user", "content": "Say something."}]}
    if args.include_usage:
        req["stream_options"] = {"include_usage": True}
    body = json.dumps(req, separators=(",", ":"))
    up_port, gw_port, mg_port = free_port(), free_port(), free_port()
    upstream = start_upstream(up_port, env={
        "ECHO_FIRST_TOKEN_MS": str(args.first_token_ms),
        "ECHO_TOKEN_INTERVAL_MS": str(args.token_interval_ms)})
    up_url = f"http://127.0.0.1:{up_port}"
    procs = [upstream]
    modes = args.modes.split(",")
    bases = {"direct": up_url}
    watched: dict[str, psutil.Process] = {"direct": psutil.Process(upstream.pid)}
    try:
        if "gateway" in modes:
            procs.append(start_gateway(gw_port, up_url, TOKEN))
            bases["gateway"] = f"http://127.0.0.1:{gw_port}"
            watched["gateway"] = psutil.Process(procs[-1].pid)
        if "metered" in modes:
            procs.append(start_process(
                [str(HERE / "metered_gateway.py"), "--port", str(mg_port),
                 "--route", f"echo={up_url}", "--server", args.metered_server,
                 "--auth-delay-ms", str(args.auth_delay_ms), "--auth-ttl-s", str(args.auth_ttl_s)],
                f"http://127.0.0.1:{mg_port}/health"))
            bases["metered"] = f"http://127.0.0.1:{mg_port}"
            watched["metered"] = psutil.Process(procs[-1].pid)
        print(f"cpus={os.cpu_count()} tokens={args.tokens} include_usage={args.include_usage} "
              f"first_token_ms={args.first_token_ms} token_interval_ms="
              f"{args.token_interval_ms} seconds={args.seconds} rounds={args.rounds} "
              f"metered_server={args.metered_server} auth_delay_ms={args.auth_delay_ms} "
              f"auth_ttl_s={args.auth_ttl_s}",
              flush=True)
        results: dict[int, dict[str, dict[str, float]]] = {}
        streams_metered = 0
        for c in [int(x) for x in args.concurrency.split(",")]:
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in bases}
            names = list(bases)
            for i in range(args.rounds):
                for mode in names[i % len(names):] + names[:i % len(names)]:  # rotated
                    cpu0 = _cpu_s(watched[mode])
                    r = _loadgen(f"{bases[mode]}/v1/chat/completions", body, c, args.seconds,
                                 TOKEN)
                    r["cpu_us_per_stream"] = ((_cpu_s(watched[mode]) - cpu0)
                                              / max(1.0, r["streams"]) * 1e6)
                    runs[mode].append(r)
                    if mode == "metered":
                        streams_metered += int(r["streams"]) + 10  # + loadgen's warm-up
            results[c] = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
                          for m, rs in runs.items()}
            for m, rs in runs.items():  # paired with the direct run of the same round
                pairs = list(zip(rs, runs["direct"], strict=True))
                results[c][m]["tokens_ratio"] = statistics.median(
                    g["tokens_per_s"] / d["tokens_per_s"] for g, d in pairs)
                results[c][m]["added_ttft_p50_ms"] = statistics.median(
                    g["ttft_p50_ms"] - d["ttft_p50_ms"] for g, d in pairs)
                results[c][m]["added_ttft_p99_ms"] = statistics.median(
                    g["ttft_p99_ms"] - d["ttft_p99_ms"] for g, d in pairs)
        check = None
        if "metered" in bases:
            check = json.loads(urllib.request.urlopen(
                f"{bases['metered']}/bench/usage", timeout=30).read())
            check["streams_sent"] = streams_metered
    finally:
        for p in reversed(procs):
            stop(p)
    print(f"{'c':>3} {'mode':8s} {'tok/s':>9s} {'ratio':>6s} {'TTFT p50':>9s} {'+ms':>7s} "
          f"{'TTFT p99':>9s} {'stream p50':>10s} {'CPU us/stream':>13s}")
    summary: dict[str, object] = {"uptime": uptime, "cpus": os.cpu_count(),
                                  "tokens": args.tokens, "include_usage": args.include_usage,
                                  "token_interval_ms": args.token_interval_ms}
    for c, modes_r in results.items():
        for mode, r in modes_r.items():
            ratio, added = r["tokens_ratio"], r["added_ttft_p50_ms"]
            print(f"{c:3d} {mode:8s} {r['tokens_per_s']:9.0f} {ratio:6.3f} "
                  f"{r['ttft_p50_ms']:9.3f} {added:7.3f} {r['ttft_p99_ms']:9.3f} "
                  f"{r['request_p50_ms']:10.3f} {r['cpu_us_per_stream']:13.0f}")
            if mode != "direct":
                summary[f"c{c}_{mode}_tokens_ratio"] = round(ratio, 3)
                summary[f"c{c}_{mode}_added_ttft_p50_ms"] = round(added, 3)
                summary[f"c{c}_{mode}_added_ttft_p99_ms"] = round(r["added_ttft_p99_ms"], 3)
                summary[f"c{c}_{mode}_cpu_us_per_stream"] = round(r["cpu_us_per_stream"])
            else:
                summary[f"c{c}_direct_tokens_per_s"] = round(r["tokens_per_s"])
                summary[f"c{c}_replica_cpu_us_per_stream"] = round(r["cpu_us_per_stream"])
    if check is not None:
        print(f"metered: {check}")
        summary["metered_check"] = check
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
