"""The metering pass, run by the metering thread (``neocloud-metering``, apart from the
reconcilers' thread so that placement never waits for it) every reconcile interval.

One copy at a time (a database-wide lock on PostgreSQL) it: writes storage records,
samples node allocation into the metrics history (once per 10-second bucket), enforces
budgets (threshold events, stopping running work of a workspace over a ``stop_running``
budget), closes invoices whose period is closable, and prunes the metrics history. Each
step commits on its own, so a failing step never undoes another.

Invariant of the node sample: **each node has at most one sample per 10-second bucket**
(the ``samples`` of its 10-second row is 0 or 1, and each coarser bucket counts one
sample per 10-second bucket), however many threads or control-plane copies sample at
once. The database keeps it (:func:`~neocloud.server.services.metrics_history.
sample_nodes`: a unique key on ``(series, object_id, resolution_s, t)``, and a copy that
loses the insert race adds only the nodes still missing). The loop keeps only the cost
down: it asks once per bucket, and a sample that failed (or did not commit) is asked for
again in the same bucket.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models import DeploymentUpdate
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Job, Pod
from neocloud.server.metering.storage import meter_storage
from neocloud.server.services import budgets, invoices, metrics_history

log = logging.getLogger(__name__)

#: Seconds between the slower steps (closing invoices, pruning the history).
SLOW_EVERY_S = 60.0


def stop_work(s: Session, workspace_id: str, reason: str) -> int:
    """Stop the workspace's running work: deployments go to zero replicas, jobs and pods
    are stopped (through the same service calls as a user's). Returns how many."""
    from neocloud.server.services import deployments as dep_svc
    from neocloud.server.services import jobs as job_svc
    from neocloud.server.services import pods as pod_svc

    n = 0
    for d in s.scalars(select(Deployment).where(Deployment.workspace_id == workspace_id,
                                                Deployment.replicas > 0,
                                                Deployment.status != "deleting")):
        dep_svc.update_deployment(s, workspace_id=workspace_id, name=d.name,
                                  spec=DeploymentUpdate(replicas=0))
        n += 1
    for j in s.scalars(select(Job).where(Job.workspace_id == workspace_id, Job.status.in_(
            ("queued", "retrying", "starting", "running")))):
        job_svc.stop_job(s, workspace_id=workspace_id, name=j.name)
        n += 1
    for p in s.scalars(select(Pod).where(Pod.workspace_id == workspace_id,
                                         Pod.desired == "running")):
        pod_svc.stop_pod(s, workspace_id=workspace_id, name=p.name, reason=reason)
        n += 1
    return n


class MeteringLoop:
    """Args:
        db: the database.
        usage_period_s: longest span of one storage record (``Settings.usage_period_s``).
    """

    def __init__(self, db: Database, *, usage_period_s: float):
        self.db = db
        self.usage_period_s = usage_period_s
        self._last_slow = -SLOW_EVERY_S
        self._last_storage = float("-inf")
        self._sampled_bucket = -1
        """The 10-second bucket (``t // 10``) this loop last sampled the nodes for (set
        once the sample committed)."""

    def run_once(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        with self.db.try_lock("neocloud-metering") as got:
            if not got:
                return
            steps = [("budgets", lambda s: budgets.enforce(s, now, stop_work))]
            bucket = int(now.timestamp()) // metrics_history.FINE
            if bucket != self._sampled_bucket:
                # once per 10-second bucket: a look at a taken bucket still reads every
                # node and allocation (seconds at 5,000 nodes)
                steps.insert(0, ("node samples",
                                 lambda s: metrics_history.sample_nodes(s, now)))
            if time.monotonic() - self._last_storage >= self.usage_period_s:
                self._last_storage = time.monotonic()
                steps.insert(0, ("storage", lambda s: meter_storage(
                    s, now, period_s=self.usage_period_s)))
            if time.monotonic() - self._last_slow >= SLOW_EVERY_S:
                self._last_slow = time.monotonic()
                steps += [("invoices", lambda s: invoices.close_due(s, now)),
                          ("metrics prune", lambda s: metrics_history.prune(s, now))]
            for name, step in steps:
                try:
                    with self.db.session() as s:
                        step(s)
                except Exception:
                    log.exception("metering step %s failed", name)
                    continue
                if name == "node samples":  # committed: this bucket is done
                    self._sampled_bucket = bucket
