"""Prometheus metrics of the control plane, read from the database at scrape time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neocloud.server.autoscaling.scrape import SCRAPE_FAILURES, ScrapeFailures
from neocloud.server.db.batches import id_batches
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Replica
from neocloud.server.services.utilization import utilization


class ControlPlaneCollector:
    """Fleet capacity and allocation per pool and GPU type, objects by status, and the
    engine-metrics scrapes that failed.

    Metrics:
        neocloud_gpus{pool,gpu_type}: GPUs on schedulable nodes.
        neocloud_gpus_allocated{pool,gpu_type}: GPUs allocated to work.
        neocloud_cpu_millicores_allocated{pool,gpu_type}: CPU allocated to work.
        neocloud_replicas{status}, neocloud_deployments{status}: objects by status.
        neocloud_engine_scrape_failures_total{workspace,deployment}: reads of a ready
            replica's ``/metrics`` for engine-signal autoscaling that were skipped (no
            answer in time, an error status, text that does not parse) since the process
            started (``server.autoscaling.scrape``). ``workspace`` is the workspace id,
            ``deployment`` its name, as in the gateway's series. A deployment's series
            stays until the process restarts, even after it is deleted.

    Args:
        db: the control plane's database.
        scrape_failures: the failures to export (default: the process's
            :data:`~neocloud.server.autoscaling.scrape.SCRAPE_FAILURES`).
    """

    def __init__(self, db: Database, scrape_failures: ScrapeFailures | None = None):
        self.db = db
        self.scrape_failures = (scrape_failures if scrape_failures is not None
                                else SCRAPE_FAILURES)
        self._lock = threading.Lock()
        self._deployment_of: dict[str, tuple[str, str]] = {}
        """Replica id -> (workspace id, deployment name), kept once resolved so a count
        never moves or vanishes when rows go away."""

    def _resolve(self, s: Session, replica_ids: list[str]) -> None:
        """Learn the deployments of ``replica_ids`` (ids of another database, or of a
        replica whose deployment was deleted before any render, stay unknown)."""
        for chunk in id_batches(replica_ids):
            rows = s.execute(
                select(Replica.id, Deployment.workspace_id, Deployment.name)
                .join(Deployment, Deployment.id == Replica.deployment_id)
                .where(Replica.id.in_(chunk))).all()
            with self._lock:
                for rid, ws, name in rows:
                    self._deployment_of[rid] = (ws, name)

    def _scrape_failures(self, s: Session) -> CounterMetricFamily:
        counts = self.scrape_failures.snapshot()
        with self._lock:
            unknown = [rid for rid in counts if rid not in self._deployment_of]
        if unknown:
            self._resolve(s, unknown)
        totals: dict[tuple[str, str], int] = {}
        with self._lock:
            for rid, n in counts.items():
                key = self._deployment_of.get(rid)
                if key is not None:
                    totals[key] = totals.get(key, 0) + n
        family = CounterMetricFamily(
            "neocloud_engine_scrape_failures",
            "Reads of a replica's /metrics for engine autoscaling that were skipped.",
            labels=["workspace", "deployment"])
        for (ws, name), n in sorted(totals.items()):
            family.add_metric([ws, name], n)
        return family

    def collect(self) -> Iterator[Any]:
        with self.db.session() as s:
            util = utilization(s)
            reps = s.execute(select(Replica.status, func.count()).group_by(Replica.status)).all()
            deps = s.execute(
                select(Deployment.status, func.count()).group_by(Deployment.status)).all()
            scrape_failures = self._scrape_failures(s)
        gpus = GaugeMetricFamily("neocloud_gpus", "GPUs on schedulable nodes",
                                 labels=["pool", "gpu_type"])
        alloc = GaugeMetricFamily("neocloud_gpus_allocated", "GPUs allocated to work",
                                  labels=["pool", "gpu_type"])
        cpu = GaugeMetricFamily("neocloud_cpu_millicores_allocated",
                                "CPU allocated to work (millicores)", labels=["pool", "gpu_type"])
        for p in util.pools:
            gpus.add_metric([p.pool, p.gpu_type], p.gpus)
            alloc.add_metric([p.pool, p.gpu_type], p.allocated_gpus)
            cpu.add_metric([p.pool, p.gpu_type], p.allocated_cpu_milli)
        r = GaugeMetricFamily("neocloud_replicas", "Replicas by status", labels=["status"])
        for status, n in reps:
            r.add_metric([status], n)
        d = GaugeMetricFamily("neocloud_deployments", "Deployments by status",
                              labels=["status"])
        for status, n in deps:
            d.add_metric([status], n)
        yield from (gpus, alloc, cpu, r, d, scrape_failures)
