"""What keeps a control plane with thousands of nodes and replicas fast, and still right.

The fleet benchmark (``benchmarks/fleet``) found costs that grew with the fleet on
every workload or every call; each is pinned here by the statements it runs:

* placement read every node and every allocation to place one workload (now: an
  inventory kept between placements, the chosen node read again under the placement
  lock, so another copy's placements are never overbooked);
* a reconcile pass opened several transactions per deployment and per replica even when
  nothing was to be done (now: settled deployments only get their health checks);
* ``GET /deployments/{name}`` read every node to name its replicas' nodes;
* the node metrics sample ran several statements per node (now: a few statements in
  all, the allocations summed by the database);
* every pass read every live replica to find the settled deployments (now: a deployment
  found settled is kept so until its row, one of its replicas' status or one of its
  nodes changes, or its keep time is over).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from neocloud.models import NodeCreate, NodeStatus
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Allocation, MetricPoint, Replica
from neocloud.server.scheduler import Binding, ResourceRequest, Unschedulable
from neocloud.server.services import inventory, metrics_history, placement
from neocloud.server.services import nodes as node_svc
from tests.server.helpers import Cloud

H100x2 = [{"type": "H100", "count": 2, "memory_mib": 81559}]
ONE_GPU = ResourceRequest(cpu_milli=1000, memory_mib=1024, gpu_count=1, gpu_types=("H100",))
ONE_CPU = ResourceRequest(cpu_milli=1000, memory_mib=1024)


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement ``db`` runs inside the block."""
    seen: list[str] = []

    def on_execute(_conn: Any, _cur: Any, sql: str, *_a: Any) -> None:
        seen.append(" ".join(sql.split()))

    event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)


def full_reads(seen: list[str], table: str) -> list[str]:
    """Statements that read every row of ``table`` (a ``FROM table`` with no ``WHERE``)."""
    pat = re.compile(rf"\bFROM {table}\b(?!.*\bWHERE\b)", re.IGNORECASE)
    return [q for q in seen if q.lstrip().upper().startswith("SELECT") and pat.search(q)]


def add_nodes(db: Database, n: int, *, gpus: list[dict[str, Any]] | None = None) -> None:
    with db.session() as s:
        for i in range(n):
            node_svc.create_node(s, spec=NodeCreate.model_validate({
                "name": f"n{i:03d}", "cpu_milli": 64000, "memory_mib": 65536,
                "gpus": gpus or [], "backend": "fake"}))


def workspace_id(cloud: Cloud) -> str:
    from neocloud.server.db.tables import Workspace

    with cloud.app.state.db.session() as s:
        return str(s.scalars(select(Workspace.id).where(Workspace.name == "default")).one())


def place_one(db: Database, ws: str, request: ResourceRequest, owner: str
              ) -> Binding | Unschedulable:
    """Schedule ``request`` and, when it fits, bind it to a new pod-less replica row."""
    from neocloud.server.db.tables import Deployment

    with db.session() as s:
        result = placement.schedule(s, workspace_id=ws, requests=[request])
        if not isinstance(result, list):
            assert isinstance(result, Unschedulable), result
            return result
        dep = s.scalars(select(Deployment)).first()
        assert dep is not None
        r = Replica(id=owner, deployment_id=dep.id, workspace_id=ws, generation=1,
                    status="starting", node_id=result[0].node_id)
        s.add(r)
        s.flush()
        placement.bind(s, binding=result[0], workspace_id=ws, kind="replica", owner_id=owner)
        return result[0]


def a_deployment(cloud: Cloud) -> None:
    r = cloud.api("POST", "/deployments", json={"name": "holder", "service": "embeddings",
                                                "replicas": 0})
    assert r.status_code == 201, r.text


def test_placement_reads_the_whole_inventory_once_not_per_workload(cloud: Cloud) -> None:
    """Failing input: 40 placements on 20 nodes read every node and allocation 40 times."""
    db = cloud.app.state.db
    add_nodes(db, 20)
    a_deployment(cloud)
    ws = workspace_id(cloud)
    with statements(db) as seen:
        for i in range(40):
            assert isinstance(place_one(db, ws, ONE_CPU, f"r{i:031d}"), Binding)
    assert len(full_reads(seen, "allocations")) == 1
    with db.session() as s:  # every node within its capacity
        per_node = {row[0]: int(row[1]) for row in s.execute(
            select(Allocation.node_id, func.sum(Allocation.cpu_milli))
            .group_by(Allocation.node_id))}
    assert sum(per_node.values()) == 40_000 and max(per_node.values()) <= 64000


