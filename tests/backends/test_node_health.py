"""Node health and drains through the reconcilers, on a simulated fleet whose backend
lists its live nodes as the Ray backend does (``alive_node_ids``), so a node's loss is
one call away: job workers fail their attempt with "node lost" and retry elsewhere,
pods stop with that reason (their logs stay readable), replicas move, a rejoined node is
ready without anything started twice; gangs across nodes get worker 0's address and a
port asked of that node; a draining node takes no new work, is cordoned once its work
has ended, and cannot be removed before. Runs on SQLite (and PostgreSQL when
``NEOCLOUD_TEST_DATABASE_URL`` is set)."""

from __future__ import annotations

import itertools
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from neocloud.server.app import create_app
from neocloud.server.backends.base import WorkloadSpec, WorkloadState
from neocloud.server.backends.fake import FakeBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.tables import Allocation, Event, Node, Replica
from neocloud.server.invariants import check_database
from tests.server.helpers import Cloud, make_settings
from tests.server.workload_helpers import get

GPUS = [{"type": "T4", "count": 2, "memory_mib": 15360}]


class FleetBackend(FakeBackend):
    """Simulated processes on simulated Ray-like nodes: handles carry the node id, the
    backend lists its live nodes, and ports are asked of a node."""

    name = "ray"

    def __init__(self) -> None:
        super().__init__()
        self.node_ids: dict[str, str] = {}
        """neocloud node name -> current backend node id."""
        self.alive: set[str] = set()
        self.ports_asked: list[str] = []
        self.stopped: list[str] = []
        self.unready: set[str] = set()
        """Names of nodes whose processes do not answer ready (yet)."""
        self._ports: Iterator[int] = itertools.count(31000)

    def add(self, name: str) -> str:
        nid = uuid.uuid4().hex
        self.node_ids[name] = nid
        self.alive.add(nid)
        return nid

    def kill(self, name: str) -> None:
        nid = self.node_ids[name]
        self.alive.discard(nid)
        self.end_node(name)  # its processes die with it

    def alive_node_ids(self) -> frozenset[str]:
        return frozenset(self.alive)

    def free_port(self, *, node_name: str | None, address: str) -> int:
        self.ports_asked.append(node_name or address)
        return next(self._ports)

    def start(self, spec: WorkloadSpec) -> dict[str, Any]:
        assert spec.node_name is not None, "the reconciler names the node"
        if self.node_ids.get(spec.node_name) not in self.alive:
            raise OSError(f"no alive node {spec.node_name}")
        return {**super().start(spec), "node_id": self.node_ids[spec.node_name]}

    def stop(self, handle: dict[str, Any], *, grace_s: float) -> WorkloadState:
        self.stopped.append(str(handle.get("fake_id")))
        return super().stop(handle, grace_s=grace_s)

    def probe_ready(self, handle: dict[str, Any], url: str, *, timeout_s: float) -> bool:
        with self._lock:
            spec = self._running.get(handle.get("fake_id"))  # type: ignore[arg-type]
        return spec is not None and spec.node_name not in self.unready


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[tuple[Cloud, FleetBackend]]:
    be = FleetBackend()
    app = create_app(make_settings(tmp_path / "home", db_url), backends={"ray": be},
                     run_reconcilers=False)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    boot = bootstrap(app.state.db)
    assert boot.token
    cloud = Cloud(app=app, client=client, token=boot.token, fake=be)
    assert cloud.api("POST", "/shapes", json={
        "name": "t4.x2", "cpu_milli": 1000, "memory_mib": 1024, "gpu_count": 2,
        "gpu_type": "T4", "price_per_hour_usd": 1.0}).status_code == 201
    try:
        yield cloud, be
    finally:
        client.__exit__(None, None, None)


def join(cloud: Cloud, be: FleetBackend, name: str, ip: str) -> dict[str, Any]:
    nid = be.add(name)
    r = cloud.api("POST", "/nodes/join", json={
        "name": name, "address": ip, "ray_node_id": nid, "cpu_milli": 4000,
        "memory_mib": 8192, "gpus": [{"type": "T4", "count": 2, "memory_mib": 15360}]})
    assert r.status_code in (200, 201), r.text
    return r.json()


def run(cloud: Cloud, times: int = 3) -> None:
    for _ in range(times):
        cloud.app.state.reconcilers.run_once()


def allocations_on(cloud: Cloud, node: str) -> int:
    with cloud.app.state.db.session() as s:
        nid = s.scalars(select(Node.id).where(Node.name == node)).one()
        return len(s.scalars(select(Allocation).where(Allocation.node_id == nid)).all())


def node_events(cloud: Cloud, node: str) -> list[tuple[str, str | None]]:
    with cloud.app.state.db.session() as s:
        return [(e.reason, e.status) for e in s.scalars(
            select(Event).where(Event.kind == "node", Event.name == node).order_by(Event.id))]


