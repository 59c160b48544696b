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

Rolling update: a change of service, model, shape or env raises the generation; new
replicas start first (at most one above the desired count) and an old one stops only
once a new one is ready.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from neocloud.errors import NeocloudError
from neocloud.server.backends.base import Backend, WorkloadSpec, backend_for, start_or_adopt
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Allocation, Deployment, Node, Replica, Shape
from neocloud.server.metering.records import meter_running
from neocloud.server.reconcilers.common import lock_row, reconcile_each, reconcile_locked
from neocloud.server.scheduler import Unschedulable
from neocloud.server.services import events, placement
from neocloud.server.services import secrets as secret_svc
from neocloud.server.settings import Settings

log = logging.getLogger(__name__)

LIVE = ("pending", "starting", "ready", "failed")
"""Replica states that count towards a deployment's replicas."""

CRASH_LOOP_RESTARTS = 3
"""A deployment whose every replica crashed this many times in a row, with none ready, is
``failed`` (it keeps being restarted with back-off, and turns ready when one succeeds)."""


def now() -> datetime:
    return datetime.now(UTC)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def backoff_s(restarts: int, *, base: float, cap: float) -> float:
    """Delay before restart number ``restarts`` (1-based): ``base × 2^(restarts-1)``, capped."""
    return min(cap, base * (2 ** max(0, restarts - 1)))


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

    # -- the loop ---------------------------------------------------------------------
    def run_once(self) -> None:
        with self.db.session() as s:
            self._release_lost_nodes(s)
            ids = list(s.scalars(
                select(Deployment.id).order_by(Deployment.priority.desc(), Deployment.created_at)
            ))
        reconcile_each(self.db, "deployment", ids, self._reconcile)
        if self.on_change is not None:
            self.on_change()

    def _release_lost_nodes(self, s: Session) -> None:
        """Replicas on nodes that are ``not_ready`` lose their allocation and are placed
        again (on another node when one fits)."""
        lost = {n.id: n.name for n in s.scalars(select(Node).where(Node.status == "not_ready"))}
        if not lost:
            return
        for r in s.scalars(select(Replica).where(Replica.node_id.in_(lost),
                                                  Replica.status.in_(LIVE))):
            dep = s.get(Deployment, r.deployment_id)
            self._meter_row(s, r, final=True)
            placement.release(s, owner_id=r.id)
            node_name = lost[r.node_id or ""]
            r.status, r.node_id, r.handle, r.pid, r.port = "pending", None, {}, None, None
            r.started_at, r.ready_at, r.metered_until = None, None, None
            r.message = f"node {node_name} was lost; placing again"
            if dep is not None:
                events.record(s, workspace_id=dep.workspace_id, kind="deployment",
                              name=dep.name, object_id=r.id, reason="NodeLost", warning=True,
                              message=f"replica {r.id[:8]}: node {node_name} is not ready; "
                                      "its allocation was freed")

    def reconcile(self, dep_id: str) -> None:
        """One pass over one deployment (several short transactions), under the lock on the
        deployment shared by every control-plane copy."""
        reconcile_locked(self.db, "deployment", dep_id, self._reconcile)

    def _reconcile(self, dep_id: str) -> None:
        with self.db.session() as s:
            dep = lock_row(s, Deployment, dep_id)
            if dep is None:
                return
            reps = list(s.scalars(select(Replica).where(Replica.deployment_id == dep.id)))
            deleting = dep.status == "deleting"
            to_stop: list[str] = []
            if deleting:
                to_stop = [r.id for r in reps if r.status != "stopped"]
            else:
                to_stop = self._plan_scale(s, dep, reps)
            for r in reps:
                if r.id in to_stop and r.status != "stopping":
                    r.status = "stopping"
        # Act outside the deciding transaction.
        for rid in to_stop:
            self._stop_replica(rid)
        if deleting:
            self._finish_delete(dep_id)
            return
        self._advance(dep_id)
        self._update_status(dep_id)

    # -- deciding ---------------------------------------------------------------------
    def _plan_scale(self, s: Session, dep: Deployment, reps: list[Replica]) -> list[str]:
        """Create missing replica rows; return ids of replicas to stop."""
        live = [r for r in reps if r.status in LIVE]
        cur = [r for r in live if r.generation == dep.generation]
        old = [r for r in live if r.generation != dep.generation]
        desired = dep.replicas
        stop: list[str] = [r.id for r in reps if r.status == "stopping"]
        max_total = desired + 1 if old else desired
        want = min(desired - len(cur), max_total - len(live))
        for _ in range(max(0, want)):
            r = Replica(deployment_id=dep.id, workspace_id=dep.workspace_id,
                        generation=dep.generation, status="pending")
            s.add(r)
            cur.append(r)
        if len(cur) > desired:
            order = {"pending": 0, "failed": 1, "starting": 2, "ready": 3}
            extra = sorted(cur, key=lambda r: (order[r.status], -r.created_at.timestamp()))
            stop += [r.id for r in extra[: len(cur) - desired]]
        cur_ready = sum(1 for r in cur if r.status == "ready")
        old_ready = [r for r in old if r.status == "ready"]
        stop += [r.id for r in old if r.status != "ready"]
        surplus = cur_ready + len(old_ready) - desired
        if old_ready and (surplus > 0 or desired == 0):
            stop += [r.id for r in old_ready[: max(1, surplus)]]
        s.flush()
        return list(dict.fromkeys(stop))

    # -- acting -----------------------------------------------------------------------
    def _advance(self, dep_id: str) -> None:
        with self.db.session() as s:
            reps = list(s.scalars(
                select(Replica).where(Replica.deployment_id == dep_id,
                                      Replica.status.in_(LIVE)).order_by(Replica.created_at)
            ))
            ids = [(r.id, r.status) for r in reps]
        for rid, status in ids:
            try:
                if status == "pending":
                    self._place_and_start(rid)
                elif status == "starting":
                    self._check_starting(rid)
                elif status == "ready":
                    self._check_ready(rid)
                elif status == "failed":
                    self._maybe_restart(rid)
                self._meter(rid)
            except Exception:
                log.exception("replica %s: reconcile step failed", rid)

    def _backend(self, s: Session, node_id: str | None) -> tuple[Backend, Node] | None:
        return backend_for(self.backends, s.get(Node, node_id) if node_id else None,
                           lambda n: n.backend)

    def _place_and_start(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None or r.status != "pending":
                return
            dep = s.get(Deployment, r.deployment_id)
            shape = s.get(Shape, dep.shape) if dep else None
            if dep is None:
                return
            if shape is None:
                self._pending(s, dep, r, f"shape {dep.shape!r} no longer exists")
                return
            result = placement.schedule(
                s, workspace_id=dep.workspace_id,
                requests=[placement.request_for_shape(shape)], priority=dep.priority,
            )
            if isinstance(result, placement.Preempt):
                placement.preempt(s, victims=result.victims,
                                  reason=f"preempted by deployment {dep.name} "
                                         f"(priority {dep.priority})")
                self._pending(s, dep, r, f"{placement.PREEMPTING}{len(result.victims)} "
                                         f"lower-priority workload(s) to make room: "
                                         f"{result.reason}")
                return
            if isinstance(result, Unschedulable):
                self._pending(s, dep, r, result.reason)
                return
            binding = result[0]
            node = s.get(Node, binding.node_id)
            placement.bind(s, binding=binding, workspace_id=dep.workspace_id, kind="replica",
                           owner_id=r.id, priority=dep.priority, preemptible=dep.preemptible)
            r.node_id = binding.node_id
            r.gpu_indices = list(binding.gpu_indices)
            r.port = free_port()
            r.status = "starting"
            r.started_at = now()
            r.message = None
            dep.pending_reason = None
            where = node.name if node else "?"
            gpus = f" GPUs {list(binding.gpu_indices)}" if binding.gpu_indices else ""
            events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                          object_id=r.id, reason="Scheduled",
                          message=f"replica {r.id[:8]} placed on node {where}{gpus}")
        self._start_process(rid)

    def _pending(self, s: Session, dep: Deployment, r: Replica, reason: str) -> None:
        r.message = reason
        dep.pending_reason = reason
        events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                      object_id=dep.id, reason="Unschedulable", message=reason, warning=True,
                      dedupe=True)

    def command_for(self, dep: Deployment, port: int) -> list[str]:
        """The serving-runtime command line of a replica of ``dep`` listening on ``port``."""
        service = dep.service
        if service.split(":", 1)[0].endswith(".py"):
            path, cls = service.rsplit(":", 1)
            service = f"{Path(path).expanduser().resolve()}:{cls}"
        cmd = [self.settings.python or sys.executable, "-m", "neocloud.serving", service,
               "--host", "127.0.0.1", "--port", str(port), "--name", dep.name]
        if dep.model:
            cmd += ["--model", dep.model]
        return cmd

    def _start_process(self, rid: str) -> None:
        """Start the process of a replica already written as ``starting``."""
        with self.db.session() as s:
            r = s.get(Replica, rid)
            dep = s.get(Deployment, r.deployment_id) if r else None
            if r is None or dep is None or r.status != "starting":
                return
            found = self._backend(s, r.node_id)
            if found is None:
                r.status, r.message = "failed", "node or backend is gone"
                return
            be, node = found
            try:
                secret_env = secret_svc.resolve(s, workspace_id=dep.workspace_id,
                                                refs=dict(dep.secrets or {}), box=self.box) \
                    if dep.secrets and self.box is not None else {}
            except NeocloudError as e:
                self._crashed(s, r, f"could not start: {e.message}")
                return
            spec = WorkloadSpec(
                workload_id=r.id,
                command=self.command_for(dep, r.port or 0),
                env={**{k: str(v) for k, v in dep.env.items()}, **secret_env,
                     "NEOCLOUD_SERVED_MODEL_NAME": dep.name},
                gpu_indices=tuple(r.gpu_indices),
                log_path=self.settings.logs_dir / "replicas" / f"{r.id}.log",
                port=r.port,
                node_address=node.address,
            )
        try:
            handle = start_or_adopt(be, spec)
        except (OSError, ValueError) as e:
            with self.db.session() as s:
                r = s.get(Replica, rid)
                if r is not None:
                    self._crashed(s, r, f"could not start: {e}")
            return
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is not None:
                r.handle = handle
                r.pid = handle.get("pid")

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
        if not handle:
            # Written as starting, but the process start never got recorded (a crash in
            # between): start it now. No process can exist without its handle recorded
            # except in that window, so nothing is started twice.
            self._start_process(rid)
            return
        state = be.inspect(handle)
        if not state.running:
            with self.db.session() as s:
                r = s.get(Replica, rid)
                if r is not None:
                    self._crashed(s, r, self._exit_message(be, handle, state.exit_code))
            return
        if be.probe_ready(handle, url, timeout_s=1.0):
            with self.db.session() as s:
                r = s.get(Replica, rid)
                dep = s.get(Deployment, r.deployment_id) if r else None
                if r is None or dep is None or r.status != "starting":
                    return
                r.status, r.ready_at, r.message = "ready", now(), None
                secs = (r.ready_at - started).total_seconds()
                events.record(s, workspace_id=dep.workspace_id, kind="deployment",
                              name=dep.name, object_id=r.id, reason="Ready",
                              message=f"replica {r.id[:8]} ready in {secs:.1f} s")
            return
        if (now() - started).total_seconds() > self.settings.replica_ready_timeout_s:
            be.stop(handle, grace_s=self.settings.replica_stop_grace_s)
            with self.db.session() as s:
                r = s.get(Replica, rid)
                if r is not None:
                    limit = self.settings.replica_ready_timeout_s
                    self._crashed(s, r, f"not ready after {limit:.0f} s")

    def _check_ready(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            found = self._backend(s, r.node_id) if r else None
            if r is None or found is None:
                return
            be, _node = found
            handle = dict(r.handle)
        state = be.inspect(handle)
        if not state.running:
            with self.db.session() as s:
                r = s.get(Replica, rid)
                if r is not None and r.status == "ready":
                    self._crashed(s, r, self._exit_message(be, handle, state.exit_code))

    def _exit_message(self, be: Backend, handle: dict[str, Any], code: int | None) -> str:
        last = be.logs(handle, tail=5, this_run=True).strip()
        msg = "process exited" + (f" with code {code}" if code is not None else "")
        return f"{msg}; last log lines:\n{last}" if last else msg

    def _crashed(self, s: Session, r: Replica, message: str) -> None:
        dep = s.get(Deployment, r.deployment_id)
        if dep is not None and dep.secrets:
            message = secret_svc.redact(message, secret_svc.values_of(
                s, workspace_id=dep.workspace_id, refs=dict(dep.secrets), box=self.box))
        r.restarts += 1
        delay = backoff_s(r.restarts, base=self.settings.restart_backoff_base_s,
                          cap=self.settings.restart_backoff_max_s)
        r.status = "failed"
        r.message = message
        r.next_restart_at = now() + timedelta(seconds=delay)
        r.ready_at = None
        if dep is not None:
            lines = [ln for ln in message.splitlines() if ln.strip()]
            detail = lines[0] + (f": {lines[-1].strip()}" if len(lines) > 1 else "")
            dep.pending_reason = f"replica {r.id[:8]} failed: {detail}"
            events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                          object_id=r.id, reason="Crashed", warning=True,
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
            be.stop(handle, grace_s=1.0)  # make sure nothing of the old process is left
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None or r.status != "failed":
                return
            alloc = s.scalars(select(Allocation).where(Allocation.owner_id == r.id)).first()
            if alloc is None:
                r.status, r.node_id = "pending", None
                return
            r.status, r.handle, r.pid = "starting", {}, None
            r.port = free_port()
            r.started_at = now()
        self._start_process(rid)

    def _stop_replica(self, rid: str) -> None:
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None:
                return
            found = self._backend(s, r.node_id)
            handle = dict(r.handle)
        if found is not None and handle:
            found[0].stop(handle, grace_s=self.settings.replica_stop_grace_s)
        with self.db.session() as s:
            r = s.get(Replica, rid)
            if r is None:
                return
            self._meter_row(s, r, final=True)
            placement.release(s, owner_id=r.id)
            r.status = "stopped"
            dep = s.get(Deployment, r.deployment_id)
            if dep is not None:
                events.record(s, workspace_id=dep.workspace_id, kind="deployment",
                              name=dep.name, object_id=r.id, reason="Stopped",
                              message=f"replica {r.id[:8]} stopped")

    def _finish_delete(self, dep_id: str) -> None:
        with self.db.session() as s:
            dep = s.get(Deployment, dep_id)
            if dep is None:
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
            dep = s.get(Deployment, dep_id)
            if dep is None or dep.status == "deleting":
                return
            reps = s.scalars(select(Replica).where(Replica.deployment_id == dep_id)).all()
            ready = sum(1 for r in reps if r.status == "ready")
            old = any(r.generation != dep.generation and r.status in LIVE for r in reps)
            cur = [r for r in reps if r.generation == dep.generation and r.status in LIVE]
            crash_loop = bool(cur) and all(
                r.status == "failed" and r.restarts >= CRASH_LOOP_RESTARTS for r in cur)
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
                dep.pending_reason = None
            if status != dep.status:
                events.record(s, workspace_id=dep.workspace_id, kind="deployment",
                              name=dep.name, object_id=dep.id, reason="StatusChanged",
                              message=f"{dep.status} -> {status} ({ready}/{dep.replicas} ready)")
                dep.status = status
                dep.updated_at = now()

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
                    r.status = "stopping"
        for rid in ids:
            try:
                self._stop_replica(rid)
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
        meter_running(s, r, period_s=self.settings.usage_period_s, final=final,
                      workspace_id=r.workspace_id, kind="replica", object_id=r.id,
                      name=dep.name if dep else r.id,
                      shape=s.get(Shape, dep.shape) if dep else None)


def preempt_replica(s: Session, replica_id: str, reason: str) -> None:
    """Preemption handler of replicas: written ``stopping``; the reconciler stops it and
    the deployment asks for a new replica, which waits for room."""
    r = s.get(Replica, replica_id)
    if r is None or r.status not in LIVE:
        return
    r.status = "stopping"
    r.message = reason
    dep = s.get(Deployment, r.deployment_id)
    if dep is not None:
        events.record(s, workspace_id=dep.workspace_id, kind="deployment", name=dep.name,
                      object_id=r.id, reason="Preempted", warning=True,
                      message=f"replica {r.id[:8]} {reason}")


placement.PREEMPT_HANDLERS["replica"] = preempt_replica


class ReconcilerThread:
    """Runs reconcilers every ``interval_s`` seconds in one daemon thread, or at once when
    :meth:`wake` is called (after an API write)."""

    def __init__(self, steps: list[Callable[[], None]], interval_s: float):
        self.steps = steps
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="neocloud-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for step in self.steps:
                if self._stop.is_set():
                    return
                try:
                    step()
                except Exception:
                    log.exception("reconciler step failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()
