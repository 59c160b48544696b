"""The deployment reconciler scales on an engine signal read from its replicas' ``/metrics``
(real HTTP servers on loopback standing in for the replicas of simulated nodes; both
databases): a KV-cache target scales up from the scraped values, summed over replicas,
and a replica that does not answer is skipped, not read as idle."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from neocloud.server.db.tables import Replica
from tests.server.helpers import Cloud
from tests.unit.autoscaling.metrics_server import MetricsServer, engine_text

KV = {"min_replicas": 1, "max_replicas": 4, "signal": "kv_cache_use", "target": 0.5,
      "window_s": 4, "panic_window_s": 2, "scale_up_delay_s": 0, "scale_down_delay_s": 10,
      "scale_to_zero_delay_s": 20}


@pytest.fixture
def servers() -> Iterator[list[MetricsServer]]:
    made: list[MetricsServer] = []
    yield made
    for s in made:
        s.close()


def _dep(cloud: Cloud, name: str) -> dict[str, Any]:
    r = cloud.api("GET", f"/deployments/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def _point(cloud: Cloud, replica_id: str, port: int) -> None:
    """Make the replica's ``/metrics`` the given loopback server."""
    with cloud.app.state.db.session() as s:
        r = s.get(Replica, replica_id)
        assert r is not None
        r.port = port


def _ready_ids(cloud: Cloud, dep_id: str) -> list[str]:
    with cloud.app.state.db.session() as s:
        return sorted(s.scalars(select(Replica.id).where(
            Replica.deployment_id == dep_id, Replica.status == "ready")))


def test_kv_cache_target_scales_up_from_scraped_metrics(
        cloud: Cloud, servers: list[MetricsServer]) -> None:
    rec = cloud.app.state.reconcilers.deployments
    rec.stats = lambda _dep_id: None  # no gateway figures: only the scraped ones count
    clock = [1000.0]
    rec.clock = lambda: clock[0]

    def tick(times: int) -> None:
        for _ in range(times):
            clock[0] += 1.0
            cloud.reconcile(1)

    cloud.add_fake_node("n1")
    r = cloud.api("POST", "/deployments", json={"name": "kv", "service": "embeddings",
                                                "replicas": 1, "autoscaling": KV})
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    tick(2)
    (first,) = _ready_ids(cloud, dep_id)

    # Nothing listens on the replica's port: skipped and counted, the count is kept.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])
    _point(cloud, first, closed)
    tick(3)
    assert _dep(cloud, "kv")["replicas"] == 1
    assert rec._scalers[dep_id].scrape_failures >= 3

    # 0.9 of the cache in use against a target of 0.5 per replica: 2 replicas.
    hot = MetricsServer(engine_text(running=6, waiting=2, kv_usage=0.9))
    servers.append(hot)
    _point(cloud, first, hot.port)
    tick(2)
    assert hot.requests >= 1
    dep = _dep(cloud, "kv")
    assert dep["replicas"] == 2, dep
    ups = [e for e in cloud.api("GET", "/deployments/kv/events").json()["data"]
           if e["reason"] in ("ScaleUp", "BurstScaleUp")]
    assert ups and "kv_cache_use" in ups[0]["message"] and "1 -> 2" in ups[0]["message"]

    # Both replicas at 0.9: 1.8 in total asks for 4 (the sum over replicas is read).
    tick(2)
    ids = _ready_ids(cloud, dep_id)
    assert len(ids) == 2
    (second,) = [i for i in ids if i != first]
    other = MetricsServer(engine_text(running=6, waiting=2, kv_usage=0.9))
    servers.append(other)
    _point(cloud, second, other.port)
    tick(5)
    assert other.requests >= 1
    assert _dep(cloud, "kv")["replicas"] == 4


def test_a_gateway_signal_reads_no_replica_metrics(cloud: Cloud,
                                                   servers: list[MetricsServer]) -> None:
    rec = cloud.app.state.reconcilers.deployments
    rec.stats = lambda _dep_id: None
    clock = [1000.0]
    rec.clock = lambda: clock[0]
    cloud.add_fake_node("n1")
    r = cloud.api("POST", "/deployments", json={
        "name": "plain", "service": "embeddings", "replicas": 1,
        "autoscaling": {**KV, "signal": "in_flight", "target": 2}})
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    for _ in range(2):
        clock[0] += 1.0
        cloud.reconcile(1)
    (rid,) = _ready_ids(cloud, dep_id)
    hot = MetricsServer(engine_text(running=8, waiting=8, kv_usage=1.0))
    servers.append(hot)
    _point(cloud, rid, hot.port)
    for _ in range(3):
        clock[0] += 1.0
        cloud.reconcile(1)
    assert hot.requests == 0
    assert _dep(cloud, "plain")["replicas"] == 1
