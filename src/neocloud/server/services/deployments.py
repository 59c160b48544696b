"""Deployments: validate, write the row with its first status, wake the reconciler.

The reconciler (``server.reconcilers.deployments``) does the rest: it creates replica
rows, places them, starts and probes them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, Conflict, InvalidRequest, NotFound
from neocloud.models import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentStatus,
    DeploymentUpdate,
    ReplicaOut,
    ReplicaStatus,
)
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.services import events
from neocloud.server.services import secrets as secret_svc
from neocloud.server.services.envvars import check_env
from neocloud.server.services.shapes import get_shape

_BUILTINS = ("embeddings", "chat")
_REF = re.compile(r"^([A-Za-z_][\w.]*|[\w./-]+\.py):[A-Za-z_]\w*$")


def check_service_ref(ref: str, *, param: str = "service") -> None:
    """Raise :class:`InvalidRequest` unless ``ref`` is a built-in or ``module:Class``."""
    if ref in _BUILTINS or _REF.match(ref):
        return
    raise InvalidRequest(
        f"service {ref!r} is neither a built-in ({', '.join(_BUILTINS)}) nor "
        "'package.module:Class' / 'file.py:Class'",
        param=param,
    )


def _find(s: Session, *, workspace_id: str, name: str) -> Deployment | None:
    return s.scalars(
        select(Deployment).where(Deployment.workspace_id == workspace_id, Deployment.name == name)
    ).first()


def get_deployment(s: Session, *, workspace_id: str, name: str) -> Deployment:
    """The deployment ``name`` of the workspace; :class:`NotFound` for any other workspace's."""
    dep = _find(s, workspace_id=workspace_id, name=name)
    if dep is None:
        raise NotFound(f"deployment {name!r} not found", param="name")
    return dep


def create_deployment(s: Session, *, workspace_id: str, spec: DeploymentCreate) -> Deployment:
    """Store a new deployment in status ``pending``.

    Raises:
        AlreadyExists: the workspace has a deployment of that name (409).
        NotFound: unknown shape (404, ``param="shape"``).
        InvalidRequest: bad service reference or env names (400).
    """
    check_service_ref(spec.service)
    check_env(spec.env)
    get_shape(s, name=spec.shape, param="shape")
    secret_svc.check_refs(s, workspace_id=workspace_id, refs=spec.secrets, env=spec.env)
    old = _find(s, workspace_id=workspace_id, name=spec.name)
    if old is not None:
        if old.status == DeploymentStatus.deleting.value:
            raise Conflict(f"deployment {spec.name!r} is being deleted; retry in a moment",
                           param="name")
        raise AlreadyExists(f"deployment {spec.name!r} already exists", param="name")
    dep = Deployment(
        workspace_id=workspace_id, name=spec.name, service=spec.service, model=spec.model,
        shape=spec.shape, replicas=spec.replicas, env=dict(spec.env),
        secrets=dict(spec.secrets),
        priority=spec.priority, preemptible=spec.preemptible,
        status=DeploymentStatus.pending.value if spec.replicas else
        DeploymentStatus.scaled_to_zero.value,
    )
    s.add(dep)
    s.flush()
    events.record(s, workspace_id=workspace_id, kind="deployment", name=dep.name,
                  object_id=dep.id, reason="Created",
                  message=f"deployment {dep.name} created: {spec.replicas} x {spec.shape}, "
                          f"service {spec.service}")
    return dep


