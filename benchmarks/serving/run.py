#!/usr/bin/env python3
"""Serving benchmark: neocloud against plain FastAPI, LitServe, Ray Serve and BentoML,
side by side in one run, on loopback, with Debian's ``wrk`` as the load generator (a
separate process, pinned to the last CPU when ``taskset`` exists).

Workloads
- echo: POST a one-sentence JSON body, get it back (framework overhead). neocloud direct to
  a replica, and through the gateway (``python -m neocloud.gateway``).
- embed: one sentence per request, all-MiniLM-L6-v2, each framework's own dynamic batching
  (max batch 32, 10 ms wait; FastAPI has none), plus neocloud's built-in
  ``/v1/embeddings``; compared with the in-process limit (model called on batches).
- generate: SmolLM2-135M-Instruct streamed through the gateway and direct, against the
  same engine called in-process (tokens/s and time to first token).

Every cell: warm-up, one blocking request (drains what the warm-up left queued), then the
measured wrk run. The last line printed is one JSON object with each goal's ratio.

Run (after ``bash setup_peers.sh``): ``python benchmarks/serving/run.py``
Quick look: ``python benchmarks/serving/run.py --duration 4 --peers fastapi``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PEERS = os.path.join(HERE, "peers")
LUA = os.path.join(HERE, "wrk_post.lua")
SENTENCE = ("The quick brown fox jumps over the lazy dog while the curious cat watches "
            "from the old wooden fence nearby today.")
ECHO_BODY = {"sentences": [SENTENCE]}
PROMPT = "Write a short story about a robot who learns to paint."
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes
class Proc:
    """A server process in its own session; ``stop()`` ends the whole session."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: str, logdir: str):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # leftovers of the session (e.g. Ray workers)
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


