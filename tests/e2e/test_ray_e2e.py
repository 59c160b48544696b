"""Many machines, end to end, on one: a Ray head on ``127.0.0.2``; ``neocloud up --backend
ray --ray-address`` as the control plane; two servers (``127.0.0.3``, ``127.0.0.4``, two
simulated GPUs each) that ``neocloud node join`` it; a 2-worker job that runs
``torch.distributed`` (gloo, ``all_reduce``) across the two; then one server's raylet is
killed (SIGKILL to that node's raylet only): its node becomes ``not_ready``, the job worker
that ran there fails its attempt with "node lost" and the attempt is retried on the other
server, and the records (node events, job events) show the loss.

Prints the figures (cluster start, job time, raylet kill to ``not_ready``, kill to the
retried attempt running, the cluster's memory) for the closing note.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.backends.conftest import HAVE_RAY, NO_RAY, wait_for
from tests.e2e.cloudproc import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)]

HAVE_TORCH = __import__("importlib").util.find_spec("torch") is not None

ALL_REDUCE = textwrap.dedent("""
    import os, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    print(f"rank {rank}/{world} on {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
          f" gpus={os.environ['CUDA_VISIBLE_DEVICES']} count={os.environ['NEOCLOUD_GPU_COUNT']}"
          f" sum={t.item():g}", flush=True)
    dist.destroy_process_group()
    assert t.item() == world * (world + 1) / 2