def test_inventory_rebuild_sums_what_nodes_hold_and_agrees_with_every_row(
        cloud: Cloud) -> None:
    """Failing input (the fleet benchmark at 5,000 nodes): the kept inventory's rebuild
    read every allocation as a row (50,000 of them, 2.8 s under the placement lock every
    10 s). It now reads the CPU and memory held as sums per node and only the
    allocations that hold GPU shares; the inventory it builds is the one the rows give."""
    db = cloud.app.state.db
    add_nodes(db, 3, gpus=H100x2)
    a_deployment(cloud)
    ws = workspace_id(cloud)
    half = ResourceRequest(cpu_milli=500, memory_mib=512, gpu_milli=500, gpu_types=("H100",))
    asks = [ONE_CPU] * 7 + [ONE_GPU] * 3 + [half] * 3
    for i, ask in enumerate(asks):
        assert isinstance(place_one(db, ws, ask, f"r{i:031d}"), Binding)
    with db.session() as s:
        inv = inventory.Inventory(policy="default")
        with statements(db) as seen:
            inv.rebuild(s)
        reads = [q for q in seen if "FROM allocations" in q]
        assert reads and all("GROUP BY" in q or "WHERE" in q for q in reads), reads
        assert inv.index is not None
        kept = {n.id: (n.cpu_milli_free, n.memory_mib_free,
                       sorted((g.index, g.free_milli) for g in n.gpus))
                for n in inv.index.snapshot()}
        rows = {n.id: (n.cpu_milli_free, n.memory_mib_free,
                       sorted((g.index, g.free_milli) for g in n.gpus))
                for n in inventory.snapshot(s)}
    assert kept == rows
    # 3 whole GPUs, 3 halves on at least 2 more: the GPU shares were read
    assert sum(free[2][i][1] < 1000 for free in kept.values() for i in range(2)) >= 5


def test_placements_in_a_row_look_at_the_node_count_once_a_second(cloud: Cloud) -> None:
    """Failing input: every placement transaction counted the nodes (one statement per
    deployment placed, about 10 ms each on the loaded benchmark machine)."""
    db = cloud.app.state.db
    add_nodes(db, 3)
    a_deployment(cloud)
    ws = workspace_id(cloud)
    assert isinstance(place_one(db, ws, ONE_CPU, "w" * 32), Binding)  # builds the index
    with statements(db) as seen:
        for i in range(5):
            assert isinstance(place_one(db, ws, ONE_CPU, f"r{i:031d}"), Binding)
    assert len([q for q in seen if "count(nodes.id)" in q]) <= 1


def test_kept_inventory_never_overbooks_what_another_copy_placed(cloud: Cloud) -> None:
    """Two control-plane copies (two engines on one database), one node of 2 GPUs: copy A
    places one, copy B the other; A's kept inventory still shows a free GPU, and A must
    find out from the database that there is none."""
    a = cloud.app.state.db
    b = Database(a.url)
    try:
        add_nodes(a, 1, gpus=H100x2)
        a_deployment(cloud)
        ws = workspace_id(cloud)
        first = place_one(a, ws, ONE_GPU, "a" * 32)
        second = place_one(b, ws, ONE_GPU, "b" * 32)
        assert isinstance(first, Binding) and isinstance(second, Binding)
        assert {first.gpu_indices, second.gpu_indices} == {(0,), (1,)}
        third = place_one(a, ws, ONE_GPU, "c" * 32)
        assert isinstance(third, Unschedulable)
        with a.session() as s:
            assert s.scalar(select(func.count()).select_from(Allocation)) == 2
    finally:
        b.dispose()


