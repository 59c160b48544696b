"""Metrics history: deployment traffic and node allocation in fixed-resolution buckets,
downsampled, pruned to a bounded size, served under ``/api/v1/metrics``."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from neocloud.gateway.types import RequestRecord
from neocloud.models import NodeCreate
from neocloud.server.db.tables import MetricPoint, Workspace
from neocloud.server.routers import metrics as metrics_router
from neocloud.server.services import metrics_history as mh
from neocloud.server.services import nodes as node_svc
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
    # The start of the last closed 5-minute bucket (10 to 300 s before the open 10-second
    # one): every request below lies in closed buckets of both resolutions.
    t0 = now // 300 * 300 - 300
    usage = cloud.app.state.usage
    for i in range(20):
        usage.record(_rec(ws, dep, t0 + 0.1 * i, 0.02))
    for i in range(5):
        usage.record(_rec(ws, dep, t0 + 10 + i, 0.3, status=503 if i == 0 else 200))
    usage.flush()
    usage.record(_rec(ws, dep, t0 + 1, 0.02))  # a later flush adds to the same bucket
    usage.flush()
    r = cloud.api("GET", "/metrics/deployments/emb?window_s=900")
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


@pytest.mark.parametrize("past_boundary_s", [2, 150])
def test_node_samples_once_per_bucket_and_prune_bounds_the_size(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch, past_boundary_s: int) -> None:
    """Two samples in one 5-minute bucket, read back at any time of day: the API's clock
    is set ``past_boundary_s`` seconds after a 5-minute boundary (2 s: the samples were
    once taken in the bucket of that boundary, the second one 10 s ahead of the clock,
    outside the window the API reads, so the test failed in the first 10 s of every five
    minutes)."""
    clock = time.time() // 300 * 300 + past_boundary_s
    monkeypatch.setattr(metrics_router, "time", SimpleNamespace(time=lambda: clock))
    cloud.add_fake_node("g1", gpus=[{"type": "H100", "count": 8, "memory_mib": 81559}])
    cloud.api("POST", "/deployments", json={"name": "m", "service": "chat",
                                             "shape": "gpu.h100", "replicas": 3})
    cloud.reconcile(2)
    # the start of the last closed 5-minute bucket: both samples lie in the past
    base = datetime.fromtimestamp(clock // 300 * 300 - 300, UTC)
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


def test_two_threads_sampling_one_bucket_sample_each_node_once(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two samplers (the metering thread and another copy) that write one bucket at
    once: each node still has one sample in its 10-second and its
    5-minute bucket, and the two report one sample per node between them."""
    for k in range(5):
        cloud.add_fake_node(f"n{k}")
    both_read = threading.Barrier(2, timeout=30)
    waited: set[int] = set()
    make = mh._node_rows

    def after_both_read(*args: Any) -> Any:
        if threading.get_ident() not in waited:  # both write the bucket at once
            waited.add(threading.get_ident())
            both_read.wait()
        return make(*args)

    monkeypatch.setattr(mh, "_node_rows", after_both_read)
    now = datetime.fromtimestamp(time.time() // 300 * 300 - 300, UTC)
    written: list[int] = []
    errors: list[BaseException] = []

    def sample() -> None:
        try:
            with cloud.app.state.db.session() as s:
                written.append(mh.sample_nodes(s, now))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=sample) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(written) == [0, 5]
    with cloud.app.state.db.session() as s:
        rows = s.execute(select(MetricPoint.resolution_s, MetricPoint.samples).where(
            MetricPoint.series == "node")).all()
    assert sorted(rows) == [(10, 1)] * 5 + [(300, 1)] * 5



