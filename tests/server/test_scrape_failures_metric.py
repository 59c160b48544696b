"""Engine-metrics scrapes that fail are exported on the control plane's ``/metrics`` as
``neocloud_engine_scrape_failures_total{workspace,deployment}`` (both databases)."""

from __future__ import annotations

import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from neocloud.server.autoscaling.scrape import EngineScraper, ScrapeFailures, ScrapeTarget
from neocloud.server.db.tables import Replica, Workspace
from tests.server.helpers import Cloud
from tests.server.test_autoscaling_scrape import KV
from tests.unit.autoscaling.metrics_server import MetricsServer, engine_text


def _failures(cloud: Cloud) -> dict[tuple[str, str], float]:
    r = cloud.client.get("/metrics", headers=cloud.h())  # an operator token
    assert r.status_code == 200, r.text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == "neocloud_engine_scrape_failures_total":
                out[sample.labels["workspace"], sample.labels["deployment"]] = sample.value
    return out


def test_scraper_counts_each_skipped_replica() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "bad":
            return httpx.Response(500)
        if request.url.host == "garbled":
            return httpx.Response(200, text="neocloud_engine_requests_waiting{ 1\n")
        return httpx.Response(200, text=engine_text(waiting=1))

    store = ScrapeFailures()
    scraper = EngineScraper(transport=httpx.MockTransport(answer), failures=store)
    try:
        targets = [ScrapeTarget("r-ok", "http://ok/metrics"),
                   ScrapeTarget("r-bad", "http://bad/metrics"),
                   ScrapeTarget("r-garbled", "http://garbled/metrics")]
        for _ in range(3):
            totals = scraper.scrape(targets)
            assert totals.answered == 1 and sorted(totals.failed) == ["r-bad", "r-garbled"]
        assert store.snapshot() == {"r-bad": 3, "r-garbled": 3}
        store.add([])
        assert store.snapshot() == {"r-bad": 3, "r-garbled": 3}
    finally:
        scraper.close()


def test_control_plane_metrics_count_failed_scrapes_by_deployment(cloud: Cloud) -> None:
    rec = cloud.app.state.reconcilers.deployments
    rec.stats = lambda _dep_id: None
    clock = [5000.0]
    rec.clock = lambda: clock[0]

    def tick(times: int) -> None:
        for _ in range(times):
            clock[0] += 1.0
            cloud.reconcile(1)

    cloud.add_fake_node("n1")
    ids = {}
    for name in ("deaf", "fine"):
        r = cloud.api("POST", "/deployments", json={"name": name, "service": "embeddings",
                                                    "replicas": 1, "autoscaling": KV})
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    tick(2)
    healthy = MetricsServer(engine_text(running=0, waiting=0, kv_usage=0.3))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])  # nothing listens there once closed
    try:
        with cloud.app.state.db.session() as s:
            ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
            for rep in s.scalars(select(Replica).where(Replica.status == "ready")):
                rep.port = closed if rep.deployment_id == ids["deaf"] else healthy.port
        # The fake nodes' replicas had no server at first: each deployment counted what
        # its scaler counted.
        before = _failures(cloud)
        for name in ("deaf", "fine"):
            assert before.get((ws, name), 0) == rec._scalers[ids[name]].scrape_failures
        tick(3)
        counted = rec._scalers[ids["deaf"]].scrape_failures
        got = _failures(cloud)
        assert got[ws, "deaf"] == counted >= before.get((ws, "deaf"), 0) + 3
        assert got.get((ws, "fine"), 0) == before.get((ws, "fine"), 0)
        assert healthy.requests >= 3
        # Once the replica answers, the counter keeps its value (a counter never drops).
        with cloud.app.state.db.session() as s:
            for rep in s.scalars(select(Replica).where(Replica.deployment_id == ids["deaf"])):
                rep.port = healthy.port
        tick(2)
        assert _failures(cloud)[ws, "deaf"] == counted
    finally:
        healthy.close()
    text = cloud.client.get("/metrics", headers=cloud.h()).text
    assert "# TYPE neocloud_engine_scrape_failures_total counter" in text
