"""Dev pods: validate, write the row with its desired state, wake the reconciler.

The reconciler (``server.reconcilers.pods``) places, starts, watches, idles out and stops
them. A pod's working directory is a volume, so stop and start keep its files.
"""

from __future__ import annotations

import getpass
import importlib.util
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, Conflict, NotFound, Unsupported
from neocloud.models.pods import PodCreate, PodOut, PodSsh, PodStatus
from neocloud.models.volumes import VolumeMount
from neocloud.podrun import find_sshd
from neocloud.server.db.tables import Node, Pod
from neocloud.server.services import budgets as budget_svc
from neocloud.server.services import events
from neocloud.server.services import secrets as secret_svc
from neocloud.server.services import volumes as volume_svc
from neocloud.server.services.envvars import check_env
from neocloud.server.services.lifecycle import lock_row, set_status
from neocloud.server.services.shapes import get_shape
from neocloud.server.storage import VolumeStore

#: Pod states that hold (or are about to hold) a node.
ACTIVE = (PodStatus.starting, PodStatus.running, PodStatus.stopping)


def _find(s: Session, *, workspace_id: str, name: str) -> Pod | None:
    return s.scalars(select(Pod).where(Pod.workspace_id == workspace_id, Pod.name == name)).first()


def get_pod(s: Session, *, workspace_id: str, name: str, lock: bool = False) -> Pod:
    """The pod ``name`` of the workspace; :class:`NotFound` for any other workspace's.

    With ``lock`` the newest row, locked until the transaction ends (``lifecycle.lock_row``),
    so that a change decided on it cannot race the pod reconciler.
    """
    pod = _find(s, workspace_id=workspace_id, name=name)
    if pod is not None and lock:
        pod = lock_row(s, Pod, pod.id)
    if pod is None or pod.desired == "deleted":
        raise NotFound(f"pod {name!r} not found", param="name")
    return pod


def home_volume(name: str) -> str:
    """Default working-directory volume of pod ``name``: ``<name>-home``."""
    return f"{name[:58].rstrip('-')}-home"


def create_pod(s: Session, *, workspace_id: str, spec: PodCreate, store: VolumeStore) -> Pod:
    """Store a new pod (desired ``running``, status ``queued``) and its volume if missing.

    Raises:
        AlreadyExists: a pod of that name exists (409).
        NotFound: unknown shape, secret or mounted volume (404, naming the field).
        InvalidRequest: bad env names (400).
        Unsupported: ``sshd`` is not installed on this machine, or ``jupyter`` was asked
            for without JupyterLab installed (400).
    """
    check_env(spec.env)
    get_shape(s, name=spec.shape, param="shape")
    # Budget hard stop: new work of a workspace over its budget is refused (402).
    budget_svc.require_within_budget(s, workspace_id=workspace_id)
    secret_svc.check_refs(s, workspace_id=workspace_id, refs=spec.secrets, env=spec.env)
    volume_svc.check_mounts(s, workspace_id=workspace_id, mounts=spec.volumes)
    if find_sshd() is None:
        raise Unsupported("pods need the OpenSSH server (sshd) on the node; install it "
                          "(Debian/Ubuntu: apt-get install openssh-server)")
    if spec.jupyter and importlib.util.find_spec("jupyterlab") is None:
        raise Unsupported("JupyterLab is not installed on the node (pip install jupyterlab)",
                          param="jupyter")
    old = _find(s, workspace_id=workspace_id, name=spec.name)
    if old is not None:
        if old.desired == "deleted":
            raise Conflict(f"pod {spec.name!r} is being deleted; retry in a moment",
                           param="name")
        raise AlreadyExists(f"pod {spec.name!r} already exists", param="name")
    volume = spec.volume or home_volume(spec.name)
    volume_svc.ensure_volume(s, workspace_id=workspace_id, name=volume, store=store)
    pod = Pod(
        workspace_id=workspace_id, name=spec.name, shape=spec.shape, volume=volume,
        ssh_public_key=spec.ssh_public_key, jupyter=spec.jupyter, env=dict(spec.env),
        secrets=dict(spec.secrets), volumes=[m.model_dump() for m in spec.volumes],
        idle_timeout_s=spec.idle_timeout_s, desired="running",
        status=PodStatus.queued.value, reason="waiting to be scheduled",
    )
    s.add(pod)
    s.flush()
    events.record(s, workspace_id=workspace_id, kind="pod", name=pod.name, object_id=pod.id,
                  reason="Created", message=f"pod {pod.name} created: {spec.shape}, "
                                            f"working directory on volume {volume}")
    return pod


def can_start(pod: Pod) -> bool:
    """Whether ``start`` applies: the pod is stopped or failed, or stopped while it still
    waited for room (``queued``, stop asked)."""
    return pod.status in (PodStatus.stopped, PodStatus.failed) or (
        pod.status == PodStatus.queued and pod.desired != "running")