""")

SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n"


@dataclass
class Fleet:
    url: str
    token: str
    db: Path
    joins: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    memory_pids: list[int] = field(default_factory=list)

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}/api/v1{path}", timeout=30,
                             headers={"Authorization": f"Bearer {self.token}"}, **kw)

    def get(self, path: str) -> dict[str, Any]:
        r = self.api("GET", path)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def node_events(self, name: str) -> list[tuple[str, str]]:
        with sqlite3.connect(self.db) as con:
            return list(con.execute("SELECT reason, message FROM events WHERE kind = 'node' "
                                    "AND name = ? ORDER BY id", (name,)))


def _env() -> dict[str, str]:
    from tests.backends.raycluster import TEST_RAY_ENV

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NEOCLOUD_") and k != "RAY_ADDRESS"}
    env.update(TEST_RAY_ENV)
    return env


def _raylet_of(proc: subprocess.Popen[str]) -> psutil.Process:
    """The raylet of the Ray node that ``neocloud node join --block`` started."""
    kids = psutil.Process(proc.pid).children(recursive=True)
    found = [p for p in kids if p.name() == "raylet"]
    assert len(found) == 1, [p.name() for p in kids]
    return found[0]


def _memory_mib(pids: list[int]) -> float:
    """Resident memory of these processes and all their descendants, MiB."""
    seen: dict[int, int] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                seen[p.pid] = p.memory_info().rss
        except psutil.Error:
            continue
    return sum(seen.values()) / 2**20


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    from tests.backends.raycluster import LocalRayCluster, own_args

    root = Path(tempfile.mkdtemp(prefix="nre", dir="/tmp"))  # short: socket path limits
    cluster = LocalRayCluster(root, workers=0)
    t0 = time.monotonic()
    cluster.start()
    port = free_port()
    home = root / "cp"
    env = {**_env(), "NEOCLOUD_HOME": str(home), "NEOCLOUD_RECONCILE_INTERVAL_S": "0.5",
           "NEOCLOUD_DATABASE_URL": f"sqlite:///{root / 'cp.db'}",
           "NEOCLOUD_RAY_NODE_IP": "127.0.0.2", "NEOCLOUD_JOB_STOP_GRACE_S": "3"}
    home.mkdir(parents=True)
    log = open(root / "up.log", "wb")
    up = subprocess.Popen([sys.executable, "-m", "neocloud", "up", "--port", str(port),
                           "--backend", "ray", "--ray-address", cluster.address],
                          env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    joins: dict[str, subprocess.Popen[str]] = {}
    try:
        def healthy() -> bool:
            if up.poll() is not None:
                raise AssertionError((root / "up.log").read_text()[-3000:])
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout_s=90, what="neocloud up")
        token = json.loads((home / "config.json").read_text())["token"]
        fleet = Fleet(url=url, token=token, db=root / "cp.db", joins=joins)
        for i, name in ((1, "gpu-a"), (2, "gpu-b")):  # one after another (plasma socket)
            ip, base, temp = cluster.slot(i)
            jenv = {**_env(), "NEOCLOUD_HOME": str(temp / "cli")}
            joins[name] = subprocess.Popen(
                [str(Path(sys.executable).with_name("neocloud")), "node", "join", url,
                 "--token", token, "--ray-address", cluster.address, "--node-ip", ip,
                 "--name", name, "--gpu", "T4:2:15360", "--block",
                 *[f"--ray-arg={a}" for a in own_args(base, temp)]],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=jenv,
                start_new_session=True)

            def registered(name: str = name) -> bool:
                p = joins[name]
                if p.poll() is not None:
                    raise AssertionError(p.stderr.read() if p.stderr else "join exited")
                return fleet.api("GET", f"/nodes/{name}").status_code == 200

            wait_for(registered, timeout_s=120, what=f"{name} to join")
        print(f"\ncluster (head + 2 joined servers) up in {time.monotonic() - t0:.1f} s")
        fleet.memory_pids = [n.proc.pid for n in cluster.nodes] + [
            p.pid for p in joins.values()]
        yield fleet
    finally:
        for p in joins.values():  # each stops its own Ray node
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in joins.values():
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate(timeout=10)
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(10)
        log.close()
        cluster.stop()


def _wait_job(fleet: Fleet, name: str, *statuses: str, timeout_s: float = 240) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = fleet.get(f"/jobs/{name}")
        return job if job["status"] in statuses else None

    result: dict[str, Any] = wait_for(done, timeout_s=timeout_s, what=f"job {name} {statuses}")
    return result


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_gang_across_servers_then_a_raylet_dies(fleet: Fleet) -> None:
    shape = {"name": "t4.x2", "cpu_milli": 500, "memory_mib": 512, "gpu_count": 2,
             "gpu_type": "T4", "price_per_hour_usd": 0.5}
    assert fleet.api("POST", "/shapes", json=shape).status_code == 201
    nodes = {n["name"]: n for n in fleet.get("/nodes")["data"]}
    assert set(nodes) == {"gpu-a", "gpu-b"} and all(n["status"] == "ready"
                                                    for n in nodes.values())

    # A gang of two workers, two GPUs each: one per server, as the scheduler decided.
    t0 = time.monotonic()
    r = fleet.api("POST", "/jobs", json={
        "name": "ddp", "shape": "t4.x2", "workers": 2, "env": {"GLOO_SOCKET_IFNAME": "lo"},
        "command": [sys.executable, "-c", ALL_REDUCE]})
    assert r.status_code == 201, r.text
    job = _wait_job(fleet, "ddp", "succeeded", "failed")
    took = time.monotonic() - t0
    logs = fleet.api("GET", "/jobs/ddp/logs").text
    assert job["status"] == "succeeded", (job, logs)
    workers = sorted(job["worker_list"], key=lambda w: w["rank"])
    assert {w["node"] for w in workers} == {"gpu-a", "gpu-b"}
    master = {"gpu-a": "127.0.0.3", "gpu-b": "127.0.0.4"}[workers[0]["node"]]
    for rank in (0, 1):
        assert f"rank {rank}/2 on {master}:" in logs and "sum=3" in logs, logs
    assert logs.count("gpus=0,1 count=2") == 2, logs
    print(f"2-worker torch.distributed job (gloo all_reduce) across 2 servers: {took:.1f} s "
          "from submit to succeeded")
    print(f"cluster memory (RSS of the Ray nodes' process trees): "
          f"{_memory_mib(fleet.memory_pids):.0f} MiB")

    # A job runs on one server; that server's raylet dies.
    r = fleet.api("POST", "/jobs", json={"name": "sleeper", "shape": "t4.x2",
                                         "max_retries": 1,
                                         "command": [sys.executable, "-c", SLEEPER]})
    assert r.status_code == 201, r.text
    wait_for(lambda: "sleeping" in fleet.api("GET", "/jobs/sleeper/logs").text,
             timeout_s=120, what="the sleeper to run")
    victim = fleet.get("/jobs/sleeper")["worker_list"][0]["node"]
    other = ({"gpu-a", "gpu-b"} - {victim}).pop()
    raylet = _raylet_of(fleet.joins[victim])
    os.kill(raylet.pid, signal.SIGKILL)
    killed = time.monotonic()

    wait_for(lambda: fleet.get(f"/nodes/{victim}")["status"] == "not_ready",
             timeout_s=120, what=f"{victim} to become not_ready")
    lost_after = time.monotonic() - killed
    assert fleet.get(f"/nodes/{other}")["status"] == "ready"
    reasons = [r for r, _ in fleet.node_events(victim)]
    assert "NodeLost" in reasons, reasons

    def retried() -> dict[str, Any] | None:
        job = fleet.get("/jobs/sleeper")
        return job if job["attempt"] == 2 and job["status"] == "running" else None

    job = wait_for(retried, timeout_s=120, what="the sleeper's retry to run")
    moved_after = time.monotonic() - killed
    assert [w["node"] for w in job["worker_list"]] == [other]  # attempt 2, elsewhere
    assert job["failures"] == 1
    events = [e["message"] for e in fleet.get("/events?kind=job&name=sleeper")["data"]]
    assert f"attempt 1 worker 0 node lost (node {victim} is not ready)" in events, events
    assert any(m.startswith("attempt 1 failed: node lost") for m in events), events
    assert nodes[victim]["gpus"] and fleet.get(f"/nodes/{victim}")["allocated_cpu_milli"] == 0
    print(f"raylet SIGKILL -> node not_ready: {lost_after:.1f} s; -> job retried and running "
          f"on {other}: {moved_after:.1f} s")
    assert fleet.api("POST", "/jobs/sleeper/stop").status_code == 200
    _wait_job(fleet, "sleeper", "stopped", timeout_s=120)


@dataclass
class SteadyClient:
    """One embeddings request after another through the gateway (the official OpenAI
    client, no retries), each outcome kept with its time, until :meth:`stop`."""

    base_url: str
    token: str
    model: str
    outcomes: list[tuple[float, bool, str]] = field(default_factory=list)
    _stop: Any = None
    _thread: Any = None

    def start(self) -> SteadyClient:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        from openai import OpenAI

        oai = OpenAI(base_url=self.base_url, api_key=self.token, max_retries=0, timeout=30)
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                resp = oai.embeddings.create(model=self.model, input=["a steady request"])
                ok, why = len(resp.data[0].embedding) == 384, ""
            except Exception as e:  # counted: a request lost
                ok, why = False, f"{type(e).__name__}: {e}"[:200]
            self.outcomes.append((t, ok, why))
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def lost_between(self, t0: float, t1: float) -> list[str]:
        return [why for t, ok, why in self.outcomes if t0 <= t <= t1 and not ok]


def _replicas(fleet: Fleet, name: str) -> list[dict[str, Any]]:
    reps: list[dict[str, Any]] = fleet.get(f"/deployments/{name}")["replica_list"]
    return reps


def _ready_on(fleet: Fleet, name: str) -> dict[str, str]:
    """Replica id -> node of the ready replicas of deployment ``name``."""
    return {r["id"]: r["node"] for r in _replicas(fleet, name) if r["status"] == "ready"}


def _set_node(fleet: Fleet, node: str, status: str) -> None:
    r = fleet.api("PATCH", f"/nodes/{node}", json={"status": status})
    assert r.status_code == 200, r.text


def test_replicas_on_two_servers_then_a_raylet_dies_and_its_replica_moves(
        fleet: Fleet) -> None:
    from openai import OpenAI

    shape = {"name": "t4.x1", "cpu_milli": 500, "memory_mib": 1024, "gpu_count": 1,
             "gpu_type": "T4", "price_per_hour_usd": 0.25}
    assert fleet.api("POST", "/shapes", json=shape).status_code == 201
    # One replica per server: the scheduler packs, so each server in turn is the only
    # one that takes new work while a replica is placed.
    _set_node(fleet, "gpu-b", "cordoned")
    r = fleet.api("POST", "/deployments", json={"name": "emb", "service": "embeddings",
                                                "shape": "t4.x1", "replicas": 1})
    assert r.status_code == 201, r.text
    wait_for(lambda: list(_ready_on(fleet, "emb").values()) == ["gpu-a"], timeout_s=300,
             what="the first replica ready on gpu-a")
    _set_node(fleet, "gpu-a", "cordoned")
    _set_node(fleet, "gpu-b", "ready")
    assert fleet.api("PATCH", "/deployments/emb", json={"replicas": 2}).status_code == 200
    wait_for(lambda: sorted(_ready_on(fleet, "emb").values()) == ["gpu-a", "gpu-b"],
             timeout_s=300, what="a replica ready on each server")
    _set_node(fleet, "gpu-a", "ready")
    addresses = {"gpu-a": "127.0.0.3", "gpu-b": "127.0.0.4"}
    for rep in _replicas(fleet, "emb"):  # each listens on its server's address
        with httpx.Client(timeout=5) as c:
            assert c.get(f"http://{addresses[rep['node']]}:{rep['port']}/ready"
                         ).status_code == 200, rep

    oai = OpenAI(base_url=f"{fleet.url}/v1", api_key=fleet.token)
    resp = oai.embeddings.create(model="emb", input=["a cat sat", "a kitten sat",
                                                     "stock market report"])
    assert [len(d.embedding) for d in resp.data] == [384, 384, 384]
    memory = _memory_mib(fleet.memory_pids)

    victim = "gpu-b"
    moving = next(rid for rid, node in _ready_on(fleet, "emb").items() if node == victim)
    client = SteadyClient(f"{fleet.url}/v1", fleet.token, "emb").start()
    try:
        wait_for(lambda: sum(ok for _, ok, _ in client.outcomes) >= 5, timeout_s=60,
                 what="the steady client to get answers")
        raylet = _raylet_of(fleet.joins[victim])
        os.kill(raylet.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: fleet.get(f"/nodes/{victim}")["status"] == "not_ready",
                 timeout_s=120, what=f"{victim} to become not_ready")
        lost_after = time.monotonic() - killed
        wait_for(lambda: _ready_on(fleet, "emb").get(moving) == "gpu-a", timeout_s=300,
                 what="the replica of the lost server ready on the other one")
        moved_after = time.monotonic() - killed
        ready_at = time.monotonic()
        wait_for(lambda: sum(ok for t, ok, _ in client.outcomes if t > ready_at) >= 10,
                 timeout_s=60, what="requests after the move")
    finally:
        client.stop()
    lost = client.lost_between(killed, ready_at)
    during = [o for o in client.outcomes if killed <= o[0] <= ready_at]
    after = [ok for t, ok, _ in client.outcomes if t > ready_at]
    assert after and all(after), client.lost_between(ready_at, time.monotonic())

    # The control plane's records: the node's loss, the replica's loss and its move.
    assert "NodeLost" in [r for r, _ in fleet.node_events(victim)]
    reps = _replicas(fleet, "emb")
    assert sorted(r["node"] for r in reps if r["status"] == "ready") == ["gpu-a", "gpu-a"]
    assert fleet.get(f"/nodes/{victim}")["allocated_cpu_milli"] == 0
    events = [(e["reason"], e["message"]) for e in
              fleet.get("/events?kind=deployment&name=emb&limit=1000")["data"]
              if moving[:8] in e["message"]]
    assert (("NodeLost", f"replica {moving[:8]}: node {victim} is not ready; its "
             "allocation was freed") in events), events
    assert any(r == "Scheduled" and "placed on node gpu-a" in m for r, m in events), events
    with sqlite3.connect(fleet.db) as con:
        row = con.execute("SELECT r.status, n.name FROM replicas r JOIN nodes n "
                          "ON n.id = r.node_id WHERE r.id = ?", (moving,)).fetchone()
    assert row == ("ready", "gpu-a"), row
    resp = oai.embeddings.create(model="emb", input=["after the move"])
    assert len(resp.data[0].embedding) == 384
    print(f"\nreplica move: raylet SIGKILL -> node not_ready {lost_after:.1f} s; -> "
          f"replacement ready on gpu-a {moved_after:.1f} s")
    print(f"requests during the move: {len(during)} sent, {len(lost)} lost "
          f"({sorted(set(w.split(':')[0] for w in lost))}); {len(after)} after, all answered")
    print(f"cluster memory with 2 embeddings replicas (RSS of the Ray nodes' process "
          f"trees): {memory:.0f} MiB; after the loss: {_memory_mib(fleet.memory_pids):.0f} MiB")
    assert fleet.api("DELETE", "/deployments/emb").status_code in (200, 202, 204)