def no_violations(cloud: Cloud) -> None:
    report = check_database(cloud.app.state.db, cloud.app.state.backends)
    assert not report.violations, report.violations


def test_gang_across_nodes_then_node_loss_retries_elsewhere(
        fleet: tuple[Cloud, FleetBackend]) -> None:
    cloud, be = fleet
    for i, name in enumerate(("a", "b", "c")):
        join(cloud, be, name, f"127.0.0.{3 + i}")
    assert cloud.api("PUT", "/secrets/tok", json={"value": "v-123456789"}).status_code == 201
    r = cloud.api("POST", "/jobs", json={"name": "ddp", "shape": "t4.x2", "workers": 2,
                                         "command": ["train"], "max_retries": 1,
                                         "secrets": {"AUTH": "tok"}})
    assert r.status_code == 201, r.text
    run(cloud)
    job = get(cloud, "/jobs/ddp")
    assert job["status"] == "running", job
    workers = job["worker_list"]
    nodes = [w["node"] for w in workers]
    assert len(set(nodes)) == 2  # two GPUs per worker, two per node: one worker per node
    specs = {s.env["RANK"]: s for s in be.started}
    first_ip = {"a": "127.0.0.3", "b": "127.0.0.4", "c": "127.0.0.5"}[nodes[0]]
    assert {s.env["MASTER_ADDR"] for s in specs.values()} == {first_ip}
    assert {s.env["MASTER_PORT"] for s in specs.values()} == {"31000"}
    assert be.ports_asked == [nodes[0]]  # asked of worker 0's node
    for rank, s in specs.items():
        assert s.node_name == nodes[int(rank)] and s.gpu_milli == 1000
        assert s.secret_env == frozenset({"AUTH"}) and s.env["AUTH"] == "v-123456789"

    lost = nodes[1]
    be.kill(lost)
    run(cloud, 1)
    assert get(cloud, f"/nodes/{lost}")["status"] == "not_ready"
    assert ("NodeLost", "not_ready") in node_events(cloud, lost)
    assert allocations_on(cloud, lost) == 0
    job = get(cloud, "/jobs/ddp")
    assert job["failures"] == 1 and "node lost" in (job["reason"] or ""), job
    no_violations(cloud)

    run(cloud, 4)
    job = get(cloud, "/jobs/ddp")
    assert job["status"] == "running" and job["attempt"] == 2, job
    second = [w for w in job["worker_list"] if w["attempt"] == 2]
    assert lost not in {w["node"] for w in second} and len({w["node"] for w in second}) == 2
    started = len(be.started)

    join(cloud, be, lost, "127.0.0.9")  # the node comes back (a new Ray node id)
    run(cloud, 3)
    assert get(cloud, f"/nodes/{lost}")["status"] == "ready"
    assert len(be.started) == started  # nothing that moved is started again
    assert get(cloud, "/jobs/ddp")["attempt"] == 2
    no_violations(cloud)


def test_ended_worker_is_stopped_through_the_backend(fleet: tuple[Cloud, FleetBackend]) -> None:
    """Ray keeps an ended workload's GPUs until stop(): the reconciler always calls it."""
    cloud, be = fleet
    join(cloud, be, "a", "127.0.0.3")
    assert cloud.api("POST", "/jobs", json={"name": "one", "shape": "t4.x2",
                                            "command": ["x"]}).status_code == 201
    run(cloud)
    wid = be.started[-1].workload_id
    handle = be.find(wid)
    assert handle is not None
    be.crash(wid, 0)
    run(cloud)
    assert get(cloud, "/jobs/one")["status"] == "succeeded"
    assert str(handle["fake_id"]) in be.stopped


def test_process_gone_before_the_node_is_declared_dead_is_node_lost(
        fleet: tuple[Cloud, FleetBackend]) -> None:
    """Ray reads a worker whose raylet died as ended, with no exit code, seconds before it
    marks the node dead. The attempt must fail as "node lost", not "exit code unknown"
    (seen in the Ray end-to-end run on a loaded machine)."""
    cloud, be = fleet
    for i, name in enumerate(("a", "b")):
        join(cloud, be, name, f"127.0.0.{3 + i}")
    assert cloud.api("POST", "/jobs", json={"name": "one", "shape": "t4.x2", "max_retries": 1,
                                            "command": ["x"]}).status_code == 201
    run(cloud)
    job = get(cloud, "/jobs/one")
    assert job["status"] == "running", job
    node = job["worker_list"][0]["node"]
    be.end_node(node)  # the processes are gone; the backend still lists the node as alive
    run(cloud)
    job = get(cloud, "/jobs/one")
    assert job["failures"] == 0 and job["status"] == "running", job
    be.kill(node)
    run(cloud, 1)
    job = get(cloud, "/jobs/one")
    assert job["failures"] == 1 and "node lost" in (job["reason"] or ""), job
    no_violations(cloud)