def can_stop(pod: Pod) -> bool:
    """Whether ``stop`` applies: the pod is meant to run and is waiting, starting or
    running (or stopping only to be placed again, after a preemption)."""
    return pod.desired == "running" and pod.status in (
        PodStatus.queued, PodStatus.starting, PodStatus.running, PodStatus.stopping)


def _state(pod: Pod) -> str:
    if pod.desired == "stopped" and pod.status == PodStatus.queued:
        return "queued and being stopped"
    return str(pod.status)


def start_pod(s: Session, *, workspace_id: str, name: str) -> Pod:
    """Start a stopped or failed pod again (its files are where it left them).

    Raises:
        Conflict: the pod is running, on its way to run, or still stopping (409, naming
            its state).
        BudgetExceeded: the workspace's hard-stopped budget is spent (402).
    """
    pod = get_pod(s, workspace_id=workspace_id, name=name, lock=True)
    if not can_start(pod):
        hint = ("; start it again once it has stopped" if pod.status == PodStatus.stopping
                else "")
        raise Conflict(f"pod {name!r} is {_state(pod)}: nothing to start{hint}",
                       param="name")
    # Budget hard stop: new work of a workspace over its budget is refused (402).
    budget_svc.require_within_budget(s, workspace_id=workspace_id)
    pod.desired = "running"
    if pod.status in (PodStatus.stopped, PodStatus.failed):
        pod.reason = "waiting to be scheduled"
        set_status(s, pod, PodStatus.queued, reason="Starting", message="start requested")
    pod.updated_at = datetime.now(UTC)
    return pod


def stop_pod(s: Session, *, workspace_id: str, name: str, reason: str = "stopped by the user",
             strict: bool = False) -> Pod:
    """Stop a pod; billing stops once its process has ended. Files stay on its volume.

    A starting or running pod moves to ``stopping`` here, through ``set_status``, which
    records the one ``Stopping`` event of the transition (the reconciler's own move to
    ``stopping`` is then a no-op); a queued one is taken off the queue by the reconciler
    (its ``Stopped`` event).

    Args:
        strict: refuse a pod with nothing to stop (what the API does); without it (the
            budget's stop of all running work) such a pod only gets ``desired`` stopped.

    Raises:
        Conflict: ``strict`` and the pod is already stopping, stopped or failed (409,
            naming its state).
    """
    pod = get_pod(s, workspace_id=workspace_id, name=name, lock=True)
    if not can_stop(pod):
        if strict:
            raise Conflict(f"pod {name!r} is {_state(pod)}: nothing to stop", param="name")
        if pod.desired == "stopped":
            return pod
    pod.desired, pod.reason = "stopped", reason
    pod.updated_at = datetime.now(UTC)
    if pod.status in (PodStatus.starting, PodStatus.running):
        set_status(s, pod, PodStatus.stopping, reason="Stopping",
                   message=f"stopping: {reason}")
    return pod


def delete_pod(s: Session, *, workspace_id: str, name: str) -> None:
    """Stop and delete a pod; its working-directory volume is kept (delete it with
    ``neocloud volume rm``)."""
    pod = get_pod(s, workspace_id=workspace_id, name=name, lock=True)
    pod.desired = "deleted"
    pod.updated_at = datetime.now(UTC)
    events.record(s, workspace_id=workspace_id, kind="pod", name=name, object_id=pod.id,
                  reason="Deleting", message=f"deletion requested; volume {pod.volume} is kept")


def list_pods(s: Session, *, workspace_id: str) -> list[Pod]:
    return list(s.scalars(
        select(Pod).where(Pod.workspace_id == workspace_id, Pod.desired != "deleted")
        .order_by(Pod.created_at)
    ))


def ssh_user() -> str:
    """The account pods run as on the local backend (the control plane's user)."""
    return getpass.getuser()


def pod_out(s: Session, pod: Pod) -> PodOut:
    node = s.get(Node, pod.node_id) if pod.node_id else None
    up = pod.status == PodStatus.running and node is not None and pod.ssh_port
    ssh = None
    if up and node is not None and pod.ssh_port:
        user = ssh_user()
        ssh = PodSsh(host=node.address, port=pod.ssh_port, user=user,
                     command=f"ssh -p {pod.ssh_port} {user}@{node.address}")
    jupyter_url = None
    if up and node is not None and pod.jupyter and pod.jupyter_port:
        jupyter_url = f"http://{node.address}:{pod.jupyter_port}/lab?token={pod.jupyter_token}"
    return PodOut(
        id=pod.id, name=pod.name, shape=pod.shape, status=PodStatus(pod.status),
        reason=pod.reason, volume=pod.volume, jupyter=pod.jupyter, env=dict(pod.env),
        secrets=dict(pod.secrets), volumes=[VolumeMount.model_validate(m) for m in pod.volumes],
        idle_timeout_s=pod.idle_timeout_s, has_ssh_key=bool(pod.ssh_public_key),
        node=node.name if node else None, gpu_indices=list(pod.gpu_indices), ssh=ssh,
        jupyter_url=jupyter_url, created_at=pod.created_at, started_at=pod.started_at,
        stopped_at=pod.stopped_at, last_activity_at=pod.last_activity_at,
    )