def update_deployment(
    s: Session, *, workspace_id: str, name: str, spec: DeploymentUpdate
) -> Deployment:
    """Apply a change. A new service, model, shape or env starts a new generation, which the
    reconciler rolls out one replica at a time (a new replica is ready before an old one stops).
    """
    dep = get_deployment(s, workspace_id=workspace_id, name=name)
    if dep.status == DeploymentStatus.deleting.value:
        raise Conflict(f"deployment {name!r} is being deleted", param="name")
    changes: list[str] = []
    roll = False
    if spec.service is not None and spec.service != dep.service:
        check_service_ref(spec.service)
        dep.service, roll = spec.service, True
        changes.append(f"service={spec.service}")
    if "model" in spec.model_fields_set and spec.model != dep.model:
        dep.model, roll = spec.model, True
        changes.append(f"model={spec.model}")
    if spec.shape is not None and spec.shape != dep.shape:
        get_shape(s, name=spec.shape, param="shape")
        dep.shape, roll = spec.shape, True
        changes.append(f"shape={spec.shape}")
    if spec.env is not None and spec.env != dep.env:
        check_env(spec.env)
        dep.env, roll = dict(spec.env), True
        changes.append("env")
    if spec.secrets is not None and spec.secrets != dep.secrets:
        secret_svc.check_refs(s, workspace_id=workspace_id, refs=spec.secrets,
                              env=spec.env if spec.env is not None else dep.env)
        dep.secrets, roll = dict(spec.secrets), True
        changes.append("secrets")
    if spec.priority is not None and spec.priority != dep.priority:
        changes.append(f"priority {dep.priority}->{spec.priority}")
        dep.priority = spec.priority
    if spec.preemptible is not None and spec.preemptible != dep.preemptible:
        changes.append(f"preemptible={spec.preemptible}")
        dep.preemptible = spec.preemptible
    if spec.replicas is not None and spec.replicas != dep.replicas:
        changes.append(f"replicas {dep.replicas}->{spec.replicas}")
        dep.replicas = spec.replicas
    if not changes:
        return dep
    if roll:
        dep.generation += 1
    dep.updated_at = datetime.now(UTC)
    events.record(s, workspace_id=workspace_id, kind="deployment", name=name, object_id=dep.id,
                  reason="Updated", message=f"updated: {', '.join(changes)}"
                  + (f" (generation {dep.generation})" if roll else ""))
    return dep


def delete_deployment(s: Session, *, workspace_id: str, name: str) -> None:
    """Mark the deployment ``deleting``; the reconciler stops its replicas, then removes it."""
    dep = get_deployment(s, workspace_id=workspace_id, name=name)
    if dep.status != DeploymentStatus.deleting.value:
        dep.status = DeploymentStatus.deleting.value
        dep.updated_at = datetime.now(UTC)
        events.record(s, workspace_id=workspace_id, kind="deployment", name=name,
                      object_id=dep.id, reason="Deleting", message="deployment deletion requested")


def list_deployments(s: Session, *, workspace_id: str) -> list[Deployment]:
    return list(
        s.scalars(
            select(Deployment)
            .where(Deployment.workspace_id == workspace_id)
            .order_by(Deployment.created_at)
        )
    )


def replica_out(r: Replica, node_names: dict[str, str]) -> ReplicaOut:
    return ReplicaOut(
        id=r.id, status=ReplicaStatus(r.status), generation=r.generation,
        node=node_names.get(r.node_id) if r.node_id else None, gpu_indices=list(r.gpu_indices),
        port=r.port, pid=r.pid, restarts=r.restarts, message=r.message,
        created_at=r.created_at, ready_at=r.ready_at,
    )


def deployment_out(s: Session, dep: Deployment) -> DeploymentOut:
    reps = s.scalars(
        select(Replica).where(Replica.deployment_id == dep.id).order_by(Replica.created_at)
    ).all()
    node_names = {n.id: n.name for n in s.scalars(select(Node))}
    return DeploymentOut(
        id=dep.id, name=dep.name, service=dep.service, model=dep.model, shape=dep.shape,
        replicas=dep.replicas,
        ready_replicas=sum(1 for r in reps if r.status == ReplicaStatus.ready.value),
        status=DeploymentStatus(dep.status), pending_reason=dep.pending_reason,
        generation=dep.generation, env=dep.env, secrets=dict(dep.secrets or {}),
        priority=dep.priority,
        preemptible=dep.preemptible, endpoint=f"/endpoints/{dep.name}/",
        created_at=dep.created_at, updated_at=dep.updated_at,
        replica_list=[replica_out(r, node_names) for r in reps if r.status != "stopped"],
    )
