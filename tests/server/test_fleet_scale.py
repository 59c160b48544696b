"""What keeps a control plane with thousands of nodes and replicas fast, and still right.

The fleet benchmark (``benchmarks/fleet``) found four costs that grew with the fleet on
every workload or every call; each is pinned here by the statements it runs:

* placement read every node and every allocation to place one workload (now: an
  inventory kept between placements, the chosen node read again under the placement
  lock, so another copy's placements are never overbooked);
* a reconcile pass opened several transactions per deployment and per replica even when
  nothing was to be done (now: settled deployments only get their health checks);
* ``GET /deployments/{name}`` read every node to name its replicas' nodes;
* the node metrics sample ran several statements per node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, func, select

from neocloud.models import NodeCreate, NodeStatus
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Allocation, MetricPoint, Replica
from neocloud.server.scheduler import Binding, ResourceRequest, Unschedulable
from neocloud.server.services import metrics_history, placement
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
        inv = placement.Inventory(policy="default")
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
                for n in placement.snapshot(s)}
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
        rebuilds = placement.inventory(s).rebuilds
    got = place_one(db, ws, ONE_GPU, "y" * 32)
    assert isinstance(got, Binding) and got.node_id == first.node_id
    with db.session() as s:
        assert placement.inventory(s).rebuilds == rebuilds  # seen without a rebuild
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
