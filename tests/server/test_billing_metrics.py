"""Metrics history: deployment traffic and node allocation in fixed-resolution buckets,
downsampled, pruned to a bounded size, served under ``/api/v1/metrics``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from neocloud.gateway.types import RequestRecord
from neocloud.server.db.tables import MetricPoint, Workspace
from neocloud.server.services import metrics_history as mh
from tests.server.helpers import Cloud


def _rec(ws: str, dep: str, t: float, latency: float, status: int = 200) -> RequestRecord:
    return RequestRecord(workspace_id=ws, token_id="t", deployment_id=dep, replica_id=None,
                         path="/v1/embeddings", status=status, latency_s=latency,
                         prompt_tokens=10, completion_tokens=2, started_at=t)


def test_quantiles_from_histogram() -> None:
    # 100 requests: 98 in (0.01, 0.025], 2 in (0.5, 1.0].
    hist = [0] * 17
    hist[4], hist[9] = 98, 2
    assert 10 < mh.quantile_ms(hist, 0.5) <= 25          # type: ignore[operator]
    assert 500 < mh.quantile_ms(hist, 0.99) <= 1000      # type: ignore[operator]
    assert mh.quantile_ms([0] * 17, 0.5) is None


def test_deployment_series_through_the_gateway_sink_and_api(cloud: Cloud) -> None:
    r = cloud.api("POST", "/deployments", json={"name": "emb", "service": "embeddings",
                                                 "shape": "cpu.small", "replicas": 0})
    dep = r.json()["id"]
    with cloud.app.state.db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
    now = time.time()
    t0 = (now - 100) // 10 * 10  # start of a 10-second bucket, 100 s ago
    usage = cloud.app.state.usage
    for i in range(20):
        usage.record(_rec(ws, dep, t0 + 0.1 * i, 0.02))
    for i in range(5):
        usage.record(_rec(ws, dep, t0 + 10 + i, 0.3, status=503 if i == 0 else 200))
    usage.flush()
    usage.record(_rec(ws, dep, t0 + 1, 0.02))  # a later flush adds to the same bucket
    usage.flush()
    r = cloud.api("GET", "/metrics/deployments/emb?window_s=600")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resolution_s"] == 10
    pts = {p["t"] - int(t0): p for p in body["points"]}
    assert pts[0]["requests"] == 21 and pts[0]["errors"] == 0
    assert pts[0]["prompt_tokens"] == 210 and pts[0]["completion_tokens"] == 42
    assert pts[0]["request_rate_per_s"] == 2.1
    assert 10 < pts[0]["latency_p50_ms"] <= 25
    assert pts[10]["requests"] == 5 and pts[10]["errors"] == 1
    assert 250 < pts[10]["latency_p99_ms"] <= 500
    coarse = cloud.api("GET", "/metrics/deployments/emb?window_s=86400&resolution_s=300").json()
    assert sum(p["requests"] for p in coarse["points"]) == 26
    assert cloud.api("GET", "/metrics/deployments/emb?window_s=172800&resolution_s=10"
                     ).status_code == 400
    tok = cloud.new_workspace("other", role="admin")
    assert cloud.api("GET", "/metrics/deployments/emb", token=tok).status_code == 404


def test_node_samples_once_per_bucket_and_prune_bounds_the_size(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=[{"type": "H100", "count": 8, "memory_mib": 81559}])
    cloud.api("POST", "/deployments", json={"name": "m", "service": "chat",
                                             "shape": "gpu.h100", "replicas": 3})
    cloud.reconcile(2)
    base = datetime.now(UTC).replace(microsecond=0)
    base = base - timedelta(seconds=base.timestamp() % 300)
    with cloud.app.state.db.session() as s:
        assert mh.sample_nodes(s, base) == 1
        assert mh.sample_nodes(s, base + timedelta(seconds=3)) == 0  # same 10-s bucket
        assert mh.sample_nodes(s, base + timedelta(seconds=10)) == 1
    r = cloud.api("GET", "/metrics/nodes?window_s=3600")
    series = r.json()["data"][0]
    assert series["node"] == "g1"
    assert [p["gpus_allocated"] for p in series["points"]][-2:] == [3.0, 3.0]
    assert series["points"][-1]["gpus"] == 8.0
    coarse = cloud.api("GET", "/metrics/nodes?window_s=86400&resolution_s=300").json()["data"][0]
    assert coarse["resolution_s"] == 300 and coarse["points"][-1]["gpus_allocated"] == 3.0
    # Two days of 10-second samples: pruning keeps one day of fine and all coarse buckets.
    with cloud.app.state.db.session() as s:
        for k in range(0, 2 * 86400, 10):
            s.add(MetricPoint(series="node", object_id="n" * 32, resolution_s=10,
                              t=int(base.timestamp()) - k, samples=1, latency_buckets=[]))
        s.flush()
        mh.prune(s, base)
        fine = s.scalar(select(func.count()).select_from(MetricPoint).where(
            MetricPoint.object_id == "n" * 32, MetricPoint.resolution_s == 10))
        assert fine == 8641  # [now - 1 day, now], both ends included
    size = cloud.api("GET", "/metrics/size").json()["rows"]
    assert size["node/10s"] >= 8641
