"""Autoscaling ticks of a deployment.

A deployment with ``autoscaling`` settings gets one sample of its load per pass (the
gateway's in-flight, held and arrival counters; for an engine signal also the ready
replicas' ``/metrics``, read outside any transaction by ``server.autoscaling.scrape``)
in a window kept in memory; the pure policy of ``server.autoscaling`` decides the replica
count, and each change is written with an event carrying the metric values before it is
acted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models.autoscaling import AutoscalingConfig
from neocloud.models.deployments import DeploymentStatus, ReplicaStatus
from neocloud.server.autoscaling import (
    ArrivalRate,
    Sample,
    SampleWindow,
    TargetState,
    TargetTrackingPolicy,
    event_reason,
)
from neocloud.server.autoscaling.scrape import SCRAPED_SIGNALS, ScrapeTarget
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.reconcilers.core import lock_row, now
from neocloud.server.reconcilers.deployments.base import ReconcilerBase
from neocloud.server.services import events
from neocloud.server.services.deployments import autoscaling_of


@dataclass
class Scaler:
    """What the reconciler keeps in memory per autoscaled deployment (lost on a restart,
    which is safe: the policy then waits its delays again before scaling down)."""

    config: AutoscalingConfig
    policy: TargetTrackingPolicy
    window: SampleWindow
    rate: ArrivalRate = field(default_factory=ArrivalRate)
    state: TargetState | None = None
    scrape_failures: int = 0
    """Replica ``/metrics`` reads skipped so far (no answer in time, an error, bad text)."""


class Autoscaling(ReconcilerBase):
    """Samples the load of autoscaled deployments and writes the policy's decisions."""

    def _autoscale(self, dep_id: str) -> None:
        """One autoscaling tick of a deployment: a sample of its load into its window, the
        policy's decision, and (when it changes the count) the new count and an event with
        the metric values, committed before any replica is started or stopped."""
        with self.db.session() as s:
            dep = s.get(Deployment, dep_id)
            config = autoscaling_of(dep) if dep is not None else None
            if dep is None or config is None or dep.status == DeploymentStatus.deleting:
                self._scalers.pop(dep_id, None)
                return
            current = dep.replicas
            ready = sum(1 for st in s.scalars(
                select(Replica.status).where(Replica.deployment_id == dep_id))
                if st == ReplicaStatus.ready)
            targets = (self._metrics_targets(s, dep_id) if config.signal in SCRAPED_SIGNALS
                       else [])
        sc = self._scalers.get(dep_id)
        if sc is None or sc.config != config:
            policy = TargetTrackingPolicy(config)
            interval = max(self.settings.reconcile_interval_s, 0.1)
            sc = Scaler(config=config, policy=policy,
                         window=SampleWindow(keep_s=policy.history_s + 2 * interval))
            sc.state = policy.initial_state()
            self._scalers[dep_id] = sc
        at = self.clock()
        if sc.window.samples() and at < sc.window.samples()[-1].at:
            return
        st = self.stats(dep_id) if self.stats is not None else None
        engine = self.scraper.scrape(targets)  # outside any transaction; bounded in time
        sc.scrape_failures += len(engine.failed)
        sample = engine.into(Sample(
            at=at, ready_replicas=ready,
            in_flight=st.in_flight if st else 0, held=st.held if st else 0,
            requests_per_s=sc.rate.update(at, st.requests_total) if st else 0.0))
        sc.window.add(sample)
        assert sc.state is not None
        decision, sc.state = sc.policy.decide(sc.window.samples(), at, current, sc.state)
        if not decision.changed:
            return
        with self.db.session() as s:
            dep = lock_row(s, Deployment, dep_id)
            if dep is None or dep.status == DeploymentStatus.deleting \
                    or dep.replicas != current:
                return  # changed meanwhile (a user's scale, a wake): decide again next tick
            dep.replicas = decision.desired
            dep.updated_at = now()
            events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                          object_id=dep.id, reason=event_reason(decision.reason),
                          message=decision.message())

    def _metrics_targets(self, s: Session, dep_id: str) -> list[ScrapeTarget]:
        """The ``/metrics`` URLs of the deployment's ready replicas with a port."""
        rows = s.execute(select(Replica, Node).join(Node, Node.id == Replica.node_id).where(
            Replica.deployment_id == dep_id, Replica.status == ReplicaStatus.ready.value,
            Replica.port.is_not(None))).all()
        return [ScrapeTarget(r.id, self._url(n, r, "/metrics")) for r, n in rows]
