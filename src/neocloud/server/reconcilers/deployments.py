"""The deployment reconciler: makes running replicas match each deployment row.

Each pass, per deployment: fetch and lock its row (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several control-plane copies share the work), decide, write the new
replica states, commit, and only then act on the backend (start or stop a process), then
write what the backend answered. A restart at any point finds every replica in the
database with the handle of its process: running ones are adopted, never started twice.

Replica life: ``pending`` (no node; the scheduler's reason is kept) → ``starting``
(allocation written, process started) → ``ready`` (``/ready`` answered 200) → ``stopping``
→ ``stopped``. A process that exits becomes ``failed`` and is started again on the same
allocation after an exponential back-off (``base × 2^restarts``, capped).

Rolling update: a change of engine, service, model, shape or env raises the generation; new
replicas start first (at most ``max_surge``, default 1, above the desired count) and old
ones stop only while at least ``replicas - max_unavailable`` (default: all) stay ready;
old replicas not ready yet are stopped at once.

Graceful drain: a replica to stop is written ``stopping`` and the route table rebuilt
*before* the process is told to stop, so the gateway sends it no new request; then the
backend stops it with the deployment's ``drain_timeout_s`` of grace (SIGTERM, the
serving runtime finishes its in-flight requests, SIGKILL only after the timeout). Each
stop runs in a daemon thread of its own, so a long drain never holds up the pass of other
deployments; a replica is ``stopped`` (its allocation released) when its process is gone.
Scale-in picks replicas that are not ready first, then the idle ones, then the least
loaded (in-flight requests at the gateway), newest first on a tie.

Autoscaling: a deployment with ``autoscaling`` settings gets one sample of its load per
pass (the gateway's in-flight, held and arrival counters; for an engine signal also the
ready replicas' ``/metrics``, read outside any transaction by
``server.autoscaling.scrape``) in a window kept in memory; the
pure policy of ``server.autoscaling`` decides the replica count, and each change is
written with an event carrying the metric values before it is acted on.

Placement, status changes and process starts go through the reconciler core
(:mod:`neocloud.server.reconcilers.core`), which keeps the invariants written there: a
replica is placed only while its deployment wants it (not ``deleting``, same
generation), and a DELETE that lands while a replica starts wins.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from neocloud.errors import NeocloudError
from neocloud.gateway.stats import DeploymentStats
from neocloud.models.autoscaling import AutoscalingConfig
from neocloud.models.deployments import DeploymentStatus, Engine, ReasonCode, ReplicaStatus
from neocloud.models.inventory import NodeStatus
from neocloud.server.autoscaling import (
    ArrivalRate,
    Sample,
    SampleWindow,
    TargetState,
    TargetTrackingPolicy,
    event_reason,
)
from neocloud.server.autoscaling.scrape import SCRAPED_SIGNALS, EngineScraper, ScrapeTarget
from neocloud.server.backends.base import Backend, WorkloadSpec
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Allocation, Deployment, Node, Replica, Shape
from neocloud.server.reconcilers.core import (
    NodeVerdict,
    ReconcilerThread,
    StaleStatus,
    Waiting,
    backend_of,
    backoff_s,
    free_port,
    free_port_on,
    lock_for_placement,
    lock_row,
    meter,
    node_lost,
    now,
    place,
    reconcile_each,
    reconcile_locked,
    release_ended,
    set_status,
    start_process,
)
from neocloud.server.services import events, placement
from neocloud.server.services import secrets as secret_svc
from neocloud.server.services.deployments import autoscaling_of
from neocloud.server.settings import Settings

log = logging.getLogger(__name__)

LIVE = ("pending", "starting", "ready", "failed")
"""Replica states that count towards a deployment's replicas."""

CRASH_LOOP_RESTARTS = 3
"""A deployment whose every replica crashed this many times in a row, with none ready, is
``failed`` (it keeps being restarted with back-off, and turns ready when one succeeds)."""

DRAIN_MARGIN_S = 5.0
"""Seconds the control plane waits beyond a deployment's drain timeout before SIGKILL: the
serving runtime is given the drain timeout itself (``NEOCLOUD_GRACE_PERIOD_S``), so it
ends cut streams with its own final error event before the kill."""

STOP_WAIT_S = 0.2
"""Seconds a pass waits for the stops it started before it goes on (a stop that takes
longer finishes in the background and is seen by a later pass)."""

__all__ = ["CRASH_LOOP_RESTARTS", "LIVE", "DeploymentReconciler", "ReconcilerThread",
           "backoff_s", "free_port", "kv_cache_gib", "now", "preempt_replica"]