def test_pod_on_lost_node_stops_and_keeps_its_logs(fleet: tuple[Cloud, FleetBackend]) -> None:
    cloud, be = fleet
    join(cloud, be, "a", "127.0.0.3")
    sshd = socket.create_server(("127.0.0.3", 0))  # stands in for the pod's sshd
    port = sshd.getsockname()[1]
    be._ports = itertools.repeat(port)
    assert cloud.api("PUT", "/secrets/pw", json={"value": "hunter2-secret"}).status_code == 201
    r = cloud.api("POST", "/pods", json={"name": "dev", "secrets": {"DB": "pw"}})
    assert r.status_code == 201, r.text
    run(cloud)
    pod = get(cloud, "/pods/dev")
    assert pod["status"] == "running" and pod["node"] == "a", pod
    spec = be.started[-1]
    assert spec.secret_env == frozenset({"DB"}) and spec.node_name == "a"
    assert spec.port == port and be.ports_asked == ["a"]  # asked of the pod's node
    sshd.close()
    be.write(spec.workload_id, "last words before the node went\n")
    be.kill("a")
    run(cloud, 2)
    pod = get(cloud, "/pods/dev")
    assert pod["status"] == "stopped" and "node lost" in pod["reason"], pod
    assert allocations_on(cloud, "a") == 0
    logs = cloud.api("GET", "/pods/dev/logs")
    assert logs.status_code == 200 and "last words" in logs.text
    no_violations(cloud)


def test_replica_on_lost_node_moves(fleet: tuple[Cloud, FleetBackend]) -> None:
    cloud, be = fleet
    join(cloud, be, "a", "127.0.0.3")
    join(cloud, be, "b", "127.0.0.4")
    r = cloud.api("POST", "/deployments", json={"name": "emb", "service": "embeddings",
                                                "shape": "t4.x2", "replicas": 2})
    assert r.status_code == 201, r.text
    run(cloud, 4)
    dep = get(cloud, "/deployments/emb")
    assert dep["status"] == "ready", dep
    on_a = next(r for r in dep["replica_list"] if r["node"] == "a")
    handle = be.find(on_a["id"])
    assert handle is not None
    join(cloud, be, "c", "127.0.0.5")
    be.kill("a")
    run(cloud, 6)
    dep = get(cloud, "/deployments/emb")
    assert dep["status"] == "ready", dep
    assert allocations_on(cloud, "a") == 0
    assert allocations_on(cloud, "b") == 1 and allocations_on(cloud, "c") == 1
    moved = next(r for r in dep["replica_list"] if r["id"] == on_a["id"])
    assert moved["node"] == "c" and moved["status"] == "ready" and moved["restarts"] == 0
    assert str(handle["fake_id"]) in be.stopped  # released through its backend
    events = [(e["reason"], e["message"]) for e in get(
        cloud, "/events?kind=deployment&name=emb&limit=1000")["data"]
        if on_a["id"][:8] in e["message"]]
    assert ("NodeLost", f"replica {on_a['id'][:8]}: node a is not ready; its allocation "
                        "was freed") in events, events
    assert any(r == "Scheduled" and "placed on node c" in m for r, m in events), events
    started = len(be.started)

    join(cloud, be, "a", "127.0.0.3")  # the node comes back (a new Ray node id)
    run(cloud, 3)
    assert get(cloud, "/nodes/a")["status"] == "ready"
    assert len(be.started) == started  # nothing that moved is started again
    assert sorted(r["node"] for r in get(cloud, "/deployments/emb")["replica_list"]
                  if r["status"] != "stopped") == ["b", "c"]
    no_violations(cloud)


def test_replica_listens_on_its_nodes_address_on_a_port_of_that_node(
        fleet: tuple[Cloud, FleetBackend]) -> None:
    cloud, be = fleet
    join(cloud, be, "a", "127.0.0.3")
    r = cloud.api("POST", "/deployments", json={"name": "emb", "service": "embeddings",
                                                "shape": "t4.x2", "replicas": 1})
    assert r.status_code == 201, r.text
    run(cloud, 3)
    rep = get(cloud, "/deployments/emb")["replica_list"][0]
    assert rep["status"] == "ready" and rep["port"] == 31000, rep
    assert be.ports_asked == ["a"]  # asked of the replica's node, not of this machine
    spec = be.started[-1]
    cmd = spec.command
    assert cmd[cmd.index("--host") + 1] == "127.0.0.3", cmd
    assert cmd[cmd.index("--port") + 1] == "31000" and spec.port == 31000, cmd
    assert spec.node_name == "a" and spec.node_address == "127.0.0.3"


