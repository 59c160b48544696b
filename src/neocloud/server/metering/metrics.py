"""Prometheus metrics of the control plane, read from the database at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Replica
from neocloud.server.services.utilization import utilization


class ControlPlaneCollector:
    """Fleet capacity and allocation per pool and GPU type, and objects by status."""

    def __init__(self, db: Database):
        self.db = db

    def collect(self) -> Iterator[Any]:
        with self.db.session() as s:
            util = utilization(s)
            reps = s.execute(select(Replica.status, func.count()).group_by(Replica.status)).all()
            deps = s.execute(
                select(Deployment.status, func.count()).group_by(Deployment.status)).all()
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
        yield from (gpus, alloc, cpu, r, d)