def test_kept_inventory_sees_freed_room_and_status_changes_at_once(cloud: Cloud) -> None:
    db = cloud.app.state.db
    add_nodes(db, 2, gpus=H100x2)
    a_deployment(cloud)
    ws = workspace_id(cloud)
    owners = [f"r{i:031d}" for i in range(4)]
    placed = [place_one(db, ws, ONE_GPU, o) for o in owners]
    assert all(isinstance(p, Binding) for p in placed)
    assert isinstance(place_one(db, ws, ONE_GPU, "x" * 32), Unschedulable)
    first = placed[0]
    assert isinstance(first, Binding)
    with db.session() as s:
        placement.release(s, owner_id=owners[0])
        rebuilds = inventory.inventory(s).rebuilds
    got = place_one(db, ws, ONE_GPU, "y" * 32)
    assert isinstance(got, Binding) and got.node_id == first.node_id
    with db.session() as s:
        assert inventory.inventory(s).rebuilds == rebuilds  # seen without a rebuild
        mine = next(n for n in node_svc.list_nodes(s) if n.id == first.node_id)
        node_svc.set_node_status(s, mine, NodeStatus.cordoned, reason="Test", message="t")
        other = next(p for p in placed if isinstance(p, Binding)
                     and p.node_id != first.node_id)
        placement.release(s, owner_id=owners[placed.index(other)])
        placement.release(s, owner_id="y" * 32)  # room on the cordoned node too
    got = place_one(db, ws, ONE_GPU, "z" * 32)
    assert isinstance(got, Binding) and got.node_id == other.node_id  # not the cordoned


def test_a_settled_pass_runs_no_transaction_per_deployment(cloud: Cloud) -> None:
    """Failing input: a pass over deployments whose replicas are all ready locked each
    deployment row and re-read each replica and its node."""
    cloud.add_fake_node("g1", gpus=H100x2)
    for name in ("a", "b", "c"):
        r = cloud.api("POST", "/deployments", json={"name": name, "service": "embeddings",
                                                    "replicas": 2})
        assert r.status_code == 201, r.text
    cloud.reconcile(4)
    assert all(cloud.api("GET", f"/deployments/{n}").json()["status"] == "ready"
               for n in ("a", "b", "c"))
    db = cloud.app.state.db
    with statements(db) as seen:
        cloud.reconcile(1)
    assert not [q for q in seen if "FOR UPDATE" in q.upper() or "advisory" in q.lower()]
    assert len([q for q in seen if re.search(r"\bFROM replicas\b", q)]) <= 2
    # a crash is still seen in that pass, and the deployment's status follows at once
    rid = cloud.api("GET", "/deployments/b").json()["replica_list"][0]["id"]
    cloud.fake.crash(rid)
    cloud.reconcile(1)
    dep = cloud.api("GET", "/deployments/b").json()
    assert dep["status"] == "degraded" and dep["ready_replicas"] == 1
    assert cloud.api("GET", "/deployments/a").json()["status"] == "ready"


def test_reading_a_deployment_reads_only_its_replicas_nodes(cloud: Cloud) -> None:
    db = cloud.app.state.db
    add_nodes(db, 30)
    r = cloud.api("POST", "/deployments", json={"name": "d", "service": "embeddings",
                                                "replicas": 2})
    assert r.status_code == 201
    cloud.reconcile(2)
    with statements(db) as seen:
        dep = cloud.api("GET", "/deployments/d").json()
    assert all(rep["node"] and rep["node"].startswith("n") for rep in dep["replica_list"])
    assert full_reads(seen, "nodes") == []


def test_node_sample_costs_a_few_statements_not_a_few_per_node(cloud: Cloud) -> None:
    db = cloud.app.state.db
    add_nodes(db, 40, gpus=H100x2)
    at = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)
    with statements(db) as seen, db.session() as s:
        assert metrics_history.sample_nodes(s, at) == 40
    assert len(seen) < 20
    with db.session() as s:
        rows = s.scalars(select(MetricPoint).where(MetricPoint.series == "node")).all()
        assert len(rows) == 80 and all(r.samples == 1 for r in rows)
        assert {r.gpus for r in rows} == {2.0}
        assert metrics_history.sample_nodes(s, at) == 0  # this bucket is taken


