"""GPU time held while a deployment crash-loops is billed: the replica keeps its GPU
through every restart, and its usage runs from its first start, not from its last one
(both databases)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from neocloud.server.db.tables import Allocation, Replica, UsageRecord
from tests.server.helpers import Cloud

HELD_S = 100.0
"""Seconds the replica is made to have held its GPU before it starts crashing."""


def _replica(cloud: Cloud) -> Replica:
    with cloud.app.state.db.session() as s:
        return s.scalars(select(Replica)).one()


def _bill_gpu_seconds(cloud: Cloud, name: str) -> float:
    r = cloud.api("GET", "/usage")
    assert r.status_code == 200, r.text
    return sum(ln["gpu_seconds"] for ln in r.json()["lines"]
               if ln["kind"] == "replica" and ln["name"] == name)


def test_gpu_time_while_crash_looping_appears_in_usage(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=[{"type": "H100", "count": 1, "memory_mib": 81559}])
    r = cloud.api("POST", "/deployments", json={"name": "loop", "service": "embeddings",
                                                 "shape": "gpu.h100"})
    assert r.status_code == 201, r.text
    cloud.reconcile(2)
    rid = _replica(cloud).id
    with cloud.app.state.db.session() as s:  # it has held its GPU for HELD_S seconds
        row = s.get(Replica, rid)
        assert row is not None and row.started_at is not None and row.metered_until is None
        row.started_at = row.started_at - timedelta(seconds=HELD_S)
        s.commit()
    for _ in range(3):
        cloud.fake.write(rid, "RuntimeError: CUDA error: out of memory\n")
        cloud.fake.crash(rid, exit_code=1)
        cloud.reconcile(1)  # seen failed
        cloud.reconcile(1)  # restarted (no back-off in these tests)
    rep = _replica(cloud)
    assert rep.restarts >= 3
    with cloud.app.state.db.session() as s:  # the GPU stayed allocated all along
        assert s.scalars(select(Allocation).where(Allocation.owner_id == rid)).one()
    # The bill so far (records plus the open stretch) has the whole time since the first
    # start, not only the time since the last restart.
    assert _bill_gpu_seconds(cloud, "loop") >= HELD_S
    # Stopping it writes the records: they hold that time too, as GPU-seconds of its shape.
    assert cloud.api("DELETE", "/deployments/loop").status_code in (200, 202, 204)
    for _ in range(5):
        cloud.reconcile(1)
        cloud.app.state.reconcilers.deployments.wait_stops(5)
    with cloud.app.state.db.session() as s:
        gpu_s = s.scalar(select(func.sum(UsageRecord.gpu_seconds))
                         .where(UsageRecord.object_id == rid)) or 0.0
        shapes = set(s.scalars(select(UsageRecord.shape).where(UsageRecord.object_id == rid)))
    assert gpu_s >= HELD_S and shapes == {"gpu.h100"}