def env_for(workload: str) -> dict[str, str]:
    env = dict(os.environ)
    threads = env.get("BENCH_TORCH_THREADS", "2")
    env.update({
        "BENCH_WORKLOAD": workload, "BENCH_TORCH_THREADS": threads, "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads, "NEOCLOUD_TORCH_THREADS": threads, "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0", "BENTOML_DO_NOT_TRACK": "True",
        "BENCH_MAX_BATCH": env.get("BENCH_MAX_BATCH", "32"),
        "BENCH_BATCH_WAIT_MS": env.get("BENCH_BATCH_WAIT_MS", "10"),
        "NEOCLOUD_MAX_BATCH_SIZE": env.get("BENCH_MAX_BATCH", "32"),
        "NEOCLOUD_MAX_WAIT_MS": env.get("BENCH_BATCH_WAIT_MS", "10"),
        "PYTHONPATH": os.pathsep.join([PEERS, HERE, os.path.join(REPO, "src"),
                                       env.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def wait_valid(proc: Proc, url: str, body: Any, check: Any, timeout_s: float,
               headers: dict[str, str] | None = None) -> str | None:
    """None when ``url`` answers a valid response within ``timeout_s``, else the reason."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            return f"exited with {proc.p.returncode} (log: {proc.log_path})"
        try:
            r = httpx.post(url, json=body, headers=headers, timeout=30)
            if r.status_code == 200 and check(r.json()):
                return None
            last = f"{r.status_code} {r.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    return f"not ready after {timeout_s:.0f}s: {last}"


def is_echo(data: Any) -> bool:
    return data == ECHO_BODY


def has_one_vector(data: Any) -> bool:
    found: list[list[float]] = []

    def walk(x: Any) -> None:
        if isinstance(x, list) and x and all(isinstance(v, float) for v in x):
            found.append(x)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(data)
    return len(found) == 1 and len(found[0]) == 384


# ----------------------------------------------------------------------------- wrk
def wrk(url: str, conc: int, seconds: int, body_file: str, auth: str | None) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--timeout", "30s", "-s", LUA, url]
    ncpu = os.cpu_count() or 1
    if shutil.which("taskset") and ncpu > 1:
        cmd = ["taskset", "-c", str(ncpu - 1), *cmd]
    env = dict(os.environ, NEOCLOUD_BENCH_BODY=body_file, NEOCLOUD_BENCH_AUTH=auth or "")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 90)
    line = [x for x in p.stdout.splitlines() if x.startswith("WRK_RESULT ")]
    if not line:
        return {"error": f"wrk rc={p.returncode}: {p.stderr[-300:]}"}
    r = json.loads(line[0][len("WRK_RESULT "):])
    errors = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors",
                                "status_errors", "timeouts"))
    dur = r["duration_us"] / 1e6
    return {"rps": (r["requests"] - r["status_errors"]) / dur, "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "errors": errors, "requests": r["requests"]}


@dataclass
class Target:
    """One row group: a server (or server + gateway) and the URL to load."""

    framework: str
    workload: str
    cmds: list[tuple[str, list[str], str]]  # (name, argv, cwd); the last one is the entry
    path: str
    body: Any
    check: Any
    auth: str | None = None
    ports: list[int] = field(default_factory=list)


def measure(t: Target, args: argparse.Namespace, logdir: str, tmp: str) -> list[dict[str, Any]]:
    safe = "".join(ch if ch.isalnum() else "_" for ch in t.framework)
    body_file = os.path.join(tmp, f"{safe}-{t.workload}.json")
    with open(body_file, "w") as f:
        json.dump(t.body, f)
    procs: list[Proc] = []
    rows: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {t.auth}"} if t.auth else None
    try:
        for name, argv, cwd in t.cmds:
            log(f"start {name}: {' '.join(argv)}")
            procs.append(Proc(name, argv, env_for(t.workload), cwd, logdir))
        url = f"http://127.0.0.1:{t.ports[-1]}{t.path}"
        err = wait_valid(procs[-1], url, t.body, t.check, args.startup_timeout, headers)
        if err is None and len(procs) > 1:
            err = None if all(p.alive() for p in procs) else "a process exited"
        if err:
            log(f"  FAILED: {err}")
            return [{"framework": t.framework, "workload": t.workload, "error": err}]
        for c in args.concurrency:
            if args.warmup:
                wrk(url, c, args.warmup, body_file, t.auth)
                httpx.post(url, json=t.body, headers=headers, timeout=120)
            r = wrk(url, c, args.duration, body_file, t.auth)
            r.update(framework=t.framework, workload=t.workload, concurrency=c)
            rows.append(r)
            log(f"  c={c}: {r.get('rps', 0):.1f} req/s p50 {r.get('p50_ms', 0):.2f} ms "
                f"p99 {r.get('p99_ms', 0):.2f} ms errors {r.get('errors')}")
    finally:
        for p in reversed(procs):
            p.stop()
    return rows


# ----------------------------------------------------------------------------- targets
def py() -> str:
    return sys.executable


def neocloud_cmd(service: str, port: int, name: str | None = None) -> list[str]:
    cmd = [py(), "-m", "neocloud.serving", service, "--port", str(port), "--log-level",
           "warning"]
    return cmd + (["--name", name] if name else [])


def gateway_cmd(port: int, name: str, upstream: int) -> list[str]:
    return [py(), "-m", "neocloud.gateway", "--port", str(port), "--route",
            f"{name}=http://127.0.0.1:{upstream}", "--token", TOKEN]


def gateway_available() -> bool:
    return os.path.isfile(os.path.join(REPO, "src", "neocloud", "gateway", "__main__.py"))


def peer_targets(workload: str, peers: list[str], venv_root: str) -> list[Target]:
    out: list[Target] = []
    body, check = (ECHO_BODY, is_echo) if workload == "echo" else (ECHO_BODY, has_one_vector)
    for peer in peers:
        venv = os.path.join(venv_root, f"venv-{peer}", "bin")
        if not os.path.isdir(venv):
            log(f"skip {peer}: no venv at {venv} (run setup_peers.sh)")
            continue
        port = free_port()
        if peer == "fastapi":
            argv = [f"{venv}/python", "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1",
                    "--port", str(port), "--log-level", "warning", "--no-access-log"]
            path = "/echo" if workload == "echo" else "/embed"
        elif peer == "litserve":
            argv = [f"{venv}/python", "litserve_app.py", "--port", str(port), "--workload",
                    workload]
            path = "/predict"
        elif peer == "ray":
            argv = [f"{venv}/python", "ray_app.py", "--port", str(port), "--workload", workload]
            path = "/"
        elif peer == "bentoml":
            svc = "EchoSvc" if workload == "echo" else "EmbedSvc"
            argv = [f"{venv}/bentoml", "serve", f"bentoml_app:{svc}", "--host", "127.0.0.1",
                    "--port", str(port)]
            path = "/echo" if workload == "echo" else "/embed"
        else:
            raise SystemExit(f"unknown peer {peer}")
        out.append(Target(peer, workload, [(peer, argv, PEERS)], path, body, check,
                          ports=[port]))
    return out


def neocloud_targets(workload: str) -> list[Target]:
    out: list[Target] = []
    if workload == "echo":
        p = free_port()
        out.append(Target("neocloud", "echo", [("neocloud-echo",
                          neocloud_cmd("apps:Echo", p), HERE)], "/echo", ECHO_BODY, is_echo,
                          ports=[p]))
        if gateway_available():
            p, g = free_port(), free_port()
            out.append(Target(
                "neocloud+gateway", "echo",
                [("neocloud-echo-upstream", neocloud_cmd("apps:Echo", p), HERE),
                 ("gateway-echo", gateway_cmd(g, "echo", p), HERE)],
                "/endpoints/echo/echo", ECHO_BODY, is_echo, auth=TOKEN, ports=[p, g]))
    else:
        p = free_port()
        out.append(Target("neocloud", "embed", [("neocloud-embed",
                          neocloud_cmd("apps:Embed", p), HERE)], "/embed", ECHO_BODY,
                          has_one_vector, ports=[p]))
        p = free_port()
        out.append(Target("neocloud /v1/embeddings", "embed",
                          [("neocloud-v1", neocloud_cmd("embeddings", p, "minilm"), HERE)],
                          "/v1/embeddings", {"model": "minilm", "input": [SENTENCE]},
                          has_one_vector, ports=[p]))
    return out


# ----------------------------------------------------------------------------- in-process
def inproc(args_: list[str], logdir: str, tag: str) -> dict[str, Any]:
    cmd = [py(), os.path.join(HERE, "inproc.py"), *args_]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env_for("embed"), timeout=900)
    with open(os.path.join(logdir, f"inproc-{tag}.log"), "w") as f:
        f.write(p.stderr)
    line = [x for x in p.stdout.splitlines() if x.startswith("INPROC_RESULT ")]
    if not line:
        return {"error": p.stderr[-500:]}
    return dict(json.loads(line[0][len("INPROC_RESULT "):]))


# ----------------------------------------------------------------------------- generation
def stream_once(url: str, max_tokens: int, auth: str | None) -> tuple[float, float, int]:
    """(tokens/s over the whole request, time to first content in s, completion tokens)."""
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    body = {"model": "chat", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("delta", {}).get("content")
                                     for c in chunk.get("choices", [])):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - t0), first or 0.0, tokens


class InProcess:
    """The chat replica's engine loaded in this process (the in-process reference)."""

    def __init__(self, max_tokens: int) -> None:
        import torch

        from neocloud.serving.textgen.engine import SamplingParams, TextGenerator
        from neocloud.serving.textgen.loading import load_causal_lm

        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "2")))
        model, tokenizer, device = load_causal_lm(None)
        self.gen = TextGenerator(model, tokenizer, device)
        self.ids = self.gen.chat_prompt([{"role": "user", "content": PROMPT}])
        self.params = SamplingParams(max_tokens=max_tokens, temperature=0.0)

    def once(self) -> tuple[float, float, int]:
        import asyncio

        async def go() -> tuple[float, float, int]:
            t0 = time.perf_counter()
            first = None
            tokens = 0
            async for deltas in self.gen.generate(self.ids, self.params):
                if first is None and any(d.text for d in deltas):
                    first = time.perf_counter() - t0
                tokens += sum(d.tokens for d in deltas)
            return tokens / (time.perf_counter() - t0), first or 0.0, tokens

        return asyncio.run(go())


def generation(args: argparse.Namespace, logdir: str) -> dict[str, Any]:
    """Streamed generation direct and through the gateway vs the engine in-process; the
    three are interleaved run by run so that they see the same machine load."""
    res: dict[str, Any] = {}
    p, g = free_port(), free_port()
    procs = [Proc("chat", neocloud_cmd("chat", p), env_for("generate"), HERE, logdir)]
    try:
        if gateway_available():
            procs.append(Proc("gateway-chat", gateway_cmd(g, "chat", p), env_for("generate"),
                              HERE, logdir))
        log("generation: loading the model in-process too ...")
        local = InProcess(args.gen_tokens)
        deadline = time.monotonic() + args.startup_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{p}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not procs[0].alive():
                return {"error": f"chat replica exited (log {procs[0].log_path})"}
            time.sleep(0.5)
        routes: dict[str, tuple[str, str | None]] = {
            "direct": (f"http://127.0.0.1:{p}/v1/chat/completions", None)}
        if gateway_available():
            routes["gateway"] = (f"http://127.0.0.1:{g}/v1/chat/completions", TOKEN)
        local.once()  # warm-up
        for url, auth in routes.values():  # warm-up; waits for the gateway to start
            for attempt in range(60):
                try:
                    stream_once(url, args.gen_tokens, auth)
                    break
                except httpx.HTTPError:
                    if attempt == 59:
                        raise
                    time.sleep(0.5)
        runs: dict[str, list[tuple[float, float, int]]] = {"inproc": []}
        runs.update({k: [] for k in routes})
        for _ in range(args.gen_runs):
            runs["inproc"].append(local.once())
            for name, (url, auth) in routes.items():
                runs[name].append(stream_once(url, args.gen_tokens, auth))
        for name, rs in runs.items():
            res[name] = {"tokens_per_s": statistics.median(r[0] for r in rs),
                         "ttft_ms": 1000 * statistics.median(r[1] for r in rs),
                         "tokens": statistics.median(r[2] for r in rs)}
            log(f"  {name}: {res[name]}")
    finally:
        for proc in reversed(procs):
            proc.stop()
    return res


# ----------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]], limit: float | None) -> str:
    base = {r["concurrency"]: r["rps"] for r in rows
            if r["workload"] == "echo" and r["framework"] == "fastapi" and "rps" in r}
    out = ["| workload | framework | conc | req/s | p50 ms | p99 ms | errors | ratio |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "rps" not in r:
            out.append(f"| {r['workload']} | {r['framework']} | - | FAILED: "
                       f"{str(r.get('error'))[:80]} | | | | |")
            continue
        if r["workload"] == "echo":
            b = base.get(r["concurrency"])
            ratio = f"{r['rps'] / b:.2f}x FastAPI" if b else "-"
        else:
            ratio = f"{100 * r['rps'] / limit:.0f}% of limit" if limit else "-"
        out.append(f"| {r['workload']} | {r['framework']} | {r['concurrency']} | "
                   f"{r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                   f"{ratio} |")
    return "\n".join(out)


def cell(rows: list[dict[str, Any]], framework: str, workload: str, c: int) -> dict[str, Any]:
    for r in rows:
        if (r["framework"], r["workload"], r.get("concurrency")) == (framework, workload, c):
            return r
    return {}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def goals(rows: list[dict[str, Any]], limit: float | None, gen: dict[str, Any]
          ) -> dict[str, Any]:
    g: dict[str, Any] = {}
    for c in (16, 64):
        ours, base = cell(rows, "neocloud", "echo", c), cell(rows, "fastapi", "echo", c)
        g[f"echo_direct_rps_vs_fastapi_c{c}"] = ratio(ours.get("rps"), base.get("rps"))
        g[f"echo_direct_p99_vs_fastapi_c{c}"] = ratio(ours.get("p99_ms"), base.get("p99_ms"))
    gw64, d64 = cell(rows, "neocloud+gateway", "echo", 64), cell(rows, "neocloud", "echo", 64)
    g["echo_gateway_rps_vs_direct_c64"] = ratio(gw64.get("rps"), d64.get("rps"))
    gw1, d1 = cell(rows, "neocloud+gateway", "echo", 1), cell(rows, "neocloud", "echo", 1)
    g["echo_gateway_added_p50_ms_c1"] = (round(gw1["p50_ms"] - d1["p50_ms"], 3)
                                         if gw1.get("p50_ms") is not None and d1 else None)
    best_ours = max((cell(rows, f, "embed", 64).get("rps") or 0.0)
                    for f in ("neocloud", "neocloud /v1/embeddings"))
    best_peer = max([(cell(rows, f, "embed", 64).get("rps") or 0.0)
                     for f in ("fastapi", "litserve", "ray", "bentoml")] or [0.0])
    g["embed_rps_vs_inproc_limit_c64"] = ratio(best_ours or None, limit)
    g["embed_rps_vs_best_peer_c64"] = ratio(best_ours or None, best_peer or None)
    ip, gw = gen.get("inproc", {}), gen.get("gateway", {})
    g["generate_gateway_tokens_per_s_vs_inproc"] = ratio(gw.get("tokens_per_s"),
                                                         ip.get("tokens_per_s"))
    d = gen.get("direct", {})
    g["generate_gateway_added_ttft_ms"] = (round(gw["ttft_ms"] - d["ttft_ms"], 2)
                                           if gw.get("ttft_ms") is not None and d else None)
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="fastapi,litserve,ray,bentoml")
    ap.add_argument("--workloads", default="echo,embed,generate")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured cell")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per cell")
    ap.add_argument("--startup-timeout", type=float, default=300)
    ap.add_argument("--inproc-seconds", type=float, default=5)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--gen-runs", type=int, default=3)
    ap.add_argument("--venv-root", default=os.path.expanduser("~/.cache/neocloud-bench"))
    ap.add_argument("--out", default=None, help="results folder (default: a temp folder)")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    peers = [p for p in args.peers.split(",") if p]
    workloads = [w for w in args.workloads.split(",") if w]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk (or run setup_peers.sh)")
    out = args.out or tempfile.mkdtemp(prefix="neocloud-bench-")
    logdir = os.path.join(out, "logs")
    os.makedirs(logdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bodies-", dir=out)
    rows: list[dict[str, Any]] = []
    limit_by_batch: dict[str, Any] = {}
    gen: dict[str, Any] = {}
    for wl in workloads:
        if wl == "generate":
            gen = generation(args, logdir)
            continue
        if wl == "embed":
            log("in-process embedding limit ...")
            limit_by_batch = inproc(["--sentence", SENTENCE, "--seconds",
                                     str(args.inproc_seconds)], logdir, "embed")
            log(f"  sentences/s by batch size: {limit_by_batch}")
        for t in neocloud_targets(wl) + peer_targets(wl, peers, args.venv_root):
            rows.extend(measure(t, args, logdir, tmp))
    limit = limit_by_batch.get(os.environ.get("BENCH_MAX_BATCH", "32"))
    print(table(rows, limit))
    if limit_by_batch:
        print(f"\nin-process embedding limit (sentences/s by batch size): "
              f"{ {k: round(v, 1) for k, v in limit_by_batch.items() if k != 'error'} }")
    if gen:
        print(f"generation (tokens/s, time to first token): {json.dumps(gen)}")
    result = {"rows": rows, "inproc_embed": limit_by_batch, "generate": gen}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"results and logs: {out}")
    print(json.dumps(goals(rows, limit, gen)))


if __name__ == "__main__":
    main()
