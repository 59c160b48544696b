"""The pending replicas of a deployment placed, started and made ready together.

Failing input (the fleet benchmark, ``benchmarks/fleet``): placing and starting one
replica cost about 27 statements in about 10 transactions, and marking it ready 13 more
in the next pass; a deployment of 10 replicas took the placement lock 10 times, read the
budget, quota and node count 10 times, and wrote 10 allocations one by one.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from neocloud.server.db.tables import Allocation, Replica
from neocloud.server.invariants import check_database
from neocloud.server.services import placement as placement_svc
from tests.server.helpers import Cloud
from tests.server.test_fleet_scale import statements

H100x8 = [{"type": "H100", "count": 8, "memory_mib": 81559}]


def _count(seen: list[str], pattern: str) -> int:
    return sum(1 for q in seen if re.search(pattern, q, re.IGNORECASE))


def test_a_deployment_is_placed_in_one_transaction_and_ready_in_one_pass(
        cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=H100x8)
    r = cloud.api("POST", "/deployments", json={"name": "m", "service": "embeddings",
                                                "replicas": 10})
    assert r.status_code == 201, r.text
    db = cloud.app.state.db
    with statements(db) as seen:
        cloud.reconcile(1)
    dep = cloud.api("GET", "/deployments/m").json()
    assert dep["ready_replicas"] == 10 and dep["status"] == "ready"  # in the same pass
    assert _count(seen, r"pg_advisory_xact_lock") == (1 if db.is_postgres else 0)
    assert _count(seen, r"^INSERT INTO allocations") == 1  # one node: one statement
    assert _count(seen, r"\bFROM budgets\b") <= 2  # the placement's, the pass's own
    assert _count(seen, r"\bFROM quotas\b") == 1
    assert _count(seen, r"count\(nodes\.id\)") <= 1
    # the two status changes of the 10 replicas (starting, ready): one compare-and-set
    # statement each for all of them (it was one per replica)
    assert _count(seen, r"^UPDATE replicas SET status=") == 2
    # per replica, on SQLite, its events one by one; the rest once for the deployment
    # (it was about 40 per replica)
    assert len(seen) <= 3 * 10 + 45, len(seen)
    assert check_database(db, cloud.app.state.backends).ok


def test_the_first_replica_without_room_ends_the_placing(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Room for 3 of 8 replicas: the fourth finds none and the placing ends there (the
    other four are not tried: same request, same verdict); every replica left waits
    with that reason, and only the 3 placed hold an allocation."""
    cloud.add_fake_node("g1", gpus=[{"type": "H100", "count": 3, "memory_mib": 81559}])
    replicas = 8
    r = cloud.api("POST", "/deployments", json={"name": "m", "service": "chat",
                                                "shape": "gpu.h100", "replicas": replicas})
    assert r.status_code == 201, r.text
    schedule = placement_svc.schedule
    calls: list[int] = []

    def counted(s: Any, **kw: Any) -> Any:
        calls.append(1)
        return schedule(s, **kw)

    monkeypatch.setattr(placement_svc, "schedule", counted)
    cloud.reconcile(1)
    assert len(calls) == 4  # three placed, the fourth without room; no more tried
    assert cloud.api("GET", "/deployments/m").json()["ready_replicas"] == 3
    with cloud.app.state.db.session() as s:
        waiting = s.scalars(select(Replica).where(Replica.status == "pending")).all()
        assert len(s.scalars(select(Allocation)).all()) == 3
    assert len(waiting) == replicas - 3
    reasons = {w.message for w in waiting}
    assert len(reasons) == 1 and None not in reasons
    cloud.reconcile(1)  # nothing placed: the first tried finds no room, the others wait
    assert len(calls) == 5
    dep = cloud.api("GET", "/deployments/m").json()
    assert dep["ready_replicas"] == 3 and {dep["pending_reason"]} == reasons
    assert check_database(cloud.app.state.db, cloud.app.state.backends).ok


def test_a_batch_on_several_nodes_never_overbooks_one(cloud: Cloud) -> None:
    for name in ("g1", "g2", "g3"):
        cloud.add_fake_node(name, gpus=H100x8)
    r = cloud.api("POST", "/deployments", json={"name": "m", "service": "chat",
                                                "shape": "gpu.h100", "replicas": 20})
    assert r.status_code == 201, r.text
    cloud.reconcile(1)
    with cloud.app.state.db.session() as s:
        per_node = dict(s.execute(select(Allocation.node_id, func.count())
                                  .group_by(Allocation.node_id)).all())
        gpus = [tuple(a.gpu_indices) + (a.node_id,) for a in s.scalars(select(Allocation))]
    assert sum(per_node.values()) == 20 and max(per_node.values()) <= 8
    assert len(set(gpus)) == 20  # no GPU given twice
    cloud.api("PATCH", "/deployments/m", json={"replicas": 30})
    cloud.reconcile(1)
    dep = cloud.api("GET", "/deployments/m").json()
    assert dep["ready_replicas"] == 24 and "24/24" not in (dep["pending_reason"] or "x")
    assert check_database(cloud.app.state.db, cloud.app.state.backends).ok


def test_a_delete_that_lands_while_a_batch_is_placed_wins(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DELETE lands while the reconciler places the deployment's replicas: it waits
    for the placement's locks (or the placement sees it first); either way the replicas
    end stopped, nothing runs, nothing is allocated and the deployment is gone."""
    cloud.add_fake_node("g1", gpus=H100x8)
    r = cloud.api("POST", "/deployments", json={"name": "m", "service": "chat",
                                                "shape": "gpu.h100", "replicas": 4})
    assert r.status_code == 201, r.text
    schedule = placement_svc.schedule
    answers: list[int] = []
    fired: list[bool] = []

    def schedule_while_delete_lands(s: Any, **kw: Any) -> Any:
        if not fired:
            fired.append(True)
            t = threading.Thread(target=lambda: answers.append(
                cloud.api("DELETE", "/deployments/m").status_code))
            t.start()
            t.join(1.0)
        return schedule(s, **kw)

    monkeypatch.setattr(placement_svc, "schedule", schedule_while_delete_lands)
    cloud.reconcile(1)
    for _ in range(100):
        if answers:
            break
        threading.Event().wait(0.05)
    assert answers == [204]
    cloud.reconcile(3)
    cloud.app.state.reconcilers.deployments.wait_stops(5)
    cloud.reconcile(2)
    assert cloud.api("GET", "/deployments/m").status_code == 404
    assert cloud.fake.workload_ids() == []
    with cloud.app.state.db.session() as s:
        assert s.scalars(select(Allocation)).all() == []
        assert s.scalars(select(Replica)).all() == []
    assert check_database(cloud.app.state.db, cloud.app.state.backends).ok