def test_replica_on_draining_node_moves_replacement_first(
        fleet: tuple[Cloud, FleetBackend]) -> None:
    cloud, be = fleet
    join(cloud, be, "a", "127.0.0.3")
    r = cloud.api("POST", "/deployments", json={"name": "emb", "service": "embeddings",
                                                "shape": "t4.x2", "replicas": 1})
    assert r.status_code == 201, r.text
    run(cloud, 3)
    old = get(cloud, "/deployments/emb")["replica_list"][0]
    assert old["status"] == "ready" and old["node"] == "a", old
    join(cloud, be, "b", "127.0.0.4")
    be.unready.add("b")  # the replacement takes its time to answer ready
    assert cloud.api("PATCH", "/nodes/a", json={"status": "draining"}).status_code == 200
    run(cloud, 3)
    reps = {r["id"]: r for r in get(cloud, "/deployments/emb")["replica_list"]}
    assert reps[old["id"]]["status"] == "ready", reps  # keeps serving until replaced
    new = [r for r in reps.values() if r["id"] != old["id"]]
    assert [(r["node"], r["status"]) for r in new] == [("b", "starting")], reps
    assert get(cloud, "/nodes/a")["status"] == "draining"

    be.unready.clear()
    run(cloud, 4)
    reps = {r["id"]: r for r in get(cloud, "/deployments/emb")["replica_list"]}
    assert list(reps) == [new[0]["id"]] and reps[new[0]["id"]]["status"] == "ready", reps
    with cloud.app.state.db.session() as s:
        assert s.get(Replica, old["id"]).status == "stopped"
    assert get(cloud, "/deployments/emb")["status"] == "ready"
    assert get(cloud, "/nodes/a")["status"] == "cordoned"
    events = [e["reason"] for e in get(
        cloud, "/events?kind=deployment&name=emb&limit=1000")["data"]
        if old["id"][:8] in e["message"]]
    assert "NodeDraining" in events, events
    no_violations(cloud)


def test_replica_gone_before_its_node_is_declared_dead_moves_without_a_crash(
        fleet: tuple[Cloud, FleetBackend]) -> None:
    """Ray reads a replica whose raylet died as ended, with no exit code, seconds before it
    marks the node dead: that is the node's loss, not a crash (no restart on the dying
    node)."""
    cloud, be = fleet
    join(cloud, be, "a", "127.0.0.3")
    join(cloud, be, "b", "127.0.0.4")
    r = cloud.api("POST", "/deployments", json={"name": "emb", "service": "embeddings",
                                                "shape": "t4.x2", "replicas": 1})
    assert r.status_code == 201, r.text
    run(cloud, 3)
    rep = get(cloud, "/deployments/emb")["replica_list"][0]
    be.vanish(rep["id"])  # its process is gone; the backend still lists the node as alive
    run(cloud, 2)
    now = get(cloud, "/deployments/emb")["replica_list"][0]
    assert now["status"] == "ready" and now["restarts"] == 0, now
    be.kill(rep["node"])
    run(cloud, 4)
    now = get(cloud, "/deployments/emb")["replica_list"][0]
    assert now["id"] == rep["id"] and now["node"] != rep["node"], now
    assert now["status"] == "ready" and now["restarts"] == 0, now
    no_violations(cloud)


def test_drain_then_cordon_then_remove(fleet: tuple[Cloud, FleetBackend]) -> None:
    cloud, be = fleet
    join(cloud, be, "a", "127.0.0.3")
    assert cloud.api("POST", "/jobs", json={"name": "long", "shape": "t4.x2",
                                            "command": ["x"]}).status_code == 201
    run(cloud)
    assert get(cloud, "/jobs/long")["status"] == "running"
    r = cloud.api("PATCH", "/nodes/a", json={"status": "draining"})
    assert r.status_code == 200, r.text
    assert cloud.api("POST", "/jobs", json={"name": "next", "shape": "cpu.small",
                                            "command": ["x"]}).status_code == 201
    run(cloud)
    assert get(cloud, "/jobs/next")["status"] == "queued"  # no new work on a draining node
    assert get(cloud, "/nodes/a")["status"] == "draining"
    r = cloud.api("DELETE", "/nodes/a")
    assert r.status_code == 409 and "allocation" in r.json()["error"]["message"], r.text
    be.crash(next(s.workload_id for s in be.started), 0)
    run(cloud, 2)
    assert get(cloud, "/jobs/long")["status"] == "succeeded"
    assert get(cloud, "/nodes/a")["status"] == "cordoned"
    assert ("Drained", "cordoned") in node_events(cloud, "a")
    assert cloud.api("DELETE", "/nodes/a").status_code == 204