def kv_cache_gib(memory_mib: int | None) -> float:
    """The KV cache of an engine ``vllm`` CPU replica, GiB: half the shape's memory
    (``memory_mib`` MiB), rounded down to a whole GiB, at least 1 (the rest holds the
    weights, activations and the server; vLLM's ``VLLM_CPU_KVCACHE_SPACE``)."""
    if not memory_mib:
        return 1.0
    return float(max(1, memory_mib // 2 // 1024))


@dataclass
class _Scaler:
    """What the reconciler keeps in memory per autoscaled deployment (lost on a restart,
    which is safe: the policy then waits its delays again before scaling down)."""

    config: AutoscalingConfig
    policy: TargetTrackingPolicy
    window: SampleWindow
    rate: ArrivalRate = field(default_factory=ArrivalRate)
    state: TargetState | None = None
    scrape_failures: int = 0
    """Replica ``/metrics`` reads skipped so far (no answer in time, an error, bad text)."""


class DeploymentReconciler:
    """Drives every deployment towards its desired replicas. Call :meth:`run_once` in a loop.

    Args:
        db: the database.
        backends: backend per node ``backend`` name (``local``, ``fake``).
        settings: control-plane settings (timeouts, back-off, metering period).
        on_change: called after a pass that may have changed which replicas are ready.
    """

    def __init__(
        self,
        db: Database,
        backends: dict[str, Backend],
        settings: Settings,
        *,
        on_change: Callable[[], None] | None = None,
        box: SecretBox | None = None,
    ):
        self.db = db
        self.backends = backends
        self.settings = settings
        self.on_change = on_change
        self.box = box
        """Decrypts the secrets a deployment references (``None``: none can be injected)."""
        self._health_failures: dict[str, int] = {}
        self.stats: Callable[[str], DeploymentStats | None] | None = None
        """The gateway's live figures of a deployment (autoscaling, scale-in order);
        ``None``: no gateway in this process (every deployment looks idle)."""
        self.clock: Callable[[], float] = time.monotonic
        """The clock autoscaling samples are taken on (seconds)."""
        self._scalers: dict[str, _Scaler] = {}
        self.scraper = EngineScraper()
        """Reads the engine signals of ready replicas (``/metrics``) for deployments that
        scale on one (``server.autoscaling.scrape``)."""
        self._stops: dict[str, Future[None]] = {}
        self._verdict = NodeVerdict()
        self._stops_lock = threading.Lock()

    # -- the loop ---------------------------------------------------------------------
    def run_once(self) -> None:
        self._release_lost_nodes()
        with self.db.session() as s:
            ids = list(s.scalars(
                select(Deployment.id).order_by(Deployment.priority.desc(), Deployment.created_at)
            ))
            settled = self._settled(s)
        reconcile_each(self.db, "deployment", [i for i in ids if i not in settled],
                       self._reconcile)
        for dep_id, checks in settled.items():
            # every replica ready and nothing to decide: only the health checks, and the
            # deployment's status at once if one of them found a process gone (as the
            # full step does after its checks)
            self._scalers.pop(dep_id, None)
            if not all([self._check_ready(rid, known=known) for rid, known in checks]):
                reconcile_locked(self.db, "deployment", dep_id, self._update_status)
        if self.on_change is not None:
            self.on_change()

    def _settled(self, s: Session) -> dict[str, list[tuple[str, tuple[Backend, dict[str, Any]]]]]:
        """Deployments that need nothing this pass but their replicas' health checks, with
        each replica's backend and handle, read in two queries for the whole fleet.

        Settled: status ``ready``, no autoscaling, no pending reason; exactly
        ``replicas`` live replicas, all ``ready``, of the current generation, with a
        handle, on ``ready`` nodes whose backend is here, none stopping and none due for
        metering. For such a deployment the full step (:meth:`_reconcile`) would create,
        stop, place and meter nothing and keep its status; it would only run
        :meth:`_check_ready` on each replica, which is what the pass does, without the
        per-deployment transactions. The health checks only read; whatever they find is
        written under the replica's row lock as in the full step.
        """
        deps = {d.id: d for d in s.scalars(select(Deployment).where(
            Deployment.status == DeploymentStatus.ready.value,
            Deployment.pending_reason.is_(None), Deployment.pending_code.is_(None)))
            if autoscaling_of(d) is None}
        if not deps:
            return {}
        nodes = {n.id: n for n in s.scalars(select(Node).where(
            Node.status == NodeStatus.ready.value))}
        by_dep: dict[str, list[Replica]] = {}
        for r in s.scalars(select(Replica).where(Replica.status != ReplicaStatus.stopped.value)):
            by_dep.setdefault(r.deployment_id, []).append(r)
        out: dict[str, list[tuple[str, tuple[Backend, dict[str, Any]]]]] = {}
        for dep_id, dep in deps.items():
            reps = by_dep.get(dep_id, [])
            if len(reps) != dep.replicas:
                continue
            checks: list[tuple[str, tuple[Backend, dict[str, Any]]]] = []
            for r in reps:
                node = nodes.get(r.node_id or "")
                be = self.backends.get(node.backend) if node is not None else None
                if (be is None or r.status != ReplicaStatus.ready.value or not r.handle
                        or r.generation != dep.generation or r.started_at is None
                        or self._meter_due(r)):
                    break
                checks.append((r.id, (be, dict(r.handle))))
            else:
                out[dep_id] = checks
        return out

    def _release_lost_nodes(self) -> None:
        """Replicas on nodes that are ``not_ready`` lose their allocation and are placed
        again (on another node when one fits), each in its own transaction under its row
        lock; then, outside any transaction, the process each had is stopped through its
        backend (:func:`~neocloud.server.reconcilers.core.release_ended`: Ray frees what
        it still accounts for it, and a node that comes back runs nothing of it), so what
        moved is never running twice."""
        with self.db.session() as s:
            lost = {n.id: n.name for n in
                    s.scalars(select(Node).where(Node.status == NodeStatus.not_ready.value))}
            ids = list(s.scalars(select(Replica.id).where(
                Replica.node_id.in_(lost), Replica.status.in_(LIVE)))) if lost else []
        ended: list[tuple[Backend, dict[str, Any]]] = []
        for rid in ids:
            try:
                found = self._release_lost(rid, lost)
            except StaleStatus as e:
                log.debug("replica %s: %s; next pass", rid, e)
                continue
            if found is not None:
                ended.append(found)
        for be, handle in ended:
            release_ended(be, handle, grace_s=self.settings.replica_stop_grace_s)

    def _release_lost(self, rid: str, lost: dict[str, str]
                      ) -> tuple[Backend, dict[str, Any]] | None:
        """Free replica ``rid`` on a lost node (one of ``lost``: node id -> name) and write
        it ``pending``; returns the backend and handle of the process it had, if any."""
        ended: tuple[Backend, dict[str, Any]] | None = None
        with self.db.session() as s:
            r = lock_row(s, Replica, rid, skip_locked=True)
            if r is None or r.status not in LIVE or r.node_id not in lost:
                return None
            found = backend_of(self.backends, s, r.node_id)
            if found is not None and r.handle:
                ended = (found[0], dict(r.handle))
            self._meter_row(s, r, final=True)
            placement.release(s, owner_id=r.id)
            node_name = lost[r.node_id or ""]
            r.node_id, r.handle, r.pid, r.port = None, {}, None, None
            r.started_at, r.ready_at, r.metered_until = None, None, None
            r.message = f"node {node_name} was lost; placing again"
            set_status(s, r, ReplicaStatus.pending, reason="NodeLost", warning=True,
                       message=f"replica {r.id[:8]}: node {node_name} is not ready; "
                               "its allocation was freed")
        return ended

    def reconcile(self, dep_id: str) -> None:
        """One pass over one deployment (several short transactions), under the lock on the
        deployment shared by every control-plane copy."""
        reconcile_locked(self.db, "deployment", dep_id, self._reconcile)

    def _reconcile(self, dep_id: str) -> None:
        self._autoscale(dep_id)
        newly: list[str] = []
        with self.db.session() as s:
            dep = lock_row(s, Deployment, dep_id, skip_locked=True)
            if dep is None:
                return
            reps = list(s.scalars(select(Replica).where(Replica.deployment_id == dep.id)
                                  .execution_options(populate_existing=True)))
            deleting = dep.status == "deleting"
            to_stop: list[str] = []
            draining = self._draining_nodes(s, reps)
            if deleting:
                to_stop = [r.id for r in reps if r.status != "stopped"]
            else:
                to_stop = self._plan_scale(s, dep, reps, draining)
            for r in reps:
                if r.id in to_stop and r.status != "stopping":
                    r.stop_requested_at = now()
                    node = draining.get(r.node_id or "")
                    if node is not None and not deleting:
                        set_status(s, r, ReplicaStatus.stopping, reason="NodeDraining",
                                   message=f"replica {r.id[:8]} moves off draining node "
                                           f"{node}: stopping (drain up to "
                                           f"{dep.drain_timeout_s:g} s)")
                    else:
                        set_status(s, r, ReplicaStatus.stopping, reason="Stopping",
                                   message=f"replica {r.id[:8]} stopping (drain up to "
                                           f"{dep.drain_timeout_s:g} s)")
                    newly.append(r.id)
        # Act outside the deciding transaction: first take the stopping replicas out of
        # the route table (no new request reaches them), then tell them to stop.
        if newly and self.on_change is not None:
            self.on_change()
        started = [f for f in (self._request_stop(rid) for rid in to_stop) if f is not None]
        if started:
            wait_futures(started, timeout=STOP_WAIT_S)
        if deleting:
            self._finish_delete(dep_id)
            return
        self._advance(dep_id)
        self._update_status(dep_id)

    # -- deciding ---------------------------------------------------------------------
    @staticmethod
    def _draining_nodes(s: Session, reps: list[Replica]) -> dict[str, str]:
        """Id -> name of the ``draining`` nodes among those of ``reps``."""
        ids = {r.node_id for r in reps if r.node_id}
        if not ids:
            return {}
        return {n.id: n.name for n in s.scalars(select(Node).where(
            Node.id.in_(ids), Node.status == NodeStatus.draining.value))}

    def _plan_scale(self, s: Session, dep: Deployment, reps: list[Replica],
                    draining: dict[str, str] | None = None) -> list[str]:
        """Create missing replica rows; return ids of replicas to stop.

        A replica on a ``draining`` node (one of ``draining``: id -> name) moves as in a
        rolling update: it counts as an old replica, so its replacement is placed (on
        another node: the scheduler places only on ``ready`` ones) and it is stopped once
        the replacement is ready (at once if it was not ready itself)."""
        draining = draining or {}
        live = [r for r in reps if r.status in LIVE]
        cur = [r for r in live if r.generation == dep.generation
               and r.node_id not in draining]
        old = [r for r in live if r.generation != dep.generation or r.node_id in draining]
        desired = dep.replicas
        stop: list[str] = [r.id for r in reps if r.status == "stopping"]
        # a rollout runs at most max_surge replicas above the desired count, and keeps at
        # least desired - max_unavailable ready ones
        max_total = desired + dep.max_surge if old else desired
        want = min(desired - len(cur), max_total - len(live))
        for _ in range(max(0, want)):
            r = Replica(deployment_id=dep.id, workspace_id=dep.workspace_id,
                        generation=dep.generation, status="pending")
            s.add(r)
            cur.append(r)
        load = self._replica_load(dep.id)

        def victim_order(r: Replica) -> tuple[int, int, float]:
            # not ready first, then idle, then least loaded; newest first on a tie
            order = {"pending": 0, "failed": 1, "starting": 2, "ready": 3}
            return (order[r.status], load.get(r.id, 0), -r.created_at.timestamp())

        if len(cur) > desired:
            extra = sorted(cur, key=victim_order)
            stop += [r.id for r in extra[: len(cur) - desired]]
        cur_ready = sum(1 for r in cur if r.status == "ready")
        old_ready = sorted((r for r in old if r.status == "ready"), key=victim_order)
        stop += [r.id for r in old if r.status != "ready"]
        surplus = cur_ready + len(old_ready) - max(0, desired - dep.max_unavailable)
        if old_ready and (surplus > 0 or desired == 0):
            stop += [r.id for r in old_ready[: max(1, surplus)]]
        s.flush()
        return list(dict.fromkeys(stop))

    def _replica_load(self, dep_id: str) -> dict[str, int]:
        """In-flight requests per replica id at the gateway (empty without one)."""
        st = self.stats(dep_id) if self.stats is not None else None
        return dict(st.replica_in_flight) if st is not None else {}

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
            sc = _Scaler(config=config, policy=policy,
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

    # -- acting -----------------------------------------------------------------------
    def _advance(self, dep_id: str) -> None:
        with self.db.session() as s:
            reps = list(s.scalars(
                select(Replica).where(Replica.deployment_id == dep_id,
                                      Replica.status.in_(LIVE)).order_by(Replica.created_at)
            ))
            # metering due by the row read now; a step only moves the start of the
            # unmetered time later (a placement or restart starts it now), never earlier
            ids = [(r.id, r.status, self._meter_due(r)) for r in reps]
        for rid, status, due in ids:
            try:
                if status == "pending":
                    self._place_and_start(rid)
                elif status == "starting":
                    self._check_starting(rid)
                elif status == "ready":
                    self._check_ready(rid)
                elif status == "failed":
                    self._maybe_restart(rid)
                if due:
                    self._meter(rid)
            except StaleStatus as e:
                log.debug("replica %s: %s; next pass", rid, e)
            except Exception:
                log.exception("replica %s: reconcile step failed", rid)

    def _meter_due(self, r: Replica) -> bool:
        """Whether replica ``r`` has a usage record due (``usage_period_s`` of running
        time not yet recorded; the rule of ``meter_running``)."""
        start = r.metered_until or r.started_at
        return (r.node_id is not None and start is not None
                and (now() - start).total_seconds() >= self.settings.usage_period_s)

    def _backend(self, s: Session, node_id: str | None) -> tuple[Backend, Node] | None:
        return backend_of(self.backends, s, node_id)

    def _place_and_start(self, rid: str) -> None:
        with self.db.session() as s:
            r = lock_for_placement(s, Replica, rid)
            if r is None or r.status != ReplicaStatus.pending:
                return
            dep = lock_row(s, Deployment, r.deployment_id)
            if dep is None or dep.status == DeploymentStatus.deleting \
                    or r.generation != dep.generation:
                return  # deleted or rolled on meanwhile: the replica is no longer wanted
            shape = s.get(Shape, dep.shape)
            if shape is None:
                self._pending(s, dep, r, f"shape {dep.shape!r} no longer exists",
                              ReasonCode.SHAPE_MISSING)
                return
            placed = place(
                s, kind="replica", waiter=r, workspace_id=dep.workspace_id,
                requests=[placement.request_for_shape(shape)], priority=dep.priority,
                preemptible=dep.preemptible,
                preempted_by=f"deployment {dep.name} (priority {dep.priority})",
                owners=lambda _bindings: [rid])
            if isinstance(placed, Waiting):
                self._pending(s, dep, r, placed.reason, placed.code)
                return
            binding = placed[0]
            node = s.get(Node, binding.node_id)
            r.node_id = binding.node_id
            r.gpu_indices = list(binding.gpu_indices)
            # The port is picked on the replica's node before the start (_port), outside
            # this transaction and the placement lock (Ray asks the node over the network).
            r.port = None
            r.started_at = now()
            r.message = None
            dep.pending_reason = dep.pending_code = None
            where = node.name if node else "?"
            gpus = f" GPUs {list(binding.gpu_indices)}" if binding.gpu_indices else ""
            set_status(s, r, ReplicaStatus.starting, reason="Scheduled",
                       message=f"replica {r.id[:8]} placed on node {where}{gpus}")
        self._start_process(rid)

    def _pending(self, s: Session, dep: Deployment, r: Replica, reason: str,
                 code: ReasonCode) -> None:
        r.message = reason
        dep.pending_reason = reason
        dep.pending_code = code.value
        events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                      object_id=dep.id, reason="Unschedulable", message=reason, warning=True,
                      dedupe=True)

    def command_for(self, dep: Deployment, port: int, *, gpus: int = 0,
                    memory_mib: int | None = None, host: str = "127.0.0.1") -> list[str]:
        """The command line of a replica of ``dep`` listening on ``host:port`` (its node's
        address: the gateway and the readiness probe reach it there).

        Engine ``builtin``: ``python -m neocloud.serving SERVICE``. Engine ``vllm``: the
        launcher ``python -m neocloud.serving.engines.vllm`` (it finds the engine
        environment, resolves the model, default the built-in chat model's standard
        checkpoint), on device ``cuda`` when the replica was given ``gpus`` > 0, else
        ``cpu`` with a KV cache of :func:`kv_cache_gib` of the shape's ``memory_mib``.
        """
        python = self.settings.python or sys.executable
        if dep.engine == Engine.vllm:
            cmd = [python, "-m", "neocloud.serving.engines.vllm", "--host", host,
                   "--port", str(port), "--name", dep.name,
                   "--device", "cuda" if gpus > 0 else "cpu",
                   "--kv-cache-gib", f"{kv_cache_gib(memory_mib):g}"]
            if dep.model:
                cmd += ["--model", dep.model]
            return cmd
        service = dep.service or ""
        if service.split(":", 1)[0].endswith(".py"):
            path, cls = service.rsplit(":", 1)
            service = f"{Path(path).expanduser().resolve()}:{cls}"
        cmd = [python, "-m", "neocloud.serving", service,
               "--host", host, "--port", str(port), "--name", dep.name]
        if dep.model:
            cmd += ["--model", dep.model]
        return cmd

    def ready_timeout_s(self, engine: str) -> float:
        """Seconds a starting replica of ``engine`` gets to answer ``/ready`` (settings
        ``replica_ready_timeout_s``, ``vllm_ready_timeout_s``)."""
        if engine == Engine.vllm:
            return self.settings.vllm_ready_timeout_s
        return self.settings.replica_ready_timeout_s

    def _port(self, rid: str) -> bool:
        """Give a replica about to start its port: one free on its node, asked of its
        backend (Ray asks that node), outside any transaction. Returns whether it has one;
        a node that cannot be asked fails the start (restarted with back-off)."""
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None or r.status != ReplicaStatus.starting:
                return False
            if r.port:
                return True
            found = self._backend(s, r.node_id)
        if found is None:
            return True  # _start_process fails the replica: its node or backend is gone
        try:
            port = free_port_on(*found)
        except OSError as e:
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == ReplicaStatus.starting:
                    self._crashed(s, r, f"could not start: no free port on node "
                                        f"{found[1].name}: {e}")
            return False
        with self.db.session() as s:
            r = lock_row(s, Replica, rid)
            if r is None or r.status != ReplicaStatus.starting or r.handle:
                return False
            r.port = r.port or port
        return True

    def _start_process(self, rid: str) -> None:
        """Start the process of a replica already written as ``starting``, on a port free
        on its node (:meth:`_port`), listening on the node's address."""
        if not self._port(rid):
            return
        with self.db.session() as s:
            r = s.get(Replica, rid)
            dep = s.get(Deployment, r.deployment_id) if r else None
            if r is None or dep is None or r.status != "starting":
                return
            found = self._backend(s, r.node_id)
            if found is None:
                r.message = "node or backend is gone"
                set_status(s, r, ReplicaStatus.failed, reason="Crashed", warning=True,
                           message=f"replica {r.id[:8]}: node or backend is gone")
                return
            be, node = found
            try:
                secret_env = secret_svc.resolve(s, workspace_id=dep.workspace_id,
                                                refs=dict(dep.secrets or {}), box=self.box) \
                    if dep.secrets and self.box is not None else {}
            except NeocloudError as e:
                self._crashed(s, r, f"could not start: {e.message}")
                return
            alloc = s.scalars(select(Allocation).where(Allocation.owner_id == r.id)).first()
            shape = s.get(Shape, dep.shape)
            spec = WorkloadSpec(
                workload_id=r.id,
                command=self.command_for(dep, r.port or 0, gpus=len(r.gpu_indices),
                                         memory_mib=shape.memory_mib if shape else None,
                                         host=node.address),
                env={**{k: str(v) for k, v in dep.env.items()}, **secret_env,
                     "NEOCLOUD_SERVED_MODEL_NAME": dep.name,
                     # the runtime drains in-flight requests this long on SIGTERM
                     "NEOCLOUD_GRACE_PERIOD_S": f"{dep.drain_timeout_s:g}"},
                gpu_indices=tuple(r.gpu_indices),
                log_path=self.settings.logs_dir / "replicas" / f"{r.id}.log",
                port=r.port,
                node_address=node.address,
                node_name=node.name,
                gpu_milli=alloc.gpu_milli if alloc is not None and alloc.gpu_milli else 1000,
                secret_env=frozenset(secret_env),
            )

        def record(s: Session, handle: dict[str, Any]) -> bool:
            r = lock_row(s, Replica, rid)
            if r is None:
                return False
            r.handle, r.pid = handle, handle.get("pid")
            dep = s.get(Deployment, r.deployment_id)
            return (r.status == ReplicaStatus.starting and dep is not None
                    and dep.status != DeploymentStatus.deleting)

        try:
            start_process(self.db, be, spec, record=record,
                          grace_s=self.settings.replica_stop_grace_s)
        except (OSError, ValueError) as e:
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == ReplicaStatus.starting:
                    self._crashed(s, r, f"could not start: {e}")

    def _url(self, node: Node, r: Replica, path: str) -> str:
        return f"http://{node.address}:{r.port}{path}"

    def _check_starting(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            found = self._backend(s, r.node_id) if r else None
            if r is None or found is None:
                return
            be, node = found
            handle, url = dict(r.handle), self._url(node, r, "/ready")
            started = r.started_at or now()
            dep = s.get(Deployment, r.deployment_id)
            limit = self.ready_timeout_s(dep.engine if dep else Engine.builtin)
        if not handle:
            # Written as starting, but the process start never got recorded (a crash in
            # between): start it now. No process can exist without its handle recorded
            # except in that window, so nothing is started twice.
            self._start_process(rid)
            return
        state = be.inspect(handle)
        if not state.running:
            if not self._ended(be, rid, handle, state.exit_code):
                return
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == "starting":
                    self._crashed(s, r, self._exit_message(be, handle, state.exit_code))
            return
        self._verdict.forget(rid)
        if be.probe_ready(handle, url, timeout_s=1.0):
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is None or r.status != "starting":
                    return
                r.ready_at, r.message = now(), None
                secs = (r.ready_at - started).total_seconds()
                set_status(s, r, ReplicaStatus.ready, reason="Ready",
                           message=f"replica {r.id[:8]} ready in {secs:.1f} s")
                self._cold_start_event(s, r)
            return
        if (now() - started).total_seconds() > limit:
            be.stop(handle, grace_s=self.settings.replica_stop_grace_s)
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == "starting":
                    self._crashed(s, r, f"not ready after {limit:.0f} s",
                                  ReasonCode.STARTUP_TIMEOUT)

    def _cold_start_event(self, s: Session, r: Replica) -> None:
        """A deployment that scales to zero got its first ready replica: record the
        measured cold start (replica row created -> ready, seconds)."""
        dep = s.get(Deployment, r.deployment_id)
        config = autoscaling_of(dep) if dep is not None else None
        if dep is None or config is None or config.min_replicas > 0 or r.ready_at is None:
            return
        others = s.scalars(select(Replica.id).where(
            Replica.deployment_id == dep.id, Replica.id != r.id,
            Replica.status == ReplicaStatus.ready)).first()
        if others is not None:
            return
        secs = (r.ready_at - r.created_at).total_seconds()
        events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                      object_id=dep.id, reason="ColdStart",
                      message=f"started from zero: replica {r.id[:8]} ready {secs:.1f} s "
                              "after it was asked for")

    def _check_ready(self, rid: str,
                     known: tuple[Backend, dict[str, Any]] | None = None) -> bool:
        """Health check of a ready replica; ``known``: its backend and handle, already
        read. Returns whether its process still runs."""
        if known is not None:
            be, handle = known
        else:
            with self.db.session() as s:
                r = s.get(Replica, rid)
                found = self._backend(s, r.node_id) if r else None
                if r is None or found is None:
                    return True
                be, _node = found
                handle = dict(r.handle)
        state = be.inspect(handle)
        if state.running:
            self._verdict.forget(rid)
            return True
        if self._ended(be, rid, handle, state.exit_code):
            with self.db.session() as s:
                r = lock_row(s, Replica, rid)
                if r is not None and r.status == "ready":
                    self._crashed(s, r, self._exit_message(be, handle, state.exit_code))
        return False

    def _ended(self, be: Backend, rid: str, handle: dict[str, Any],
               code: int | None) -> bool:
        """Whether the process of replica ``rid`` that reads as ended is to be recorded as
        crashed now. Not while its node is gone from the backend or may be about to be
        (:class:`~neocloud.server.reconcilers.core.NodeVerdict`): the node's loss moves
        the replica instead. A crashed process is stopped through its backend at once,
        which frees what the backend still holds for it (Ray's GPU accounting)."""
        if node_lost(be, handle) or self._verdict.pending(be, rid, code):
            return False
        release_ended(be, handle, grace_s=self.settings.replica_stop_grace_s)
        return True

    def _exit_message(self, be: Backend, handle: dict[str, Any], code: int | None) -> str:
        last = be.logs(handle, tail=5, this_run=True).strip()
        msg = "process exited" + (f" with code {code}" if code is not None else "")
        return f"{msg}; last log lines:\n{last}" if last else msg

    def _crashed(self, s: Session, r: Replica, message: str,
                 code: ReasonCode = ReasonCode.CRASH_LOOP) -> None:
        dep = s.get(Deployment, r.deployment_id)
        if dep is not None and dep.secrets:
            message = secret_svc.redact(message, secret_svc.values_of(
                s, workspace_id=dep.workspace_id, refs=dict(dep.secrets), box=self.box))
        r.restarts += 1
        delay = backoff_s(r.restarts, base=self.settings.restart_backoff_base_s,
                          cap=self.settings.restart_backoff_max_s)
        r.message = message
        r.next_restart_at = now() + timedelta(seconds=delay)
        r.ready_at = None
        if dep is not None:
            lines = [ln for ln in message.splitlines() if ln.strip()]
            detail = lines[0] + (f": {lines[-1].strip()}" if len(lines) > 1 else "")
            dep.pending_reason = f"replica {r.id[:8]} failed: {detail}"
            dep.pending_code = code.value
        set_status(s, r, ReplicaStatus.failed, reason="Crashed", warning=True,
                   message=f"replica {r.id[:8]} {message}; restart {r.restarts} "
                           f"in {delay:.0f} s")

    def _maybe_restart(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None or r.status != "failed":
                return
            if r.next_restart_at and r.next_restart_at > now():
                return
            found = self._backend(s, r.node_id)
            if found is not None and r.handle:
                be = found[0]
                handle = dict(r.handle)
            else:
                be, handle = None, {}
        if be is not None and handle:
            release_ended(be, handle, grace_s=1.0)  # nothing of the old process is left
        with self.db.session() as s:
            r = lock_row(s, Replica, rid)
            if r is None or r.status != "failed":
                return
            dep = s.get(Deployment, r.deployment_id)
            if dep is None or dep.status == DeploymentStatus.deleting:
                return
            alloc = s.scalars(select(Allocation).where(Allocation.owner_id == r.id)).first()
            if alloc is None:
                r.node_id = None
                set_status(s, r, ReplicaStatus.pending, reason="Pending",
                           message=f"replica {r.id[:8]} lost its allocation; placing again")
                return
            r.handle, r.pid = {}, None
            r.port = None  # picked on its node before the start (_port)
            # It kept its allocation through the crash: metering goes on from where it was,
            # not from the new start (GPU time held while crash-looping is billed).
            r.metered_until = r.metered_until or r.started_at
            r.started_at = now()
            set_status(s, r, ReplicaStatus.starting, reason="Restarting",
                       message=f"replica {r.id[:8]} restart {r.restarts}")
        self._start_process(rid)

    def _request_stop(self, rid: str) -> Future[None] | None:
        """Stop replica ``rid`` (written ``stopping``) in a background thread, unless a stop
        of it is already under way; returns the future of a stop started now."""
        with self._stops_lock:
            running = self._stops.get(rid)
            if running is not None and not running.done():
                return None
            fut: Future[None] = Future()
            fut.set_running_or_notify_cancel()
            self._stops[rid] = fut

        def run() -> None:
            # A daemon thread: a drain never holds up the exit of the control plane (the
            # replica stays ``stopping`` in the database and the next start stops it).
            try:
                self._stop_replica(rid)
            except BaseException as e:  # noqa: BLE001 - handed to the future's callback
                fut.set_exception(e)
            else:
                fut.set_result(None)

        def forget(f: Future[None]) -> None:
            with self._stops_lock:
                if self._stops.get(rid) is f:
                    del self._stops[rid]
            if f.exception() is not None:
                log.error("stopping replica %s failed", rid, exc_info=f.exception())

        fut.add_done_callback(forget)
        threading.Thread(target=run, name=f"neocloud-stop-{rid[:8]}", daemon=True).start()
        return fut

    def wait_stops(self, timeout_s: float | None = None) -> bool:
        """Wait for the stops under way; returns whether all finished (tests, shutdown)."""
        with self._stops_lock:
            futs = list(self._stops.values())
        _done, pending = wait_futures(futs, timeout=timeout_s)
        return not pending

    def _stop_replica(self, rid: str, grace_s: float | None = None) -> None:
        """Stop the process of a ``stopping`` replica, with its deployment's drain timeout
        (plus :data:`DRAIN_MARGIN_S`) as the grace before SIGKILL unless ``grace_s`` is
        given, then write it ``stopped`` and release its allocation."""
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None:
                return
            found = self._backend(s, r.node_id)
            handle = dict(r.handle)
            dep = s.get(Deployment, r.deployment_id)
            if grace_s is None:
                grace_s = (dep.drain_timeout_s + DRAIN_MARGIN_S if dep is not None
                           else self.settings.replica_stop_grace_s)
        if found is not None and handle:
            found[0].stop(handle, grace_s=grace_s)
        with self.db.session() as s:
            r = lock_row(s, Replica, rid)
            if r is None or r.status != ReplicaStatus.stopping:
                return
            self._meter_row(s, r, final=True)
            placement.release(s, owner_id=r.id)
            set_status(s, r, ReplicaStatus.stopped, reason="Stopped",
                       message=f"replica {r.id[:8]} stopped")

    def _finish_delete(self, dep_id: str) -> None:
        with self.db.session() as s:
            dep = lock_row(s, Deployment, dep_id, skip_locked=True)
            if dep is None or dep.status != DeploymentStatus.deleting:
                return
            live = s.scalars(
                select(Replica).where(Replica.deployment_id == dep_id,
                                      Replica.status != "stopped")
            ).first()
            if live is not None:
                return
            s.execute(delete(Replica).where(Replica.deployment_id == dep_id))
            events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                          object_id=dep.id, reason="Deleted", message="deployment deleted")
            s.delete(dep)

    def _update_status(self, dep_id: str) -> None:
        with self.db.session() as s:
            dep = lock_row(s, Deployment, dep_id, skip_locked=True)
            if dep is None or dep.status == "deleting":
                return
            reps = s.scalars(select(Replica).where(Replica.deployment_id == dep_id)).all()
            ready = sum(1 for r in reps if r.status == "ready")
            old = any(r.generation != dep.generation and r.status in LIVE for r in reps)
            cur = [r for r in reps if r.generation == dep.generation and r.status in LIVE]
            # Steady while it lasts: a replica restarting after a crash still counts (its
            # restarts stay), so the status does not flip failed/pending at each restart.
            crash_loop = bool(cur) and all(
                r.status in ("failed", "starting") and r.restarts >= CRASH_LOOP_RESTARTS
                for r in cur)
            if dep.replicas == 0 and ready == 0:
                status = "scaled_to_zero"
            elif crash_loop and ready == 0:
                status = "failed"
            elif ready >= dep.replicas and not old:
                status = "ready"
            elif ready > 0:
                status = "degraded"
            else:
                status = "pending"
            if status in ("ready", "scaled_to_zero"):
                dep.pending_reason = dep.pending_code = None
            elif crash_loop and ready == 0:
                dep.pending_code = ReasonCode.CRASH_LOOP.value
            if status != dep.status:
                dep.updated_at = now()
                set_status(s, dep, DeploymentStatus(status), reason="StatusChanged",
                           message=f"{dep.status} -> {status} ({ready}/{dep.replicas} ready)")

    def stop_local_replicas(self) -> int:
        """Stop every replica running on a ``local`` node (at ``neocloud up`` shutdown).

        Each is written ``stopping`` first, then stopped, metered and released, so the
        next start brings the deployments back with fresh replicas. Returns the count.
        """
        with self.db.session() as s:
            rows = s.execute(
                select(Replica.id).join(Node, Node.id == Replica.node_id)
                .where(Node.backend == "local",
                       Replica.status.in_(("starting", "ready", "failed", "stopping")))
            ).all()
            ids = [row[0] for row in rows]
            for rid in ids:
                r = s.get(Replica, rid)
                if r is not None:
                    set_status(s, r, ReplicaStatus.stopping, reason="Stopping",
                               message=f"replica {r.id[:8]} stopping: the control plane "
                                       "is shutting down")
        for rid in ids:
            try:
                self._stop_replica(rid, grace_s=self.settings.replica_stop_grace_s)
            except Exception:
                log.exception("stopping replica %s failed", rid)
        return len(ids)

    # -- metering ---------------------------------------------------------------------
    def _meter(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is not None:
                self._meter_row(s, r, final=False)

    def _meter_row(self, s: Session, r: Replica, *, final: bool) -> None:
        dep = s.get(Deployment, r.deployment_id)
        meter(s, r, period_s=self.settings.usage_period_s, final=final, kind="replica",
              name=dep.name if dep else r.id, shape_name=dep.shape if dep else None)


def preempt_replica(s: Session, replica_id: str, reason: str) -> None:
    """Preemption handler of replicas: written ``stopping``; the reconciler stops it and
    the deployment asks for a new replica, which waits for room."""
    r = s.get(Replica, replica_id)
    if r is None or r.status not in LIVE:
        return
    r.message = reason
    set_status(s, r, ReplicaStatus.stopping, reason="Preempted", warning=True,
               message=f"replica {r.id[:8]} {reason}")


placement.PREEMPT_HANDLERS["replica"] = preempt_replica
