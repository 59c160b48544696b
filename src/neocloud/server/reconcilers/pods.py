"""The pod reconciler: makes each pod's process match its desired state.

Per pod and pass: lock the row, decide, write, commit, then act on the backend, then
write the answer (as the deployment reconciler does). A pod runs ``python -m
neocloud.podrun`` (a real ``sshd`` on the pod's port, optional JupyterLab) in its working
directory, a volume, so stop and start keep its files. After a control-plane restart a
running pod is found again through its handle (pid + start time).

Pod life (see :class:`neocloud.models.pods.PodStatus`): ``queued`` → ``starting`` (placed,
allocation written, process started; waiting for ``sshd`` to accept connections) →
``running`` → ``stopping`` → ``stopped``. A pod whose process exits on its own is
``failed``. A running pod without an SSH or shell session for ``idle_timeout_s`` seconds
is stopped. Running time is metered from placement until the process has stopped. A
pod whose node is lost (``not_ready``) is stopped with reason ``node lost``; its files are
on its volume. A stopped pod keeps its node and process handle (not its allocation), so
its output stays readable through the backend (``services.logs``).

Placement, status changes and process starts go through the reconciler core
(:mod:`neocloud.server.reconcilers.core`), which keeps the invariants written there: a
stop or delete that lands while the pod is placed or starts wins.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import NeocloudError
from neocloud.models.pods import PodStatus
from neocloud.models.volumes import VolumeMount
from neocloud.server.backends.base import Backend, WorkloadSpec
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Node, Pod, Shape, Volume
from neocloud.server.podshell import client_public_key
from neocloud.server.reconcilers.core import (
    Waiting,
    backend_of,
    free_port_on,
    gpu_milli_of,
    lock_for_placement,
    lock_row,
    meter,
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
from neocloud.server.services import volumes as volume_svc
from neocloud.server.services.secrets import redact
from neocloud.server.settings import Settings
from neocloud.server.storage import VolumeStore

log = logging.getLogger(__name__)

#: Seconds a pod may take from process start to ``sshd`` accepting connections.
START_TIMEOUT_S = 60.0
ALLOC_KIND = "pod"
#: Start of the reason of a pod stopped because its node was lost.
NODE_LOST = "node lost"


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class PodReconciler:
    """Drives every pod towards its desired state. Call :meth:`run_once` in a loop.

    Args:
        db: the database.
        backends: backend per node ``backend`` name.
        settings: control-plane settings (folders, grace, metering period).
        box: decrypts the secrets injected into pods.
        store: volume storage (the working directory and mounts).
    """

    def __init__(self, db: Database, backends: dict[str, Backend], settings: Settings, *,
                 box: SecretBox, store: VolumeStore):
        self.db = db
        self.backends = backends
        self.settings = settings
        self.box = box
        self.store = store

    def pod_dir(self, pod_id: str) -> Path:
        """The pod's own folder (sshd config and host key): ``<home>/pods/<pod id>``."""
        return self.settings.home / "pods" / pod_id

    def log_path(self, pod_id: str) -> Path:
        return self.settings.logs_dir / "pods" / f"{pod_id}.log"

    # -- the loop ---------------------------------------------------------------------
    def run_once(self) -> None:
        live = [s.value for s in (PodStatus.queued, PodStatus.starting, PodStatus.running,
                                  PodStatus.stopping)]
        with self.db.session() as s:
            ids = list(s.scalars(
                select(Pod.id).where(Pod.status.in_(live) | (Pod.desired == "deleted"))
                .order_by(Pod.created_at)
            ))
        reconcile_each(self.db, "pod", ids, self._reconcile)

    def reconcile(self, pod_id: str) -> None:
        """One pass over one pod, under the lock on the pod shared by every control-plane
        copy."""
        reconcile_locked(self.db, "pod", pod_id, self._reconcile)

    def _reconcile(self, pod_id: str) -> None:
        with self.db.session() as s:
            pod = lock_row(s, Pod, pod_id, skip_locked=True)
            if pod is None:
                return
            if pod.status in (PodStatus.starting, PodStatus.running) and pod.node_id:
                node = s.get(Node, pod.node_id)
                if node is not None and node.status == "not_ready":
                    pod.desired = "stopped"
                    pod.reason = f"{NODE_LOST} (node {node.name} is not ready)"
                    set_status(s, pod, PodStatus.stopping, reason="NodeLost", warning=True,
                               message=f"stopping: {pod.reason}")
            if pod.desired != "running":
                if pod.status == PodStatus.queued:
                    self._stopped(s, pod)
                elif pod.status in (PodStatus.starting, PodStatus.running):
                    set_status(s, pod, PodStatus.stopping, reason="Stopping",
                               message=f"stopping: {pod.reason or 'by request'}")
            status = pod.status
        if status == PodStatus.queued:
            self._schedule(pod_id)
        elif status == PodStatus.starting:
            self._check_starting(pod_id)
        elif status == PodStatus.running:
            self._check_running(pod_id)
        with self.db.session() as s:
            pod = s.get(Pod, pod_id)
            now_status = pod.status if pod else None
        if now_status == PodStatus.stopping:
            self._stop(pod_id)
        self._maybe_delete(pod_id)
        self._meter(pod_id)

    # -- scheduling and starting ------------------------------------------------------
    def _schedule(self, pod_id: str) -> None:
        with self.db.session() as s:
            pod = lock_for_placement(s, Pod, pod_id)
            if pod is None or pod.status != PodStatus.queued or pod.desired != "running":
                return  # stopped or deleted meanwhile: the stop wins
            shape = s.get(Shape, pod.shape)
            if shape is None:
                self._fail(s, pod, f"shape {pod.shape!r} no longer exists")
                return
            try:
                secret_svc.check_refs(s, workspace_id=pod.workspace_id, refs=pod.secrets,
                                      env=pod.env)
                volume_svc.check_mounts(s, workspace_id=pod.workspace_id,
                                        mounts=[VolumeMount.model_validate(m)
                                                for m in pod.volumes])
                volume_svc.get_volume(s, workspace_id=pod.workspace_id, name=pod.volume,
                                      param="volume")
            except NeocloudError as e:
                self._fail(s, pod, f"cannot start: {e.message}")
                return
            placed = place(
                s, kind=ALLOC_KIND, waiter=pod, workspace_id=pod.workspace_id,
                requests=[placement.request_for_shape(shape)], priority=0, preemptible=False,
                preempted_by=f"pod {pod.name}", owners=lambda _bindings: [pod_id])
            if isinstance(placed, Waiting):
                self._queued(s, pod, placed.reason)
                return
            b = placed[0]
            node = s.get(Node, b.node_id)
            pod.node_id, pod.gpu_indices = b.node_id, list(b.gpu_indices)
            # Ports are picked on the pod's node before the start (_ports), outside this
            # transaction and the placement lock.
            pod.ssh_port, pod.jupyter_port = None, None
            pod.jupyter_token = secrets.token_hex(16) if pod.jupyter else None
            pod.reason = None
            pod.handle, pod.pid = {}, None
            pod.started_at = pod.updated_at = now()
            pod.stopped_at, pod.metered_until = None, None
            gpus = f" GPUs {list(b.gpu_indices)}" if b.gpu_indices else ""
            set_status(s, pod, PodStatus.starting, reason="Scheduled",
                       message=f"placed on node {node.name if node else '?'}{gpus}")
        self._start_process(pod_id)

    def _queued(self, s: Session, pod: Pod, reason: str) -> None:
        pod.reason = reason
        events.record(s, workspace_id=pod.workspace_id, kind="pod", name=pod.name,
                      object_id=pod.id, reason="Unschedulable", message=reason, warning=True,
                      dedupe=True)

    def _backend(self, s: Session, node_id: str | None) -> tuple[Backend, Node] | None:
        return backend_of(self.backends, s, node_id)

    def _ports(self, pod_id: str) -> bool:
        """Give a pod about to start its ``sshd`` (and JupyterLab) ports, free on its node
        (asked of its backend: Ray asks that node). Returns whether it has them."""
        with self.db.session() as s:
            pod = s.get(Pod, pod_id)
            if pod is None or pod.ssh_port:
                return pod is not None
            found = self._backend(s, pod.node_id)
            jupyter = pod.jupyter
        if found is None:
            return True  # _start_process fails the pod: its node or backend is gone
        try:
            ssh = free_port_on(*found)
            lab = free_port_on(*found) if jupyter else None
        except OSError as e:
            log.warning("pod %s: no port on node %s: %s", pod_id, found[1].name, e)
            return False
        with self.db.session() as s:
            pod = lock_row(s, Pod, pod_id)
            if pod is None or pod.status != PodStatus.starting or pod.ssh_port:
                return False
            pod.ssh_port, pod.jupyter_port = ssh, lab
        return True

    def _start_process(self, pod_id: str) -> None:
        if not self._ports(pod_id):
            return
        with self.db.session() as s:
            pod = s.get(Pod, pod_id)
            if pod is None or pod.status != PodStatus.starting or pod.handle:
                return
            found = self._backend(s, pod.node_id)
            if found is None:
                self._fail(s, pod, "node or backend is gone")
                return
            be, node = found
            try:
                workdir = self.store.local_path(pod.workspace_id, pod.volume)
                if workdir is None:
                    raise NeocloudError("the volume store has no local folders to work in")
                workdir.mkdir(parents=True, exist_ok=True)
                secret_env = secret_svc.resolve(s, workspace_id=pod.workspace_id,
                                                refs=pod.secrets, box=self.box)
                mount_env = volume_svc.prepare_mounts(
                    self.store, workspace_id=pod.workspace_id, mounts=pod.volumes,
                    workdir=workdir)
                cp_key = client_public_key(self.settings.home)
            except (NeocloudError, OSError) as e:
                msg = e.message if isinstance(e, NeocloudError) else str(e)
                self._fail(s, pod, f"cannot start: {msg}")
                return
            keys = [k for k in (pod.ssh_public_key, cp_key) if k]
            user_env = {**{k: str(v) for k, v in pod.env.items()}, **mount_env, **secret_env}
            env = {**user_env, "NEOCLOUD_POD": pod.name,
                   "NEOCLOUD_POD_ENV_KEYS": ",".join(user_env),
                   "NEOCLOUD_POD_AUTHORIZED_KEYS": "\n".join(keys)}
            cmd = [self.settings.python or sys.executable, "-m", "neocloud.podrun",
                   "--dir", str(self.pod_dir(pod.id)), "--workdir", str(workdir),
                   "--listen", node.address, "--ssh-port", str(pod.ssh_port)]
            if pod.jupyter and pod.jupyter_port:
                cmd += ["--jupyter-port", str(pod.jupyter_port)]
                env["NEOCLOUD_JUPYTER_TOKEN"] = pod.jupyter_token or ""
            spec = WorkloadSpec(workload_id=pod.id, command=cmd, env=env, cwd=workdir,
                                gpu_indices=tuple(pod.gpu_indices),
                                log_path=self.log_path(pod.id), port=pod.ssh_port,
                                node_address=node.address, node_name=node.name,
                                gpu_milli=gpu_milli_of(s, pod.id),
                                secret_env=frozenset(secret_env))

        def record(s: Session, handle: dict[str, Any]) -> bool:
            pod = lock_row(s, Pod, pod_id)
            if pod is None:
                return False
            pod.handle, pod.pid = handle, handle.get("pid")
            return pod.status == PodStatus.starting and pod.desired == "running"

        try:
            start_process(self.db, be, spec, record=record,
                          grace_s=self.settings.job_stop_grace_s)
        except (OSError, ValueError) as e:
            with self.db.session() as s:
                pod = lock_row(s, Pod, pod_id)
                if pod is not None and pod.status == PodStatus.starting:
                    why = e.strerror if isinstance(e, OSError) else str(e)
                    self._fail(s, pod, f"could not start: {why}")

    def _check_starting(self, pod_id: str) -> None:
        with self.db.session() as s:
            pod = s.get(Pod, pod_id)
            found = self._backend(s, pod.node_id) if pod else None
            if pod is None or found is None:
                return
            be, node = found
            handle, port = dict(pod.handle), pod.ssh_port
            started = pod.started_at or now()
        if not handle:
            self._start_process(pod_id)
            return
        state = be.inspect(handle)
        if not state.running:
            self._exited(pod_id, be, handle, state.exit_code)
            return
        if port and (be.name == "fake" or port_open(node.address, port)):
            with self.db.session() as s:
                pod = lock_row(s, Pod, pod_id)
                if pod is None or pod.status != PodStatus.starting:
                    return
                pod.last_activity_at = now()
                secs = (pod.last_activity_at - started).total_seconds()
                set_status(s, pod, PodStatus.running, reason="Running",
                           message=f"sshd is up on port {port} ({secs:.1f} s)")
            return
        if (now() - started).total_seconds() > START_TIMEOUT_S:
            be.stop(handle, grace_s=self.settings.job_stop_grace_s)
            with self.db.session() as s:
                pod = lock_row(s, Pod, pod_id)
                if pod is not None and pod.status == PodStatus.starting:
                    self._fail(s, pod, f"sshd did not accept connections within "
                                       f"{START_TIMEOUT_S:.0f} s")

    def last_activity(self, pod: Pod) -> datetime | None:
        """The later of the recorded activity and the pod's activity file's time."""
        last = pod.last_activity_at
        try:
            mtime = (self.pod_dir(pod.id) / "activity").stat().st_mtime
        except OSError:
            return last
        seen = datetime.fromtimestamp(mtime, UTC)
        if pod.started_at and seen < pod.started_at:  # left over from an earlier run
            return last
        return seen if last is None or seen > last else last

    def _check_running(self, pod_id: str) -> None:
        with self.db.session() as s:
            pod = s.get(Pod, pod_id)
            found = self._backend(s, pod.node_id) if pod else None
            if pod is None or found is None:
                return
            be = found[0]
            handle = dict(pod.handle)
        state = be.inspect(handle)
        if not state.running:
            self._exited(pod_id, be, handle, state.exit_code)
            return
        with self.db.session() as s:
            pod = lock_row(s, Pod, pod_id, skip_locked=True)
            if pod is None or pod.status != PodStatus.running:
                return
            last = self.last_activity(pod)
            if last is not None and (pod.last_activity_at is None or last > pod.last_activity_at):
                pod.last_activity_at = last
            if pod.idle_timeout_s and last is not None:
                idle = (now() - last).total_seconds()
                if idle > pod.idle_timeout_s:
                    pod.desired = "stopped"
                    pod.reason = (f"idle for {idle:.0f} s (timeout {pod.idle_timeout_s:g} s: "
                                  "no SSH or shell session)")
                    set_status(s, pod, PodStatus.stopping, reason="IdleTimeout",
                               message=pod.reason)

    def _exited(self, pod_id: str, be: Backend, handle: dict[str, Any], code: int | None) -> None:
        release_ended(be, handle, grace_s=self.settings.job_stop_grace_s)
        last = be.logs(handle, tail=5).strip()
        with self.db.session() as s:
            pod = lock_row(s, Pod, pod_id)
            if pod is None or pod.status not in (PodStatus.starting, PodStatus.running):
                return
            values = self._secret_values(s, pod)
            msg = "pod process exited" + (f" with code {code}" if code is not None else "")
            if last:
                msg += "; last log lines:\n" + redact(last, values)
            self._fail(s, pod, msg)

    def _secret_values(self, s: Session, pod: Pod) -> list[str]:
        try:
            return list(secret_svc.resolve(s, workspace_id=pod.workspace_id, refs=pod.secrets,
                                           box=self.box).values())
        except NeocloudError:
            return []

    def _fail(self, s: Session, pod: Pod, reason: str) -> None:
        self._release(s, pod)
        pod.reason = reason
        pod.stopped_at = pod.updated_at = now()
        set_status(s, pod, PodStatus.failed, reason="Failed", warning=True,
                   message=reason.splitlines()[0])

    # -- stopping ---------------------------------------------------------------------
    def _stop(self, pod_id: str) -> None:
        with self.db.session() as s:
            pod = s.get(Pod, pod_id)
            if pod is None or pod.status != PodStatus.stopping:
                return
            found = self._backend(s, pod.node_id)
            handle = dict(pod.handle)
        if found is not None and handle:
            found[0].stop(handle, grace_s=self.settings.job_stop_grace_s)
        with self.db.session() as s:
            pod = lock_row(s, Pod, pod_id)
            if pod is None or pod.status != PodStatus.stopping:
                return
            if pod.desired == "running":  # interrupted (shutdown, preemption): run again
                self._release(s, pod)
                pod.reason = f"{pod.reason or 'interrupted'}; waiting to be scheduled"
                set_status(s, pod, PodStatus.queued, reason="Requeued", message=pod.reason)
            else:
                self._stopped(s, pod)

    def _stopped(self, s: Session, pod: Pod) -> None:
        was_running = pod.status == PodStatus.stopping
        self._release(s, pod)
        pod.stopped_at = pod.updated_at = now()
        vol = s.scalars(select(Volume).where(Volume.workspace_id == pod.workspace_id,
                                             Volume.name == pod.volume)).first()
        if vol is not None:
            volume_svc.measure(vol, self.store)
        set_status(s, pod, PodStatus.stopped, reason="Stopped",
                   message=f"pod stopped ({pod.reason or 'by request'})"
                   if was_running else "pod stopped before it started")

    def _release(self, s: Session, pod: Pod) -> None:
        """Meter the last stretch and free the allocation. The node and the process
        handle stay (the process has ended), so the pod's output stays readable through
        its backend; the next placement replaces both."""
        if pod.status in (PodStatus.starting, PodStatus.running, PodStatus.stopping):
            self._meter_row(s, pod, final=True)  # a queued pod's last run was metered
        placement.release(s, owner_id=pod.id)
        pod.pid = None
        (self.pod_dir(pod.id) / "env.sh").unlink(missing_ok=True)

    def _maybe_delete(self, pod_id: str) -> None:
        with self.db.session() as s:
            pod = lock_row(s, Pod, pod_id, skip_locked=True)
            if pod is None or pod.desired != "deleted":
                return
            if pod.status not in (PodStatus.stopped, PodStatus.failed):
                return
            events.record(s, workspace_id=pod.workspace_id, kind="pod", name=pod.name,
                          object_id=pod.id, reason="Deleted", message="pod deleted")
            s.delete(pod)
        shutil.rmtree(self.pod_dir(pod_id), ignore_errors=True)

    def stop_local_pods(self) -> int:
        """Stop every pod on a ``local`` node (``neocloud up`` shutdown). They stay
        desired ``running`` and start again at the next start. Returns the count."""
        with self.db.session() as s:
            ids = [row[0] for row in s.execute(
                select(Pod.id).join(Node, Node.id == Pod.node_id)
                .where(Node.backend == "local",
                       Pod.status.in_((PodStatus.starting.value, PodStatus.running.value,
                                       PodStatus.stopping.value)))
            )]
            for pid in ids:
                pod = s.get(Pod, pid)
                if pod is not None:
                    if pod.desired == "running":
                        pod.reason = "the control plane was shut down"
                    set_status(s, pod, PodStatus.stopping, reason="Stopping",
                               message=f"stopping: {pod.reason or 'by request'}")
        for pid in ids:
            try:
                self._stop(pid)
            except Exception:
                log.exception("stopping pod %s failed", pid)
        return len(ids)

    # -- metering ---------------------------------------------------------------------
    def _meter(self, pod_id: str) -> None:
        with self.db.session() as s:
            pod = s.get(Pod, pod_id)
            if pod is not None and pod.status in (PodStatus.starting, PodStatus.running):
                self._meter_row(s, pod, final=False)

    def _meter_row(self, s: Session, pod: Pod, *, final: bool) -> None:
        meter(s, pod, period_s=self.settings.usage_period_s, final=final, kind="pod",
              name=pod.name, shape_name=pod.shape)


def preempt_pod(s: Session, pod_id: str, reason: str) -> None:
    """Preemption handler of pods (pods are never preemptible today; kept for operators
    who mark allocations so): the pod stops and is queued again."""
    pod = s.get(Pod, pod_id)
    if pod is None or pod.status not in (PodStatus.starting, PodStatus.running):
        return
    pod.reason = reason
    set_status(s, pod, PodStatus.stopping, reason="Preempted", warning=True, message=reason)


placement.PREEMPT_HANDLERS[ALLOC_KIND] = preempt_pod