def _expected_samples(db: Database, res: int, t: int, samples: int = 1
                      ) -> dict[str, tuple[float, ...]]:
    """Node id -> (samples, gpus, gpus allocated, CPU, CPU allocated) of a bucket holding
    ``samples`` samples of the fleet as it is now, summed row by row in Python (what the
    sample wrote when it read every allocation as a row)."""
    from neocloud.server.db.tables import Node

    with db.session() as s:
        held: dict[str, list[float]] = {}
        for a in s.scalars(select(Allocation)):
            h = held.setdefault(a.node_id, [0.0, 0.0])
            h[0] += len(a.gpu_indices or []) * a.gpu_milli / 1000.0
            h[1] += a.cpu_milli
        return {n.id: (float(samples), samples * float(len(n.gpus or [])),
                       samples * held.get(n.id, [0.0, 0.0])[0],
                       samples * float(n.cpu_milli), samples * held.get(n.id, [0.0, 0.0])[1])
                for n in s.scalars(select(Node))}


def _bucket(db: Database, res: int, t: int) -> dict[str, tuple[float, ...]]:
    with db.session() as s:
        return {r.object_id: (float(r.samples), r.gpus, r.gpus_allocated, r.cpu_milli,
                              r.cpu_allocated_milli)
                for r in s.scalars(select(MetricPoint).where(
                    MetricPoint.series == "node", MetricPoint.resolution_s == res,
                    MetricPoint.t == t))}


def _mixed_fleet(cloud: Cloud) -> tuple[Database, str]:
    """Four nodes of 2 GPUs, two without GPUs; whole GPUs, pairs, half shares and CPU
    work placed on them (one node left empty)."""
    db = cloud.app.state.db
    add_nodes(db, 4, gpus=H100x2)
    with db.session() as s:
        for i in range(2):
            node_svc.create_node(s, spec=NodeCreate.model_validate({
                "name": f"c{i}", "cpu_milli": 32000, "memory_mib": 65536, "gpus": [],
                "backend": "fake"}))
    a_deployment(cloud)
    ws = workspace_id(cloud)
    half = ResourceRequest(cpu_milli=500, memory_mib=512, gpu_milli=500, gpu_types=("H100",))
    pair = ResourceRequest(cpu_milli=2000, memory_mib=2048, gpu_count=2, gpu_types=("H100",))
    for i, ask in enumerate([pair, ONE_GPU, half, half, half, ONE_CPU, ONE_CPU]):
        assert isinstance(place_one(db, ws, ask, f"r{i:031d}"), Binding)
    return db, ws


