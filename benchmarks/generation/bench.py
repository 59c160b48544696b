"""Streamed generation: the built-in engine against vLLM, direct and through the gateway.

Starts (loopback only) a built-in ``chat`` replica (``python -m neocloud.serving chat``, in
the default dtype: bfloat16 on a CPU with native bfloat16, as vLLM's CPU backend runs this
float32 checkpoint, float32 otherwise; see ``serving/textgen/loading.py``), a second one
in float32 (``NEOCLOUD_DTYPE=float32``, the batch-invariant configuration; measured direct
only; ``--no-f32`` skips it), with ``--transformers-forward`` a third one on transformers'
forward instead of the engine's own (``NEOCLOUD_FAST_FORWARD=0``, direct only), a vLLM
replica (``python -m neocloud.serving.engines.vllm``,
when ``make install-vllm`` was run; skipped otherwise) on the same converted SmolLM2-135M
checkpoint, and one standalone gateway routing ``builtin`` and ``vllm`` to them
(``--no-gateway`` skips the gateway targets). Then, interleaved per concurrency level
(``--levels``): streamed chat completions with ``max_tokens`` 64 (greedy), ``c`` clients
each sending ``rounds`` requests back to back, against each target. Figures: aggregate
completion tokens/s (the engine's own ``usage`` counts, asked with
``stream_options.include_usage``), time to first token p50/p99, time per output token p50
((last token - first token) / (tokens - 1) per request), and the gateway's cost as ratios
to the direct figures of the same run.

Trace replay: the first ``--trace-requests`` rows of
``../shared/traces/azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv`` (arrival
time, context tokens, generated tokens), scaled to this machine: arrival gaps divided by
``--trace-speedup``, prompt sizes divided by ``--trace-prompt-div`` (at most 512 tokens;
the prompt is filler text of about that many tokens) and output sizes divided by
``--trace-output-div`` (1..128). Replayed open-loop (requests start at their scaled
arrival times whatever the server does), per engine, direct.

Prefix caching: vLLM caches the KV blocks of the prompts it prefilled by default, and so does
the built-in engine (``serving/textgen/prefix.py``); the benchmark's prompts repeat (4 chat
prompts), so later requests skip most of their prefill on both. ``--no-prefix-cache``
measures both engines without it.

Engines take turns: while one is measured the other's processes are stopped (SIGSTOP),
since an idle vLLM server keeps polling and the machine has 2 cores.

Prints ``uptime`` first, a table, and one JSON line last.

    .venv/bin/python benchmarks/generation/bench.py            # full run (5 min on a quiet machine)
    .venv/bin/python benchmarks/generation/bench.py --quick    # c=1,8 only, short trace
    .venv/bin/python benchmarks/generation/bench.py --levels 32 --no-gateway --no-f32 \
        --trace-requests 0                                     # c=32 only, 1-2 min
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "traces" / "azure-llm-inference-2023" / \
    "AzureLLMInferenceTrace_conv.csv"
TOKEN = "bench-token"
PROMPTS = [
    "Tell me a long story about a lighthouse keeper and a storm.",
    "Explain how a steam engine works, step by step, in detail.",
    "Describe a walk through a busy market in a large city.",
    "Write a letter to a friend about learning to play the violin.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready within {timeout_s} s")


LOGS = Path(os.environ.get("BENCH_LOG_DIR") or f"/tmp/neocloud-bench-generation-{os.getpid()}")
"""Each started process's output goes to a file here (``BENCH_LOG_DIR``), printed at the
end: a failed request names the file to read."""


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    name = "-".join(a for a in args[:4] if not a.startswith("-"))
    with open(LOGS / f"{len(list(LOGS.iterdir()))}-{name}.log", "wb") as out:
        return subprocess.Popen([sys.executable, *args], start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def groups(proc: subprocess.Popen[bytes]) -> list[int]:
    """Process groups of ``proc`` and of every process below it (the vLLM launcher puts
    vLLM in a group of its own)."""
    import psutil

    found = [proc.pid]
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                found.append(os.getpgid(child.pid))
            except ProcessLookupError:
                pass
    except psutil.NoSuchProcess:
        pass
    return list(dict.fromkeys(found))


def hold(procs: dict[str, subprocess.Popen[bytes]], running: str) -> None:
    """Let only the engine ``running`` have the CPUs: the other engines' process groups
    are stopped (SIGSTOP) and resumed when their turn comes. An idle vLLM server keeps
    polling, which on 2 cores would slow whatever is measured beside it."""
    for name, proc in procs.items():
        if proc.poll() is None:
            for pgid in groups(proc):
                try:
                    os.killpg(pgid, signal.SIGCONT if name == running else signal.SIGSTOP)
                except ProcessLookupError:
                    pass


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int,
              headers: dict[str, str]) -> dict[str, float]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers=headers) as r:
        if r.status_code != 200:
            detail = (await r.aread()).decode(errors="replace")[:300]
            raise RuntimeError(f"HTTP {r.status_code} from {url}: {detail} "
                               f"(process logs: {LOGS})")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
    end = time.perf_counter()
    first = first or end
    last = last or end
    return {"ttft": first - t0, "tokens": tokens, "end": end,
            "tpot": (last - first) / (tokens - 1) if tokens > 1 else float("nan")}


async def closed_loop(url: str, model: str, c: int, rounds: int, headers: dict[str, str]
                      ) -> dict[str, float]:
    limits = httpx.Limits(max_connections=c + 4, max_keepalive_connections=c + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        results: list[dict[str, float]] = []

        async def worker(w: int) -> None:
            for k in range(rounds):
                results.append(await one(client, url, model, PROMPTS[(w + k) % len(PROMPTS)],
                                         64, headers))

        t0 = time.perf_counter()
        await asyncio.gather(*[worker(w) for w in range(c)])
        wall = time.perf_counter() - t0
    return summarize(results, wall)


def summarize(results: list[dict[str, float]], wall: float) -> dict[str, float]:
    tokens = sum(r["tokens"] for r in results)
    tpots = [r["tpot"] for r in results if r["tpot"] == r["tpot"]]
    ttfts = [r["ttft"] for r in results]
    return {"requests": len(results), "tokens": tokens, "tok_s": tokens / wall,
            "ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99),
            "tpot_p50": pct(tpots, 0.5), "wall_s": wall}


def load_trace(n: int, speedup: float, prompt_div: float, output_div: float
               ) -> list[tuple[float, int, int]]:
    rows: list[tuple[float, int, int]] = []
    with open(TRACE) as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i >= n:
                break
            ts = dt.datetime.fromisoformat(row["TIMESTAMP"][:26])
            rows.append((ts.timestamp(), int(row["ContextTokens"]),
                         int(row["GeneratedTokens"])))
    t0 = rows[0][0]
    return [((t - t0) / speedup, max(8, min(512, int(p / prompt_div))),
             max(1, min(128, int(g / output_div)))) for t, p, g in rows]


async def replay(url: str, model: str, trace: list[tuple[float, int, int]],
                 headers: dict[str, str]) -> dict[str, float]:
    filler = "the quick brown fox jumps over the lazy dog and "  # about 11 tokens
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=256)) as cl:
        t0 = time.perf_counter()

        async def at(when: float, p: int, g: int) -> dict[str, float]:
            await asyncio.sleep(max(0.0, t0 + when - time.perf_counter()))
            prompt = (filler * (p // 11 + 1))[: p * 4] + "\nSummarize the text above."
            return await one(cl, url, model, prompt, g, headers)

        results = await asyncio.gather(*[at(w, p, g) for w, p, g in trace])
        wall = time.perf_counter() - t0
    return summarize(list(results), wall)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="c=1,8, one round, a short trace")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--no-f32", dest="f32", action="store_false",
                    help="skip the built-in engine in float32 (its batch-invariant dtype)")
    ap.add_argument("--no-gateway", dest="gateway", action="store_false",
                    help="measure the engines direct only")
    ap.add_argument("--transformers-forward", dest="tf", action="store_true",
                    help="also the built-in engine on transformers' forward "
                         "(NEOCLOUD_FAST_FORWARD=0: the engine before its own forward)")
    ap.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                    help="both engines without their prefix cache (built-in: "
                    "NEOCLOUD_PREFIX_CACHE_TOKENS=0; vLLM: --no-enable-prefix-caching); "
                    "by default both keep theirs, vLLM's default")
    ap.add_argument("--levels", default=None,
                    help="concurrency levels, comma-separated (default 1,8,32; --quick 1,8)")
    ap.add_argument("--trace-requests", type=int, default=48, help="0 skips the replay")
    ap.add_argument("--trace-speedup", type=float, default=1.0)
    ap.add_argument("--trace-prompt-div", type=float, default=4.0)
    ap.add_argument("--trace-output-div", type=float, default=2.0)
    a = ap.parse_args()
    levels = [1, 8] if a.quick else [1, 8, 32]
    if a.levels:
        levels = [int(c) for c in a.levels.split(",")]
    rounds = 1 if a.quick else a.rounds
    trace_n = min(12, a.trace_requests) if a.quick else a.trace_requests
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
          flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    engines: dict[str, subprocess.Popen[bytes]] = {}
    targets: dict[str, tuple[str, str, dict[str, str]]] = {}
    def builtin(name: str, env: dict[str, str] | None = None) -> str:
        """Start a built-in chat replica named ``name`` (``env``: its settings), wait for
        it to be ready, add it as the target ``<name> direct``; its URL."""
        port = free_port()
        settings = {} if a.prefix_cache else {"NEOCLOUD_PREFIX_CACHE_TOKENS": "0"}
        procs.append(start(["-m", "neocloud.serving", "chat", "--port", str(port),
                            "--name", name], {**settings, **(env or {})}))
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ready", 300, procs[-1])
        engines[name] = procs[-1]
        targets[f"{name} direct"] = (url, name, {})
        return url

    try:
        burl = builtin("builtin")
        routes = [f"builtin={burl}"]
        if a.f32:
            builtin("builtin-f32", {"NEOCLOUD_DTYPE": "float32"})
        if a.tf:
            builtin("builtin-tf", {"NEOCLOUD_FAST_FORWARD": "0"})
        vurl = None
        if not a.no_vllm:
            from neocloud.errors import InvalidRequest
            from neocloud.serving.engines.vllm import engine_python

            try:
                engine_python()
                vport = free_port()
                procs.append(start(["-m", "neocloud.serving.engines.vllm", "--port", str(vport),
                                    "--name", "vllm", "--max-model-len", "2048",
                                    *([] if a.prefix_cache else ["--no-enable-prefix-caching"])]))
                vurl = f"http://127.0.0.1:{vport}"
                wait_http(vurl + "/health", 900, procs[-1])
                engines["vllm"] = procs[-1]
                routes.append(f"vllm={vurl}")
                targets["vllm direct"] = (vurl, "vllm", {})
            except InvalidRequest as exc:
                print(f"vLLM skipped: {exc}", flush=True)
        if a.gateway:
            gport = free_port()
            gargs = ["-m", "neocloud.gateway", "--host", "127.0.0.1", "--port", str(gport),
                     "--token", TOKEN]
            for r in routes:
                gargs += ["--route", r]
            procs.append(start(gargs))
            gurl = f"http://127.0.0.1:{gport}"
            wait_http(gurl + "/health", 60, procs[-1])
            auth = {"Authorization": f"Bearer {TOKEN}"}
            targets["builtin gateway"] = (gurl, "builtin", auth)
            if vurl:
                targets["vllm gateway"] = (gurl, "vllm", auth)
        for url, model, headers in targets.values():  # warm-up
            hold(engines, model)
            asyncio.run(closed_loop(url, model, 1, 1, headers))
        results: dict[str, dict[str, Any]] = {}
        print(f"{'target':<22}{'c':>4}{'req':>5}{'tok/s':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
              f"{'TPOT p50':>10}", flush=True)
        for c in levels:
            for name, (url, model, headers) in targets.items():
                hold(engines, model)
                r = asyncio.run(closed_loop(url, model, c, rounds, headers))
                results[f"{name} c={c}"] = r
                print(f"{name:<22}{c:>4}{r['requests']:>5}{r['tok_s']:>9.1f}"
                      f"{r['ttft_p50']:>10.3f}{r['ttft_p99']:>10.3f}{r['tpot_p50']:>10.3f}",
                      flush=True)
        trace = load_trace(trace_n, a.trace_speedup, a.trace_prompt_div, a.trace_output_div
                           ) if trace_n > 0 else []
        for name in ("builtin direct", "builtin-f32 direct", "vllm direct"):
            if name in targets and trace:
                url, model, headers = targets[name]
                hold(engines, model)
                r = asyncio.run(replay(url, model, trace, headers))
                results[f"{name} azure-trace"] = r
                print(f"{name + ' trace':<22}{'-':>4}{r['requests']:>5}{r['tok_s']:>9.1f}"
                      f"{r['ttft_p50']:>10.3f}{r['ttft_p99']:>10.3f}{r['tpot_p50']:>10.3f}",
                      flush=True)
        ratios: dict[str, float] = {}
        for c in levels:
            v = results.get(f"vllm direct c={c}")
            for eng in ("builtin", "builtin-f32", "builtin-tf"):
                b = results.get(f"{eng} direct c={c}")
                if b and v:
                    ratios[f"{eng}/vllm tok_s c={c}"] = b["tok_s"] / v["tok_s"]
                    ratios[f"{eng}/vllm ttft_p50 c={c}"] = b["ttft_p50"] / v["ttft_p50"]
            b, t = results.get(f"builtin direct c={c}"), results.get(f"builtin-tf direct c={c}")
            if b and t:
                ratios[f"builtin/builtin-tf tok_s c={c}"] = b["tok_s"] / t["tok_s"]
            for eng in ("builtin", "vllm"):
                d, g = results.get(f"{eng} direct c={c}"), results.get(f"{eng} gateway c={c}")
                if d and g:
                    ratios[f"{eng} gateway/direct tok_s c={c}"] = g["tok_s"] / d["tok_s"]
                    ratios[f"{eng} gateway-direct ttft_p50_ms c={c}"] = (
                        g["ttft_p50"] - d["ttft_p50"]) * 1000
        for k, v in ratios.items():
            print(f"{k}: {v:.3f}")
        from neocloud.serving.textgen.loading import pick_dtype

        dtypes = {"builtin": str(pick_dtype("cpu")).removeprefix("torch."),
                  "builtin-f32": "float32",
                  "builtin-tf": str(pick_dtype("cpu")).removeprefix("torch.")}
        trace_note = {"requests": trace_n, "speedup": a.trace_speedup,
                      "prompt_div": a.trace_prompt_div, "output_div": a.trace_output_div}
        print(json.dumps({"results": results, "ratios": ratios, "trace": trace_note,
                          "dtypes": dtypes, "prefix_cache": a.prefix_cache},
                         sort_keys=True))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                for pgid in groups(p):
                    try:
                        os.killpg(pgid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
            stop(p)


if __name__ == "__main__":
    main()
