"""Console page load with 100 deployments and 30 days of metrics history, and the size of
the metrics history after a day of load.

    .venv/bin/python benchmarks/console/page_load.py [--deployments 100] [--days 30]

Builds a control plane in-process on SQLite (fake backend), creates the deployments,
writes a day of gateway traffic through the metrics-history code path
(``metrics_history.record_requests``, one request per deployment every 10 s) and the
other 29 days as 5-minute buckets, then times the console's deployments list, one
deployment page and its 30-day chart data, each median of several loads, beside the
plain ``/healthz`` round trip measured in the same run. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from neocloud.gateway.types import RequestRecord
from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.tables import Deployment, MetricPoint, Workspace
from neocloud.server.services import metrics_history as mh
from neocloud.server.settings import Settings


def _median_ms(fn, n: int = 7) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, default=100)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp())
    db_file = home / "neocloud.db"
    settings = Settings(home=home / "h", database_url=f"sqlite:///{db_file}",
                        register_local_node=False)
    app = create_app(settings, backends={"fake": FakeBackend()}, run_reconcilers=False)
    with TestClient(app) as client:
        token = bootstrap(app.state.db).token
        h = {"Authorization": f"Bearer {token}"}
        for i in range(args.deployments):
            r = client.post("/api/v1/deployments", headers=h, json={
                "name": f"d{i:03d}", "service": "embeddings", "shape": "cpu.small",
                "replicas": 0})
            assert r.status_code == 201, r.text
        with app.state.db.session() as s:
            ws = s.scalars(select(Workspace.id)).first()
            deps = list(s.scalars(select(Deployment.id)))
        now = int(time.time())
        # A day of traffic through the real code path: one request per deployment per 10 s.
        t_write = time.perf_counter()
        day = 86_400
        batch: list[RequestRecord] = []
        for t in range(now - day, now, 10):
            for dep in deps:
                batch.append(RequestRecord(
                    workspace_id=ws or "", token_id="t", deployment_id=dep, replica_id=None,
                    path="/v1/embeddings", status=200, latency_s=0.02, prompt_tokens=12,
                    completion_tokens=0, started_at=float(t)))
            if len(batch) >= 60_000:
                with app.state.db.session() as s:
                    mh.record_requests(s, batch)
                batch = []
        if batch:
            with app.state.db.session() as s:
                mh.record_requests(s, batch)
        write_s = time.perf_counter() - t_write
        with app.state.db.session() as s:
            day_rows = {f"{r}s": int(n) for r, n in s.execute(
                select(MetricPoint.resolution_s, func.count()).group_by(
                    MetricPoint.resolution_s)).all()}
            try:
                day_bytes = int(s.execute(text(
                    "SELECT SUM(pgsize) FROM dbstat WHERE name LIKE '%metric_points%'"
                )).scalar() or 0)
            except Exception:
                day_bytes = -1
        # The other days: 5-minute buckets only (their 10-second ones are pruned).
        with app.state.db.session() as s:
            rows = []
            start = now - args.days * day
            for dep in deps:
                for t in range(start - start % 300, now - day - (now - day) % 300, 300):
                    rows.append({"series": "deployment", "object_id": dep, "workspace_id": ws,
                                 "resolution_s": 300, "t": t, "requests": 30, "errors": 0,
                                 "prompt_tokens": 360, "completion_tokens": 0,
                                 "latency_sum_s": 0.6, "latency_buckets": [0, 0, 0, 0, 30],
                                 "samples": 0, "gpus": 0.0, "gpus_allocated": 0.0,
                                 "cpu_milli": 0.0, "cpu_allocated_milli": 0.0})
            s.execute(MetricPoint.__table__.insert(), rows)
            mh.prune(s, __import__("datetime").datetime.now(__import__("datetime").UTC))
            total_rows = int(s.scalar(select(func.count()).select_from(MetricPoint)) or 0)
        r = client.post("/ui/login", data={"token": token}, follow_redirects=False)
        assert r.status_code == 303
        figures = {
            "deployments": args.deployments, "days": args.days,
            "healthz_ms": round(_median_ms(lambda: client.get("/healthz")), 2),
            "ui_deployments_ms": round(_median_ms(lambda: client.get("/ui/deployments")), 1),
            "ui_deployment_page_ms": round(_median_ms(
                lambda: client.get("/ui/deployments/d050")), 1),
            "ui_chart_30d_ms": round(_median_ms(lambda: client.get(
                f"/ui/data/deployments/d050?window_s={args.days * day}")), 1),
            "ui_chart_1h_ms": round(_median_ms(lambda: client.get(
                "/ui/data/deployments/d050?window_s=3600")), 1),
            "metrics_rows_after_a_day": day_rows,
            "metrics_rows_per_deployment_day": round(sum(day_rows.values()) / len(deps), 1),
            "metrics_bytes_after_a_day": day_bytes,
            "metrics_rows_with_30_days": total_rows,
            "write_a_day_s": round(write_s, 1),
            "db_file_mib": round(os.path.getsize(db_file) / 2**20, 1),
        }
        assert client.get("/ui/deployments").status_code == 200
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