def test_node_sample_writes_what_the_rows_give_summed_by_the_database(cloud: Cloud) -> None:
    """Failing input: the sample read every allocation as a row (50,000 at full size) and
    read each coarser bucket back row by row (``SELECT ... FOR UPDATE``), then wrote it
    back. It now writes both buckets with one ``INSERT ... SELECT`` each, the allocations
    summed per node by the database; the rows are the ones the per-row sums give,
    fractional GPU shares, nodes without GPUs and nodes without allocations included."""
    db, _ws = _mixed_fleet(cloud)
    at = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)
    with statements(db) as seen, db.session() as s:
        assert metrics_history.sample_nodes(s, at) == 6
    allocation_reads = [q for q in seen if re.search(r"\bFROM allocations\b", q)]
    assert allocation_reads and all("GROUP BY" in q for q in allocation_reads)
    # two statements, each an INSERT ... SELECT: no row read into Python
    assert len(seen) == 2 and all(q.upper().startswith("INSERT INTO METRIC_POINTS")
                                  for q in seen), seen
    t = int(at.timestamp())
    fine, coarse = _bucket(db, 10, t // 10 * 10), _bucket(db, 300, t // 300 * 300)
    assert fine == _expected_samples(db, 10, t) == coarse
    held = [v[2] for v in fine.values()]
    assert sum(held) == 4.5 and any(g % 1 for g in held)  # 2 + 1 + 3 halves
    assert sum(v[4] for v in fine.values()) == 2000 + 1000 + 3 * 500 + 2 * 1000


def test_coarse_buckets_add_up_the_samples_of_their_ten_second_buckets(
        cloud: Cloud) -> None:
    """Three samples in one 5-minute bucket, the fleet changing between them (work
    placed, a node added): each 10-second bucket holds its sample, the 5-minute bucket
    their sums (added to in the database, not replaced), and a sample of a taken
    10-second bucket adds nothing."""
    db, ws = _mixed_fleet(cloud)
    base = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    t = int(base.timestamp())
    wanted: list[dict[str, tuple[float, ...]]] = []
    for k in range(3):
        if k == 1:
            assert isinstance(place_one(db, ws, ONE_GPU, "x" * 32), Binding)
        if k == 2:
            with db.session() as s:
                node_svc.create_node(s, spec=NodeCreate.model_validate({
                    "name": "late", "cpu_milli": 64000, "memory_mib": 65536,
                    "gpus": H100x2, "backend": "fake"}))
        with db.session() as s:
            assert metrics_history.sample_nodes(s, base + timedelta(seconds=10 * k)) == 6 + (
                k == 2)
            assert metrics_history.sample_nodes(s, base + timedelta(seconds=10 * k + 3)) == 0
        wanted.append(_expected_samples(db, 10, t + 10 * k))
        assert _bucket(db, 10, t + 10 * k) == wanted[-1]
    sums = {node: tuple(sum(w[node][i] for w in wanted if node in w) for i in range(5))
            for node in wanted[-1]}
    assert _bucket(db, 300, t) == sums
    assert sorted(v[0] for v in sums.values()) == [1.0] + [3.0] * 6


def _settled_fleet(cloud: Cloud, names: tuple[str, ...] = ("a", "b", "c")) -> None:
    cloud.add_fake_node("g1", gpus=H100x2)
    for name in names:
        r = cloud.api("POST", "/deployments", json={"name": name, "service": "embeddings",
                                                    "replicas": 2})
        assert r.status_code == 201, r.text
    cloud.reconcile(3)
    assert all(cloud.api("GET", f"/deployments/{n}").json()["status"] == "ready"
               for n in names)


def _replica_reads(seen: list[str]) -> list[str]:
    """The statements that read replica rows' handles (the settled read, the steps)."""
    return [q for q in seen if re.search(r"\bFROM replicas\b", q) and "handle" in q]


def _dep_id(cloud: Cloud, name: str) -> str:
    return str(cloud.api("GET", f"/deployments/{name}").json()["id"])


def test_a_pass_on_a_settled_fleet_reads_no_replica_of_what_stayed_settled(
        cloud: Cloud) -> None:
    """Failing input (the fleet benchmark at 20,000 replicas: 56 % of the control plane's
    interpreter time in steady state): every pass read every live replica to find the
    settled deployments. Now a deployment found settled is kept so, its replicas not
    read again, until its row or one of its replicas' status changes; its health checks
    still run every pass (a crash is seen by the next pass)."""
    _settled_fleet(cloud)
    db = cloud.app.state.db
    with statements(db) as seen:
        cloud.reconcile(1)
    assert _replica_reads(seen) == []
    assert not [q for q in seen if "FOR UPDATE" in q.upper() or "advisory" in q.lower()]
    # a scale: the next pass reads that deployment's replicas alone, and places it
    assert cloud.api("PATCH", "/deployments/b", json={"replicas": 3}).status_code == 200
    with statements(db) as seen:
        cloud.reconcile(1)
    settled_reads = [q for q in _replica_reads(seen) if "replicas.status !=" in q]
    assert len(settled_reads) == 1 and "replicas.deployment_id IN (" in settled_reads[0]
    assert cloud.api("GET", "/deployments/b").json()["ready_replicas"] == 3
    # a crash of a kept one: seen by its health check in the next pass
    rid = cloud.api("GET", "/deployments/a").json()["replica_list"][0]["id"]
    cloud.fake.crash(rid)
    cloud.reconcile(1)
    assert cloud.api("GET", "/deployments/a").json()["status"] == "degraded"
    assert _dep_id(cloud, "a") not in cloud.app.state.reconcilers.deployments._kept


def test_a_replica_write_no_deployment_row_shows_unsettles_at_once(cloud: Cloud) -> None:
    """A preemption writes the victim replica ``stopping`` (and no deployment row), a node
    cordoned changes a node: the next pass reads the deployments concerned again and
    runs their full step (a replacement placed for the preempted replica)."""
    from neocloud.server.reconcilers.deployments.stopping import preempt_replica

    _settled_fleet(cloud)
    rec = cloud.app.state.reconcilers.deployments
    a, b = _dep_id(cloud, "a"), _dep_id(cloud, "b")
    assert {a, b} <= rec._kept.keys()
    victim = cloud.api("GET", "/deployments/a").json()["replica_list"][0]["id"]
    with cloud.app.state.db.session() as s:
        preempt_replica(s, victim, "preempted by a test")
    cloud.reconcile(1)
    assert a not in rec._kept and b in rec._kept
    cloud.reconcile(2)
    reps = cloud.api("GET", "/deployments/a").json()["replica_list"]
    assert victim not in {r["id"] for r in reps if r["status"] != "stopped"}
    assert sum(r["status"] == "ready" for r in reps) == 2
    assert a in rec._kept  # settled again, with the new replica
    with cloud.app.state.db.session() as s:
        node = next(n for n in node_svc.list_nodes(s) if n.name == "g1")
        node_svc.set_node_status(s, node, NodeStatus.cordoned, reason="Test", message="t")
    cloud.reconcile(1)
    assert rec._kept == {}


def test_kept_settled_deployments_are_read_again_after_the_keep_time(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resync: a replica written behind the control plane's back (an operator's
    direct write that leaves it ``ready``) is seen once the keep time is over; with no
    keep time every pass reads every live replica, as before."""
    from neocloud.server.reconcilers.deployments import settled

    _settled_fleet(cloud, ("a",))
    rec = cloud.app.state.reconcilers.deployments
    a = _dep_id(cloud, "a")
    assert a in rec._kept
    with cloud.app.state.db.session() as s:  # an older generation, still ready
        for r in s.scalars(select(Replica).where(Replica.deployment_id == a)):
            r.generation = 0
    cloud.reconcile(1)
    assert a in rec._kept  # not seen yet: nothing the checks look at changed
    monkeypatch.setattr(settled, "SETTLED_KEEP_S", 0.0)
    rec._kept[a] = dataclasses.replace(rec._kept[a], until=0.0)
    db = cloud.app.state.db
    with statements(db) as seen:
        cloud.reconcile(1)
    assert a not in rec._kept
    assert [q for q in _replica_reads(seen) if "replicas.status !=" in q]
    cloud.reconcile(3)  # the old generation replaced
    reps = cloud.api("GET", "/deployments/a").json()["replica_list"]
    assert {r["generation"] for r in reps if r["status"] == "ready"} == {1}


def test_every_write_to_a_deployment_row_changes_its_key_or_its_pending_reason(
        cloud: Cloud) -> None:
    """The invariant that keeping a deployment settled (``settled``) and the looks
    (``changes``) rest on: every ``UPDATE`` of a deployment row, by a request or by the
    reconciler, sets a column of its key (``updated_at``, ``status``, ``replicas``,
    ``generation``, ``revision``) or its pending reason or code, through a create,
    placement, a spec change, a scale, a rollout, a crash and its recovery, a node
    cordoned, no room, and a delete."""
    db = cloud.app.state.db
    key = ("updated_at", "status", "replicas", "generation", "revision", "pending_reason",
           "pending_code")
    with statements(db) as seen:
        _settled_fleet(cloud, ("a", "b"))
        assert cloud.api("PATCH", "/deployments/a", json={"drain_timeout_s": 12.0}
                         ).status_code == 200
        assert cloud.api("PATCH", "/deployments/a", json={"replicas": 3}).status_code == 200
        assert cloud.api("PATCH", "/deployments/b", json={"env": {"X": "1"}}
                         ).status_code == 200
        cloud.reconcile(3)
        rid = cloud.api("GET", "/deployments/a").json()["replica_list"][0]["id"]
        cloud.fake.crash(rid)
        cloud.reconcile(3)
        r = cloud.api("POST", "/deployments", json={"name": "big", "service": "embeddings",
                                                    "shape": "gpu.h100", "replicas": 5})
        assert r.status_code == 201, r.text
        cloud.reconcile(2)
        assert cloud.api("DELETE", "/deployments/b").status_code in (200, 202, 204)
        cloud.reconcile(2)
    updates = [q for q in seen if q.upper().startswith("UPDATE DEPLOYMENTS SET")]
    assert len(updates) > 5
    for q in updates:
        set_part = q[len("UPDATE deployments SET"):].split(" WHERE ")[0]
        assigned = {part.split("=")[0].strip() for part in set_part.split(",")}
        if assigned == {"id"}:  # SQLite's row lock (``lock_row``): a no-op write
            continue
        assert assigned & set(key), q
