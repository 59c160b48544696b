"""Cold start: the first 200 through the gateway for a deployment at zero, against the same
service's process start + model load measured alone (goal: <= 1.5x).

Three timings per trial, each of a fresh process (medians over ``--trials``):

- **bare**: ``python -m neocloud.serving SERVICE`` started by hand; from ``Popen`` to the
  first 200 of one request (process start, imports, model load, warm-up, ``/ready``, the
  request). The baseline.
- **wake**: a deployment autoscaled down to zero (``min_replicas`` 0) in a local cloud
  (``neocloud up`` as a process, default settings); from sending one request through the
  gateway (held while the control plane starts a replica) to its 200.
- **deploy**: from ``POST /api/v1/deployments`` (one replica) to the first 200 through the
  gateway (the client retries every 50 ms while no replica is ready).

Services: ``stub`` (default) loads its "model", a ``--model-mb`` MB float32 array written
once to a temporary folder, lazily on first call, and declares a warm-up call, so the
runtime loads it before the replica reports ready; ``embeddings`` is the built-in
sentence-transformers service (its default model).

Prints ``uptime`` (the load average) first, a table, then one JSON line with the figures.
Usage: ``.venv/bin/python benchmarks/autoscaling/cold_start.py [--trials 3]
[--service stub|embeddings] [--model-mb 256]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

GOAL_RATIO = 1.5
STUB = textwrap.dedent('''
    import os

    import numpy as np

    from neocloud.serving import Service, endpoint


    class LazyStub(Service):
        """Loads its weights on first call; the warm-up call makes that happen before ready."""

        def __init__(self) -> None:
            self.weights = None

        def _load(self):
            if self.weights is None:
                self.weights = np.load(os.environ["COLD_MODEL_FILE"])
            return self.weights

        @endpoint(warmup={"x": 1.0})
        def predict(self, x: float) -> dict:
            w = self._load()
            return {"y": float(w[:4096].sum()) * x, "size": int(w.size)}
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workload:
    """The service under test: its reference, environment and one request of it."""

    def __init__(self, kind: str, folder: Path, model_mb: int) -> None:
        self.kind = kind
        self.env: dict[str, str] = {}
        if kind == "stub":
            import numpy as np

            path = folder / "stub_service.py"
            path.write_text(STUB)
            weights = folder / "weights.npy"
            rng = np.random.default_rng(0)
            np.save(weights, rng.random(model_mb * 1024 * 1024 // 4, dtype=np.float32))
            self.ref = f"{path}:LazyStub"
            self.env = {"COLD_MODEL_FILE": str(weights)}
        elif kind == "embeddings":
            self.ref = "embeddings"
        else:
            raise SystemExit(f"unknown service {kind!r}: stub or embeddings")

    def call(self, http: httpx.Client, base: str, name: str, *, gateway: bool
             ) -> httpx.Response:
        """POST one request."""
        if self.kind == "stub":
            url = f"{base}/endpoints/{name}/predict" if gateway else f"{base}/predict"
            return http.post(url, json={"x": 2.0})
        return http.post(f"{base}/v1/embeddings", json={"model": name, "input": "a cold start"})


def bare(work: Workload, folder: Path) -> float:
    """Seconds from starting the serving process to its first 200."""
    port = free_port()
    env = {**os.environ, **work.env}
    log = open(folder / "bare.log", "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "neocloud.serving", work.ref, "--host", "127.0.0.1",
         "--port", str(port), "--name", "bare"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=300) as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the replica exited: {(folder / 'bare.log').read_text()}")
                try:
                    if http.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
            r = work.call(http, base, "bare", gateway=False)
            took = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"the bare replica answered {r.status_code}: {r.text}")
            return took
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Cloud:
    """``python -m neocloud up`` in its own session with its own data folder."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "NEOCLOUD_HOME": str(home)}
        for k in ("NEOCLOUD_URL", "NEOCLOUD_TOKEN", "NEOCLOUD_DATABASE_URL"):
            env.pop(k, None)
        home.mkdir(parents=True, exist_ok=True)
        log = open(home / "up.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "neocloud", "up", "--port",
                                      str(self.port)], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((home / "up.log").read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("neocloud up did not start")
        token = json.loads((home / "config.json").read_text())["token"]
        self.http = httpx.Client(base_url=self.url, timeout=300,
                                 headers={"Authorization": f"Bearer {token}"})

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, f"/api/v1{path}", **kw)

    def wait(self, name: str, status: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.api("GET", f"/deployments/{name}").json().get("status") == status:
                return
            time.sleep(0.1)
        raise RuntimeError(f"deployment {name} did not reach {status}")

    def delete(self, name: str) -> None:
        self.api("DELETE", f"/deployments/{name}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.api("GET", f"/deployments/{name}").status_code == 404:
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wake(cloud: Cloud, work: Workload, name: str) -> float:
    """Seconds from a request to a deployment at zero to its 200."""
    spec = {"name": name, "service": work.ref, "replicas": 0, "env": work.env,
            "cold_start_timeout_s": 300,
            "autoscaling": {"min_replicas": 0, "max_replicas": 1}}
    r = cloud.api("POST", "/deployments", json=spec)
    if r.status_code != 201:
        raise RuntimeError(r.text)
    cloud.wait(name, "scaled_to_zero")
    t0 = time.perf_counter()
    r = work.call(cloud.http, cloud.url, name, gateway=True)
    took = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"the woken deployment answered {r.status_code}: {r.text}")
    cloud.delete(name)
    return took


def deploy(cloud: Cloud, work: Workload, name: str) -> float:
    """Seconds from creating a one-replica deployment to its first 200 through the gateway."""
    spec = {"name": name, "service": work.ref, "replicas": 1, "env": work.env}
    t0 = time.perf_counter()
    r = cloud.api("POST", "/deployments", json=spec)
    if r.status_code != 201:
        raise RuntimeError(r.text)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if work.call(cloud.http, cloud.url, name, gateway=True).status_code == 200:
            took = time.perf_counter() - t0
            cloud.delete(name)
            return took
        time.sleep(0.05)
    raise RuntimeError(f"deployment {name} never answered 200")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--service", default="stub", choices=("stub", "embeddings"))
    ap.add_argument("--model-mb", type=int, default=256, help="size of the stub's weights")
    args = ap.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="neocloud-cold-") as tmp:
        folder = Path(tmp)
        work = Workload(args.service, folder, args.model_mb)
        cloud = Cloud(folder / "home")
        times: dict[str, list[float]] = {"bare": [], "wake": [], "deploy": []}
        try:
            bare(work, folder)  # one untimed start: the file cache holds what every start reads
            for i in range(args.trials):
                times["bare"].append(bare(work, folder))
                times["wake"].append(wake(cloud, work, f"cold-wake-{i}"))
                times["deploy"].append(deploy(cloud, work, f"cold-deploy-{i}"))
                print(f"trial {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s"
                                                     for k, v in times.items()), flush=True)
        finally:
            cloud.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nservice {args.service}" + (f" ({args.model_mb} MB of weights, loaded lazily and"
                                        " warmed before ready)" if args.service == "stub"
                                        else ""))
    print("| path | median s | min s | max s | vs bare |")
    print("| --- | --- | --- | --- | --- |")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {min(v):.2f} | {max(v):.2f} | {med[k] / med['bare']:.2f}x |")
    out = {"service": args.service, "trials": args.trials, "load_average": os.getloadavg(),
           "median_s": med, "wake_vs_bare": med["wake"] / med["bare"],
           "deploy_vs_bare": med["deploy"] / med["bare"], "goal_ratio": GOAL_RATIO,
           "wake_meets_goal": med["wake"] / med["bare"] <= GOAL_RATIO}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