def test_samplers_racing_over_many_buckets_never_deadlock_nor_count_twice(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three samplers (the metering threads of three copies) take the same three
    10-second buckets, their inserts of each bucket started at once: no deadlock (their
    rows are written in node id order), every node has one sample per 10-second bucket,
    its 5-minute bucket the three samples (added only by the sampler whose 10-second row
    went in), and the samplers report one sample per node and bucket between them."""
    nodes = 40
    with cloud.app.state.db.session() as s:
        for k in range(nodes):  # created in reverse name order: ids in no name order
            node_svc.create_node(s, spec=NodeCreate.model_validate({
                "name": f"n{nodes - k:03d}", "cpu_milli": 8000, "memory_mib": 16384,
                "gpus": [{"type": "H100", "count": 2, "memory_mib": 81559}],
                "backend": "fake"}))
    samplers = 3
    barriers = {k: threading.Barrier(samplers, timeout=30) for k in range(3)}
    waited: set[tuple[int, int]] = set()
    make = mh._node_rows
    base = datetime.fromtimestamp(time.time() // 300 * 300 - 300, UTC)

    def after_all_read(res: int, t: int, ids: Any = None) -> Any:
        k = (t - int(base.timestamp())) // 10
        key = (threading.get_ident(), k)
        if res == mh.FINE and key not in waited:  # every sampler writes the bucket at once
            waited.add(key)
            barriers[k].wait()
        return make(res, t, ids)

    monkeypatch.setattr(mh, "_node_rows", after_all_read)
    written: dict[int, list[int]] = {k: [] for k in range(3)}
    errors: list[BaseException] = []

    def sample() -> None:
        try:
            for k in range(3):
                with cloud.app.state.db.session() as s:
                    written[k].append(mh.sample_nodes(s, base + timedelta(seconds=10 * k)))
        except BaseException as e:  # reported below
            errors.append(e)
            for b in barriers.values():
                b.abort()

    threads = [threading.Thread(target=sample) for _ in range(samplers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert {k: sum(v) for k, v in written.items()} == {0: nodes, 1: nodes, 2: nodes}
    with cloud.app.state.db.session() as s:
        rows = s.execute(select(MetricPoint.resolution_s, MetricPoint.samples,
                                MetricPoint.gpus).where(MetricPoint.series == "node")).all()
    assert sorted(rows) == [(10, 1, 2.0)] * (3 * nodes) + [(300, 3, 6.0)] * nodes


def _series(cloud: Cloud, query: str) -> dict[str, Any]:
    r = cloud.api("GET", f"/metrics/deployments/emb?{query}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _emb(cloud: Cloud) -> tuple[str, str]:
    """A deployment ``emb`` of the default workspace: (workspace id, deployment id); and
    not too close to the end of a 10-second bucket, so that the test's buckets are the
    server's."""
    if time.time() % 10 > 8:
        time.sleep(10.05 - time.time() % 10)
    dep = cloud.api("POST", "/deployments", json={
        "name": "emb", "service": "embeddings", "shape": "cpu.small", "replicas": 0}).json()
    with cloud.app.state.db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
    return ws, dep["id"]


def test_every_bucket_of_the_window_is_a_point_empty_ones_zero_with_no_latency(
        cloud: Cloud) -> None:
    """A burst, then idle time: the buckets in between read zero requests (a chart drops
    to zero, it does not join the burst to the next one), and latency is a gap there."""
    ws, dep = _emb(cloud)
    now = time.time()
    t_open = int(now) // 10 * 10
    burst, later = t_open - 300, t_open - 100
    usage = cloud.app.state.usage
    for i in range(30):
        usage.record(_rec(ws, dep, burst + 0.1 * i, 0.02))
    usage.record(_rec(ws, dep, later + 1, 0.02))
    usage.flush()
    body = _series(cloud, "window_s=900")
    pts = body["points"]
    assert body["end"] == t_open and body["start"] == t_open - 900
    assert [p["t"] for p in pts] == list(range(t_open - 900, t_open, 10))  # the whole window
    by_t = {p["t"]: p for p in pts}
    assert by_t[burst]["requests"] == 30 and by_t[burst]["request_rate_per_s"] == 3.0
    idle = [by_t[t] for t in range(burst + 10, later, 10)]
    assert idle and all(p["requests"] == 0 and p["request_rate_per_s"] == 0.0 for p in idle)
    assert all(p["latency_p50_ms"] is None and p["latency_p99_ms"] is None for p in idle)
    assert by_t[later]["requests"] == 1
    # The 30-day view: 5-minute buckets over the whole window, zeros where nothing ran.
    month = _series(cloud, f"window_s={30 * 86400}")
    assert month["resolution_s"] == 300 and len(month["points"]) == 30 * 86400 // 300
    assert month["end"] - month["start"] == 30 * 86400


def test_the_bucket_still_open_is_left_out_so_a_steady_rate_reads_steady(
        cloud: Cloud) -> None:
    """4.7 requests/s for 30 s, the last few seconds in the 10-second bucket still open:
    every point reads 4.7/s; the open bucket (whose count is a part of 10 s) is not
    shown at a tenth of its rate."""
    ws, dep = _emb(cloud)
    now = time.time()
    t_open = int(now) // 10 * 10
    usage = cloud.app.state.usage
    for k in range(3):  # three whole closed buckets
        for i in range(47):
            usage.record(_rec(ws, dep, t_open - 30 + 10 * k + i * 10 / 47, 0.001))
    for i in range(int((now - t_open) * 4.7)):  # the open bucket, so far
        usage.record(_rec(ws, dep, t_open + i / 4.7, 0.0))
    usage.record(_rec(ws, dep, t_open, 0.0))
    usage.flush()
    pts = _series(cloud, "window_s=900")["points"]
    assert pts[-1]["t"] == t_open - 10  # the last closed bucket
    assert [p["request_rate_per_s"] for p in pts[-3:]] == [4.7, 4.7, 4.7]
    assert all(p["t"] < t_open for p in pts)
